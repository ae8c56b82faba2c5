"""Generation side of the recipe: on-policy pairs (sample, score, select) with the host's loaders and templates.

The path of one prompt in ``simpo-plugin pairs`` (:func:`build_pairs`): ``args`` (keys, checked against the
host's) -> ``prompts`` (read through the host's loader and converter, rendered with its template into the ids
training will see) -> ``sampling`` (HF ``generate`` or vLLM, seeded per prompt) -> ``scorers`` (classifier reward
model, host ``stage: rm`` model, or function) -> ``selection`` (best vs worst, drop rules) -> ``store`` (resumable
parts) -> ``outputs`` (``pairs.json``, ``dataset_info.json``) and ``report``. ``simpo-plugin eval``
(:func:`evaluate_models`) shares prompts, sampling and scorers, and adds ``answers`` (paths or AlpacaEval outputs
files), ``judges`` (reward, function, local LLM), ``winrate`` and ``leaderboard`` (raw, length-controlled and
style-controlled win rates with intervals), ``checks`` (capability sets) and ``eval_report``.

The rest of the plugin may use the names in ``__all__``: the two commands, their argument classes, and for the
stage's probes :class:`GenerationProbe`, :class:`ProbeSettings`, :func:`load_prompts`, :func:`check_scorer`,
:func:`load_check_set` and :func:`check_prompts`.
This package imports nothing from the stage or the host glue (tests/test_layers.py). Importing it is cheap;
torch and the host load with the first name used.
"""

from importlib import import_module
from typing import Any


_LAZY = {
    "EvalArguments": ".args",
    "PairsArguments": ".args",
    "GenerationProbe": ".probes",
    "ProbeSettings": ".probes",
    "load_prompts": ".prompts",
    "check_scorer": ".scorers",
    "check_prompts": ".checks",
    "load_check_set": ".checks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_pairs(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.generation.pairs.build_pairs`."""
    from .pairs import build_pairs as run

    return run(raw)


def evaluate_models(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.generation.evaluate.evaluate_models`."""
    from .evaluate import evaluate_models as run

    return run(raw)


__all__ = ["build_pairs", "evaluate_models", *_LAZY]
