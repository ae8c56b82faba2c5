"""The files a pairs run leaves for training and audit: ``pairs.json``, ``dataset_info.json``, ``candidates.jsonl``.

``pairs.json`` is the host's sharegpt ranking format: ``conversations`` (the prompt's turns), ``chosen`` and
``rejected`` as single message dicts, plus ``system``/``tools`` columns when the prompts have them; the
``dataset_info.json`` entry maps exactly those columns, so ``dataset_dir: <output_dir>`` and
``dataset: <dataset_name>`` train with ``stage: simpo`` at once.
"""

import json
import math
from pathlib import Path
from typing import Any

from ..sampling import Prompt, write_atomic
from .selection import Selection


SHAREGPT_TAGS = {"user": "human", "assistant": "gpt", "observation": "observation", "function": "function_call"}


def pair_row(prompt: Prompt, chosen: str, rejected: str, scores: tuple[float, float]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "conversations": [{"from": SHAREGPT_TAGS[m["role"]], "value": m["content"]} for m in prompt.messages],
        "chosen": {"from": "gpt", "value": chosen},
        "rejected": {"from": "gpt", "value": rejected},
        "system": prompt.system,
        "tools": prompt.tools,
        "chosen_score": scores[0],
        "rejected_score": scores[1],
    }
    return row


def dataset_entry(rows: list[dict[str, Any]]) -> dict[str, Any]:
    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    for column in ("system", "tools"):
        if any(row[column] for row in rows):
            columns[column] = column
    return {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True, "columns": columns}


def write_dataset(output_dir: Path, name: str, rows: list[dict[str, Any]]) -> None:
    """Write ``pairs.json`` and register it under ``name`` in the output dir's ``dataset_info.json``."""
    write_atomic(output_dir / "pairs.json", json.dumps(rows, ensure_ascii=False, indent=1))
    info_path = output_dir / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = dataset_entry(rows)
    write_atomic(info_path, json.dumps(info, ensure_ascii=False, indent=2))


def candidate_lines(index: int, prompt: Prompt, record: dict, scores: list[float], selection: Selection) -> list[str]:
    """One JSON line per sample: text, score, flags, and its role in the pair (or the prompt's drop reason).

    The rejected sample of a kept pair that hit ``max_new_tokens`` is flagged ``rejected_truncated`` as well as
    ``truncated`` (kept under ``drop_truncated: chosen`` or ``none``), and a kept chosen one ``chosen_truncated``
    (kept under ``none`` only).
    """
    lines = []
    for j, sample in enumerate(record["samples"]):
        score = scores[j]
        role = "chosen" if selection.kept and j == selection.chosen else None
        role = "rejected" if selection.kept and j == selection.rejected else role
        flags = ["truncated"] if sample["truncated"] else []
        flags += ["rejected_truncated"] if role == "rejected" and selection.rejected_truncated else []
        flags += ["chosen_truncated"] if role == "chosen" and selection.chosen_truncated else []
        flags += [] if sample["text"].strip() else ["empty"]
        if not math.isfinite(score):
            flags.append(f"non_finite:{score}")
        entry = {
            "prompt_index": index,
            "sample_index": j,
            "source": prompt.source,
            "prompt": prompt.messages[-1]["content"],
            "response": sample["text"],
            "tokens": sample["tokens"],
            "score": score if math.isfinite(score) else None,
            "flags": flags,
            "role": role,
            "drop_reason": selection.drop_reason,
        }
        lines.append(json.dumps(entry, ensure_ascii=False))
    return lines
