"""Dataset names: which ``dataset_info.json`` registers them, the datasets bundled with the plugin, and a message
that names the file read and the closest registered names when one is not there.

The bundled datasets (``bundled/dataset_info.json``; ``simpo_demo``: 32 short English preference pairs written for
the plugin) are reachable by name from any config: when every requested name is bundled and the configured
``dataset_dir`` does not register it, the bundled folder is used (docs/getting-started.md).
"""

import difflib
import json
from pathlib import Path

from ..errors import SimPOArgumentError


BUNDLED_DIR = Path(__file__).resolve().with_name("bundled")
INFO = "dataset_info.json"


def registered(dataset_dir: str | Path) -> dict | None:
    """The entries of ``dataset_dir/dataset_info.json``, or None when there is no such local file."""
    path = Path(dataset_dir) / INFO
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SimPOArgumentError(f"{path.resolve()} is not valid JSON: {exc}.") from exc


def bundled_info() -> dict[str, dict]:
    """The bundled datasets' ``dataset_info.json`` entries (LLaMA Board offers them beside ``dataset_dir``'s)."""
    return registered(BUNDLED_DIR) or {}


def bundled_names() -> list[str]:
    return sorted(bundled_info())


def resolve_dataset_dir(names: list[str], dataset_dir: str) -> str:
    """``dataset_dir``, or the bundled folder when every one of ``names`` is bundled and not registered there."""
    if not names or dataset_dir == "ONLINE":
        return dataset_dir
    own = registered(dataset_dir) or {}
    if all(name in bundled_names() and name not in own for name in names):
        return str(BUNDLED_DIR)
    return dataset_dir


def check_registered(names: list[str], dataset_dir: str, key: str = "dataset") -> None:
    """Raise a one-line error naming the file read and the closest names when one of ``names`` is not registered.

    Does nothing for ``dataset_dir: ONLINE`` (hub datasets) and leaves a missing remote folder to the host.
    """
    if not names or dataset_dir == "ONLINE":
        return
    entries = registered(dataset_dir)
    where = Path(dataset_dir, INFO).resolve()
    bundled = f" The plugin bundles {', '.join(f'`{n}`' for n in bundled_names())}, reachable by name."
    if entries is None:
        raise SimPOArgumentError(
            f"`{key}: {', '.join(names)}`: there is no {where} (`dataset_dir: {dataset_dir}`). Point `dataset_dir` "
            f"at the folder that holds your dataset_info.json (LLaMA-Factory's `data/` is not in its wheel).{bundled}"
        )
    for name in names:
        if name not in entries:
            close = difflib.get_close_matches(name, sorted(entries), n=3)
            hint = f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
            shown = ", ".join(sorted(entries)[:12]) + (", ..." if len(entries) > 12 else "")
            raise SimPOArgumentError(
                f"Dataset `{name}` (`{key}`) is not registered in {where} (it registers: {shown or 'nothing'})"
                f"{hint}.{bundled}"
            )
