"""Generation side of the recipe: on-policy pairs (sample, score, select) with the host's loaders and templates.

The rest of the plugin calls :func:`build_pairs` (the ``simpo-plugin pairs`` command); the modules below it each
hold one piece: ``args`` (keys), ``prompts`` (reading and rendering), ``sampling`` (backends), ``scorers``
(reward model, host reward model, function), ``selection`` (the pair rules), ``store`` (resumable parts),
``outputs`` (the dataset files) and ``report`` (counts and the length check). Importing this package is cheap;
torch and the host load with the submodules.
"""

from typing import Any


def build_pairs(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.generation.pairs.build_pairs`."""
    from .pairs import build_pairs as run

    return run(raw)


__all__ = ["build_pairs"]
