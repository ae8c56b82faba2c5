"""The models of ``simpo-plugin eval``: paths whose answers are generated, or precomputed answers read from files.

An entry of ``models:`` is a path (a full checkpoint or a LoRA adapter, named by its path) or a mapping
``{name: NAME, outputs: FILE}`` where FILE is in AlpacaEval's ``model_outputs`` format: a JSON list of
``{"instruction": ..., "output": ..., "generator": ...}`` (``generator`` optional). ``{name: NAME, path: PATH}``
names a path model. Every model must answer the same instructions; answers are matched by instruction text.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PairsConfigError


@dataclass(frozen=True)
class ModelEntry:
    """One model to compare: ``path`` (answers generated) or ``outputs`` (answers read), and its display name."""

    name: str
    path: str | None = None
    outputs: str | None = None
    adapter_name_or_path: str | None = None  # LoRA adapters on ``path`` (the host's comma list, merged in order)


def parse_models(models: list[Any]) -> list[ModelEntry]:
    """``models:`` entries as :class:`ModelEntry`; a bad entry or a repeated name raises one line naming it."""
    entries = []
    for index, item in enumerate(models):
        if isinstance(item, str):
            entries.append(ModelEntry(item, path=item))
            continue
        if isinstance(item, dict) and item.get("outputs") and item.get("path"):
            raise PairsConfigError(f"`models` entry {index} ({item!r}) gives both `outputs` and `path`; keep one.")
        strings = isinstance(item, dict) and all(isinstance(v, str) for v in item.values())
        if not strings or not item.get("name") or bool(item.get("outputs")) == bool(item.get("path")):
            raise PairsConfigError(
                f"`models` entry {index} ({item!r}): give a model path, `{{name: NAME, outputs: FILE}}` (answers in "
                "AlpacaEval's model_outputs format) or `{name: NAME, path: PATH}`, with text values."
            )
        unknown = set(item) - {"name", "outputs", "path", "adapter_name_or_path"}
        if unknown:
            raise PairsConfigError(f"`models` entry {index}: unknown key(s) {', '.join(sorted(unknown))}.")
        if item.get("adapter_name_or_path") and not item.get("path"):
            raise PairsConfigError(f"`models` entry {index}: `adapter_name_or_path` needs the base model as `path`.")
        entries.append(ModelEntry(str(item["name"]), path=item.get("path"), outputs=item.get("outputs"),
                                  adapter_name_or_path=item.get("adapter_name_or_path")))  # fmt: skip
    names = [entry.name for entry in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PairsConfigError(f"`models`: the name `{repeated[0]}` is given twice; names must be unique.")
    return entries


def read_outputs(entry: ModelEntry) -> list[dict[str, str]]:
    """The rows of an AlpacaEval ``model_outputs`` file, checked: each has a string ``instruction`` and ``output``."""
    path = Path(entry.outputs or "")
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise PairsConfigError(f"`models`: `{entry.name}`'s outputs file {path} {what}.")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PairsConfigError(f"`models`: `{entry.name}`'s outputs file {path} is not JSON: {exc}") from exc
    if not isinstance(rows, list) or not rows:
        raise PairsConfigError(f"`models`: {path} must hold a non-empty JSON list of {{instruction, output}} rows.")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise PairsConfigError(f"`models`: {path} row {index} has no string `instruction`.")
        if not isinstance(row.get("output"), str):
            raise PairsConfigError(f"`models`: {path} row {index} has no string `output`.")
    check_repeats(entry.name, path, rows)
    return rows


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_repeats(name: str, path: Path, rows: list[dict[str, str]]) -> None:
    """Answers are matched by instruction text, so each instruction appears once in a file (alpaca_eval#453: a
    repeated instruction otherwise looks like an answer the other models lack, or silently takes one answer)."""
    seen: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        seen.setdefault(row["instruction"], []).append(index)
    repeated = [(text, at) for text, at in seen.items() if len(at) > 1]
    if repeated:
        text, at = repeated[0]
        more = f" ({len(repeated) - 1} more instruction(s) repeated too)" if len(repeated) > 1 else ""
        raise PairsConfigError(
            f"`models`: `{name}`'s outputs file {path} repeats the instruction {shorten(text)!r} at rows "
            f"{', '.join(map(str, at))}{more}; answers are matched by instruction, so keep one row per instruction "
            "(delete or merge the repeated rows)."
        )


def align(instructions: list[str], rows: list[dict[str, str]], name: str) -> list[str]:
    """``rows``' outputs in the order of ``instructions`` (matched by text; :func:`read_outputs` refused repeats).

    Raises:
        PairsConfigError: the two sets differ; the message names the first instruction that is missing.
    """
    by_text: dict[str, list[str]] = {}
    for row in rows:
        by_text.setdefault(row["instruction"], []).append(row["output"])
    outputs = []
    for index, instruction in enumerate(instructions):
        queue = by_text.get(instruction)
        if not queue:
            raise PairsConfigError(
                f"`models`: `{name}` has no answer to instruction {index} ({shorten(instruction)!r}); every model "
                "must answer the same instructions."
            )
        outputs.append(queue.pop(0))
    extra = [text for text, queue in by_text.items() for _ in queue]
    if extra:
        raise PairsConfigError(
            f"`models`: `{name}` answers {len(extra)} instruction(s) the others do not, the first "
            f"{shorten(extra[0])!r}; every model must answer the same instructions."
        )
    return outputs


def read_difficulty(path: str, instructions: list[str]) -> list[float]:
    """AlpacaEval's per-instruction difficulty for ``instructions``, from a JSON ``{instruction: difficulty}`` or a
    CSV whose first column is the instruction text or its position (AlpacaEval's ``instruction_difficulty.csv``)."""
    file = Path(path)
    if not file.is_file():
        raise PairsConfigError(f"`instruction_difficulty`: {file} does not exist.")
    if file.suffix == ".json":
        table = {str(k): float(v) for k, v in json.loads(file.read_text(encoding="utf-8")).items()}
    else:
        import pandas as pd

        series = pd.read_csv(file, index_col=0).squeeze("columns")
        table = {str(k): float(v) for k, v in series.items()}
    if all(text in table for text in instructions):
        return [table[text] for text in instructions]
    if all(str(i) in table for i in range(len(instructions))):
        return [table[str(i)] for i in range(len(instructions))]
    missing = next(text for text in instructions if text not in table)
    raise PairsConfigError(
        f"`instruction_difficulty`: {file} has no difficulty for {missing[:80]!r} (keys must be the instructions or "
        "their positions 0..n-1)."
    )
