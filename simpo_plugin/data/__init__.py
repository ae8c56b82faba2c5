"""Reading datasets the host's way: names, the bundled datasets, and rows with the host's reasons.

Used by the stage (data checks before the model loads) and by sampling (prompts for ``simpo-plugin pairs|eval``
and the training probes), so both name the same file, the same rows and the same causes:

- :mod:`.names`: which ``dataset_info.json`` is read, the datasets bundled with the plugin (``simpo_demo``,
  reachable by name), and the one-line error for a name that is not registered, with the closest ones;
- :mod:`.rows`: rows through the host's loader and converter, each rejected row with the reason the host logged
  (and its per-row warnings kept off the console).

This package imports nothing from the stage, the host glue, sampling, pairs, evaluation or the math
(tests/test_layers.py); the host loads with :func:`converted_rows`.
"""

from .names import BUNDLED_DIR, bundled_info, bundled_names, check_registered, resolve_dataset_dir
from .rows import converted_rows, converter_warnings


__all__ = [
    "BUNDLED_DIR",
    "bundled_info",
    "bundled_names",
    "check_registered",
    "converted_rows",
    "converter_warnings",
    "resolve_dataset_dir",
]
