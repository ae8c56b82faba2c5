"""How a training worker tells the launcher the exit code to end with (after a preemption stop).

The plugin's launcher (:mod:`simpo_plugin.host.launcher`) names a file in :data:`EXIT_FILE_ENV` for the torchrun it
starts; a worker that ends the run itself (:mod:`simpo_plugin.train.workflow`) writes its code there, from local
rank 0, and the launcher exits with it instead of torchrun's generic 1. Neutral, so neither side imports the other.
"""

import os
from pathlib import Path


EXIT_FILE_ENV = "SIMPO_PLUGIN_EXIT_FILE"


def record_exit_code(code: int) -> None:
    """Called by a worker that ends the run itself; only local rank 0 writes, and a failure is silent (the
    launcher then reports torchrun's own code)."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(path).write_text(str(code), encoding="ascii")
        except OSError:
            pass


def recorded_exit_code(path: Path) -> int | None:
    """The code a worker recorded in ``path``, or None."""
    text = path.read_text(encoding="ascii").strip() if path.is_file() else ""
    return int(text) if text.isdigit() else None
