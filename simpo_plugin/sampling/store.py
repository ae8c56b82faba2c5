"""Resumable storage of a pairs run: append-only JSONL parts, one line per finished prompt.

Layout of ``output_dir/parts/``: ``settings.json`` (what the saved results depend on), ``samples.<tag>.jsonl``
and ``scores.<tag>.jsonl``, where ``<tag>`` is ``all`` or ``shard-<i>-of-<n>``. Every run reads the records of
all tags, so a run without shards merges the shards' parts and computes only what is still missing. A kill can
leave half a line at the end of a part; it is cut off before the next append and the prompt is redone.
"""

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import PairsConfigError


PARTS_DIR = "parts"
SETTINGS_FILE = "settings.json"


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def shard_tag(num_shards: int, shard_index: int) -> str:
    return "all" if num_shards == 1 else f"shard-{shard_index}-of-{num_shards}"


class PartStore:
    """The ``parts/`` folder of one output dir."""

    def __init__(self, output_dir: str | Path, tag: str) -> None:
        self.root = Path(output_dir) / PARTS_DIR
        self.tag = tag

    def prepare(self, settings: dict[str, dict], overwrite: bool) -> None:
        """Create the folder, or check that its saved results were made with the same settings."""
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / SETTINGS_FILE
        if not path.exists():
            write_atomic(path, json.dumps(settings, indent=2, ensure_ascii=False))
            return
        saved = json.loads(path.read_text(encoding="utf-8"))
        for phase, hint in (
            ("sampling", "use a new `output_dir`, or `overwrite_output_dir: true` to start over"),
            ("scoring", f"to rescore the saved samples, delete {self.root}/scores.*.jsonl"),
        ):
            for key, value in settings[phase].items():
                if saved.get(phase, {}).get(key) != value:
                    raise PairsConfigError(
                        f"`{self.root.parent}` holds results made with {key}={saved.get(phase, {}).get(key)!r}, "
                        f"this run has {key}={value!r}; {hint}."
                    )

    def read(self, kind: str) -> dict[int, dict[str, Any]]:
        """Every complete record of ``kind`` (``samples`` or ``scores``) in any shard's part, by prompt index."""
        records: dict[int, dict[str, Any]] = {}
        for path in sorted(self.root.glob(f"{kind}.*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # half a line from a killed run
                records.setdefault(record["index"], record)
        return records

    def append(self, kind: str, records: Iterable[dict[str, Any]]) -> None:
        """Append records as JSON lines and flush them to disk before returning."""
        path = self.root / f"{kind}.{self.tag}.jsonl"
        self._cut_partial_line(path)
        with path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _cut_partial_line(path: Path) -> None:
        if not path.exists() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
