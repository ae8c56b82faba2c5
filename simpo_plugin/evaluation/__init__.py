"""``simpo-plugin eval``: models judged against a baseline the way the paper measures (raw and LC win rates).

The entry point is :func:`evaluate_models` (the command as a function). The path of an answer:

    args         the command's keys (:class:`EvalArguments`) on top of sampling's shared ones
      |
    answers      ``models:`` entries: paths (answered greedily through :mod:`simpo_plugin.sampling`) or
      |          AlpacaEval ``model_outputs`` files, aligned by instruction
    judges       P(A beats B) per pair and both orders: a reward model or ``reward_function`` (Bradley-Terry on
      |          scores, through :mod:`simpo_plugin.pairs`' scorers), a ``judge_function``, or a local LLM judge
      |          reading its logits (:func:`load_judge`, :data:`JUDGE_PROMPT`)
    winrate      raw win rate with a bootstrap interval; LC win rate (AlpacaEval's GLM); style-controlled
      |
    leaderboard  each model against the baseline, and the pairwise table
    checks       capability sets (:func:`load_check_set`, :func:`check_prompts`), scored per answer
    metrics      answer health: lengths, not-ended share, repeats (:class:`Generated`, :func:`summarize`)
    report       ``eval_report.md``, ``eval_win_rates.png``, ``eval_report.png``

A new judge is a class with ``judge(pairs) -> list[Judgment]`` in ``judges.py``; a new metric goes to
``winrate.py`` (a rate over battles) or ``metrics.py`` (a property of answers). The stage's probes use the judges,
checks and metrics through this package. This package imports nothing from the stage or the host glue.
"""

from typing import Any

from ..lazy import lazy_attributes


_LAZY = {
    "EvalArguments": ".args",
    "JUDGE_PROMPT": ".judges",
    "load_judge": ".judges",
    "check_prompts": ".checks",
    "dropped": ".checks",
    "load_check_set": ".checks",
    "passes": ".checks",
    "Generated": ".metrics",
    "repeat_rate": ".metrics",
    "summarize": ".metrics",
    "text_units": ".metrics",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


def evaluate_models(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.evaluation.evaluate.evaluate_models`."""
    from .evaluate import evaluate_models as run

    return run(raw)


__all__ = ["evaluate_models", *_LAZY]
