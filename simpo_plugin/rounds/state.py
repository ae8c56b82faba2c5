"""Where a rounds run keeps its work, and what a rerun finds done.

``output_dir/rounds_config.json`` holds what finished rounds depend on (:meth:`RoundsConfig.saved`); a rerun whose
config differs there is refused with the keys that changed (``rounds`` and ``stop_when`` may change: they decide
only whether more rounds run). ``output_dir/round_<r>/phases.json`` records each finished phase of round r with
what the loop needs of it later, written atomically after the phase's own outputs, so a phase that is not in it
is run again and resumes from its own saved work (pairs from their parts, training from its last checkpoint).
"""

import json
from pathlib import Path
from typing import Any

from ..errors import SimPOArgumentError
from ..sampling import write_atomic


PHASES = ("pairs", "train", "eval")
CONFIG_FILE = "rounds_config.json"


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON, atomically (:func:`simpo_plugin.sampling.write_atomic`), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False))


def changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two saved configs, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"`{prefix.rstrip('.')}` ({old!r} -> {new!r})"]


class RoundsState:
    """The run's folder: the saved config, and per round its finished phases."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)

    def round_dir(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def claim(self, saved: dict[str, Any]) -> bool:
        """Save the config on a first run; on a rerun refuse one that would change finished rounds.

        Returns:
            True when earlier work was found (a resumed run).

        Raises:
            SimPOArgumentError: naming each changed key, old and new value.
        """
        path = self.root / CONFIG_FILE
        normal = json.loads(json.dumps(saved))  # as it reads back (tuples are lists)
        if path.exists():
            before = json.loads(path.read_text(encoding="utf-8"))
            changed = changes(before, normal)
            if changed:
                raise SimPOArgumentError(
                    f"`{self.root}` holds rounds made with another config: {', '.join(changed)} changed, which "
                    "would change finished rounds. Restore the old values, or give a new `output_dir`."
                )
            return True
        write_json(path, normal)
        return False

    def phases(self, r: int) -> dict[str, Any]:
        path = self.round_dir(r) / "phases.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def finish(self, r: int, phase: str, record: dict[str, Any]) -> dict[str, Any]:
        """Record ``phase`` of round ``r`` as done, with what later phases and the report read of it; returns the
        round's finished phases."""
        done = self.phases(r)
        done[phase] = record
        write_json(self.round_dir(r) / "phases.json", done)
        return done
