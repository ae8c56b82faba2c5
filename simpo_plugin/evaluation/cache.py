"""Answers kept between evaluations: a model's generated answers (and check replies) are saved once and read back
by any later evaluation that would generate exactly the same ones.

An entry's name is a fingerprint of everything the answers depend on: the model (its path, adapters, and the size
and modification time of each file in those folders, so a model retrained in place is generated again), the
rendered prompts (their content hash and token ids: template and system prompt included), the generation keys and
the check sets. Judge, bootstrap and report keys are not part of it: changing the judge re-judges the same answers.
Entries are written atomically after each model's generation, so a killed evaluation resumes with the models it
finished (docs/evaluation.md, "Resuming").
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from ..sampling import Prompt, ids_digest, write_atomic
from .metrics import Generated


# Keys that change how answers are judged or reported, never the answers themselves.
NOT_GENERATION = {"models", "baseline", "pairwise", "judge_model", "judge_template", "judge_function",
                  "judge_batch_size", "reward_model", "reward_function", "reward_batch_size", "reward_template",
                  "bootstrap_samples",
                  "instruction_difficulty", "show", "output_dir", "answers_cache", "overwrite_output_dir"}  # fmt: skip


def files_stamp(path: str) -> list[Any]:
    """``(name, bytes, mtime_ns)`` of each file directly in ``path`` (a folder), or ``path`` itself otherwise."""
    folder = Path(path)
    if not folder.is_dir():
        return [path]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir()) if f.is_file()]


def fingerprint(
    model: dict[str, str], raw: dict[str, Any], prompts: list[Prompt], check_sets: list[tuple[str, list[dict]]]
) -> str:
    """The hex digest naming one model's answers (module docstring)."""
    adapters = [a.strip() for a in str(model.get("adapter_name_or_path") or "").split(",") if a.strip()]
    identity = {
        "model": model,
        "files": [files_stamp(p) for p in [model["model_name_or_path"], *adapters]],
        "prompts": [[p.key, ids_digest(p.ids)] for p in prompts],
        "keys": {k: v for k, v in sorted(raw.items()) if k not in NOT_GENERATION},
        "checks": check_sets,
    }
    text = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class AnswerCache:
    """A folder of answer entries (``<fingerprint>.json``); ``None`` folder: nothing kept."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder else None

    def load(self, key: str) -> tuple[list[list[Generated]], dict[str, list[str]]] | None:
        """The answers per prompt and the check replies per set saved under ``key``, or None."""
        if self.folder is None or not (self.folder / f"{key}.json").is_file():
            return None
        saved = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        answers = [[Generated(a["text"], a["tokens"], a["ended"]) for a in row] for row in saved["answers"]]
        return answers, saved["replies"]

    def save(self, key: str, path: str, answers: list[list[Generated]], replies: dict[str, list[str]]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = [[{"text": a.text, "tokens": a.tokens, "ended": a.ended} for a in row] for row in answers]
        text = json.dumps({"model": path, "answers": rows, "replies": replies}, ensure_ascii=False)
        write_atomic(self.folder / f"{key}.json", text)
