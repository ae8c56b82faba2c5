"""A leaderboard from judged comparisons: each model's raw and length-controlled win rate against the baseline,
its lengths, Arena-Hard-style scores with three or more models, and the judge's position consistency.

Input: per comparison ``(model, other)`` the per-instruction :class:`~.judges.Judgment` (P(model beats other)), and
per model its answers' lengths. Output (``eval_results.json``), per model, on AlpacaEval's 0-100 scale:
``win_rate``, ``win_rate_stderr``, ``win_rate_ci`` ([low, high]), the same for ``lc_win_rate`` and, with three
or more models, ``style_score``; ``chars`` and ``length`` (mean tokens) of its answers. The baseline is 50 by
definition, with no interval.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..install_hint import install_hint
from .judges import Judgment, position_consistency
from .winrate import Battle, LCUnavailable, Rate, lc_win_rate, raw_win_rate, style_controlled_scores, style_features


Comparison = tuple[str, str]  # (model, other): judgments hold P(model beats other)


def _flat(prefix: str, rate: Rate) -> dict[str, Any]:
    return {prefix: rate.value, f"{prefix}_stderr": rate.stderr, f"{prefix}_ci": [rate.low, rate.high]}


def against(
    judged: dict[Comparison, list[Judgment]], model: str, baseline: str
) -> list[Judgment] | None:  # fmt: skip
    """Judgments as P(model beats baseline), whichever way round the comparison was judged."""
    if (model, baseline) in judged:
        return judged[(model, baseline)]
    if (baseline, model) in judged:
        return [
            Judgment(1.0 - j.p_a, None if j.p_a_first is None else 1.0 - j.p_a_first,
                     None if j.p_a_second is None else 1.0 - j.p_a_second)
            for j in judged[(baseline, model)]
        ]  # fmt: skip
    return None


def comparison_rates(
    judgments: Sequence[Judgment], chars: Sequence[float], other_chars: Sequence[float],
    difficulty: Sequence[float] | None, samples: int, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Raw and LC win rate (with intervals) and position consistency of one judged comparison.

    The LC win rate needs alpaca-eval (the ``eval`` extra; :func:`simpo_plugin.install_hint.install_hint` names
    the command); without it, it is left out and ``lc_missing`` says why and how to install it.
    """
    p = [j.p_a for j in judgments]
    result = _flat("win_rate", raw_win_rate(p, samples=samples, seed=seed))
    delta = [a - b for a, b in zip(chars, other_chars, strict=True)]
    if len(delta) > 1 and (all(d > 0 for d in delta) or all(d < 0 for d in delta)):
        result["lc_extrapolated"] = True  # no instruction at equal length: the GLM's answer is an extrapolation
    try:
        result |= _flat("lc_win_rate", lc_win_rate(p, other_chars, chars, difficulty, samples=samples, seed=seed))
    except ImportError as exc:
        result["lc_missing"] = f"{exc}; `{install_hint('eval')}` installs alpaca-eval for the LC win rate"
    except LCUnavailable as exc:
        result["lc_missing"] = str(exc)
    consistency = position_consistency(list(judgments))
    if consistency is not None:
        result["position_consistency"] = consistency
    return result


def build_leaderboard(
    names: list[str], baseline: str, judged: dict[Comparison, list[Judgment]],
    chars: dict[str, list[float]], tokens: dict[str, list[int] | None], texts: dict[str, list[str]],
    difficulty: Sequence[float] | None = None, samples: int = 200, seed: int = 0,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per model: its rates against ``baseline`` and its mean lengths (module docstring)."""
    board: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {"chars": float(np.mean(chars[name]))}
        if tokens.get(name) is not None:
            row["length"] = float(np.mean(tokens[name]))
        if name == baseline:
            row |= {"win_rate": 50.0, "lc_win_rate": 50.0, "baseline": True}
        else:
            judgments = against(judged, name, baseline)
            if judgments is not None:
                row |= comparison_rates(judgments, chars[name], chars[baseline], difficulty, samples, seed)
        board[name] = row
    if len(names) >= 3 and judged:
        battles = []
        for (a, b), judgments in judged.items():
            for i, judgment in enumerate(judgments):
                token_a = tokens[a][i] if tokens.get(a) is not None else chars[a][i]
                token_b = tokens[b][i] if tokens.get(b) is not None else chars[b][i]
                battles.append(Battle(a, b, judgment.p_a, style_features(texts[a][i], token_a),
                                      style_features(texts[b][i], token_b)))  # fmt: skip
        for name, rate in style_controlled_scores(battles, names, baseline, samples=samples, seed=seed).items():
            board[name] |= _flat("style_score", rate)
    return board


def pairwise_table(names: list[str], judged: dict[Comparison, list[Judgment]]) -> dict[str, dict[str, float]]:
    """``table[a][b]`` = 100 * mean P(a beats b) for every judged pair (both directions filled)."""
    table: dict[str, dict[str, float]] = {name: {} for name in names}
    for a in names:
        for b in names:
            judgments = against(judged, a, b) if a != b else None
            if judgments:
                table[a][b] = 100 * float(np.mean([j.p_a for j in judgments]))
    return table
