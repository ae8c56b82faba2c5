"""Capability checks: verifiable tasks beside chat quality, since SimPO can cost some (the paper: GSM8K and JSON).

A check set is a JSON list of tasks, each ``{"instruction": ..., "kind": ...}`` plus what decides it:

- ``exact``: ``answer`` (a number or a string); the last number in the reply must equal a numeric answer, or the
  reply must contain a string answer (case-insensitive).
- ``json``: the reply must hold one JSON object (a ```` ```json ```` fence is allowed); with ``schema``
  (``{key: "string" | "integer" | "number" | "boolean" | "array" | "object"}``) every key must be there with
  that type.
- ``constraint``: ``max_words`` / ``min_words``, ``format`` (``bullets`` with ``min_items``, ``lowercase``),
  ``ends_with`` (the last word, ignoring punctuation), ``contains`` (words that must all appear).

The plugin bundles ``arithmetic`` (16 word problems), ``json_format`` (8) and ``constraints`` (8)
(``simpo_plugin/data/bundled/checks``); a user's own set is a path to such a file. A model's score on a set is
the share of tasks passed, with a bootstrap interval; a drop from the baseline is flagged when the paired
bootstrap interval of the difference lies below 0.
"""

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import BUNDLED_DIR
from ..errors import PairsConfigError
from .winrate import bootstrap_interval


if TYPE_CHECKING:
    from ..sampling import Prompt


CHECKS_DIR = BUNDLED_DIR / "checks"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def bundled_checks() -> list[str]:
    return sorted(path.stem for path in CHECKS_DIR.glob("*.json"))


def load_check_set(spec: str) -> tuple[str, list[dict[str, Any]]]:
    """``(name, tasks)`` of a bundled set by name, or of a JSON file by path."""
    path = CHECKS_DIR / f"{spec}.json" if spec in bundled_checks() else Path(spec)
    if not path.is_file():
        bundled = ", ".join(bundled_checks())
        raise PairsConfigError(f"`checks: {spec}` is neither a bundled set ({bundled}) nor a file.")
    tasks = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "instruction" in t for t in tasks):
        raise PairsConfigError(f"`checks: {spec}`: the file must hold a list of tasks with an `instruction` each.")
    for index, task in enumerate(tasks):
        if task.get("kind") not in ("exact", "json", "constraint"):
            raise PairsConfigError(f"`checks: {spec}` task {index}: `kind` must be exact, json or constraint.")
    return path.stem, tasks


def check_prompts(tasks: list[dict[str, Any]], template: Any, tokenizer: Any, name: str) -> list["Prompt"]:
    """The tasks as single-turn prompts rendered with the model's template (sources ``check:<set>#<i>``)."""
    from ..sampling import instruction_prompts

    return instruction_prompts([task["instruction"] for task in tasks], f"check:{name}", template, tokenizer)


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _json_object(text: str) -> Any:
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(body[start : end + 1])
    except ValueError:
        return None


def passes(task: dict[str, Any], reply: str) -> bool:
    """Whether ``reply`` passes ``task`` (module docstring)."""
    kind = task["kind"]
    if kind == "exact":
        answer = task["answer"]
        if isinstance(answer, (int, float)):
            number = _number(reply)
            return number is not None and abs(number - float(answer)) < 1e-6
        return str(answer).lower() in reply.lower()
    if kind == "json":
        value = _json_object(reply)
        if not isinstance(value, dict):
            return False
        schema = task.get("schema") or {}
        return all(key in value and isinstance(value[key], TYPES[kind_]) for key, kind_ in schema.items()) and not (
            any(isinstance(value.get(key), bool) for key, kind_ in schema.items() if kind_ in ("integer", "number"))
        )
    words = _WORD.findall(reply)
    if "max_words" in task and len(words) > task["max_words"]:
        return False
    if "min_words" in task and len(words) < task["min_words"]:
        return False
    if task.get("format") == "bullets":
        items = [line for line in reply.splitlines() if line.strip().startswith(("- ", "* ", "• "))]
        if len(items) < task.get("min_items", 1):
            return False
    if task.get("format") == "lowercase" and (reply != reply.lower() or not words):
        return False
    if "ends_with" in task and (not words or words[-1].lower() != task["ends_with"].lower()):
        return False
    lowered = {word.lower() for word in words}
    return all(word.lower() in lowered for word in task.get("contains", []))


def score(tasks: list[dict[str, Any]], replies: list[str], seed: int = 0) -> dict[str, Any]:
    """Share of tasks passed (0-100) with its bootstrap interval, and the per-task outcomes."""
    outcomes = [passes(task, reply) for task, reply in zip(tasks, replies, strict=True)]
    low, high = bootstrap_interval([float(o) for o in outcomes], seed=seed)
    return {"score": 100 * float(np.mean(outcomes)), "low": 100 * low, "high": 100 * high, "passed": outcomes}


def dropped(baseline: list[bool], model: list[bool], seed: int = 0) -> tuple[float, tuple[float, float], bool]:
    """Difference model - baseline (0-100), its paired bootstrap interval, and whether the drop is significant."""
    diff = np.asarray(model, dtype=float) - np.asarray(baseline, dtype=float)
    low, high = bootstrap_interval(diff, seed=seed)
    return 100 * float(diff.mean()), (100 * low, 100 * high), high < 0
