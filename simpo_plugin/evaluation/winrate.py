"""Win rates against a baseline from a judge's preferences, as AlpacaEval 2 and Arena-Hard report them.

The input is, per instruction, ``p_i`` = P(the model's answer beats the baseline's) in [0, 1] (a tie is 0.5), and
the two answers' lengths. All rates are on AlpacaEval's 0-100 scale.

- **Raw win rate**: ``100 * mean(p)``; its standard error ``100 * sem(p)``; a percentile bootstrap interval over
  instructions (:func:`bootstrap_interval`).
- **Length-controlled win rate** (AlpacaEval 2, Dubois et al. 2024, arXiv 2404.04475): a logistic GLM fitted on the
  preferences, ``p ~ sigmoid(theta_len * tanh(std_delta_len) + theta_model)`` where ``std_delta_len`` is the
  baseline's length minus the model's, in characters, divided by its standard deviation over the instructions;
  the LC win rate is the mean prediction at ``std_delta_len = 0``. This is AlpacaEval's
  ``length_controlled_minimal`` formula; with per-instruction difficulties (AlpacaEval's own 805 prompts) its
  ``length_controlled_noreg`` formula adds them. The fit is alpaca-eval's own code
  (``alpaca_eval.metrics.glm_winrate.make_dmatrix_for_model`` and ``fit_LogisticRegressionCV``, 5 grouped folds,
  L1, the continuous target as two weighted rows); only the feature frame is built here, because alpaca-eval's
  entry point downloads its ``df_gamed.csv`` even when the formula does not use it. Its standard error is
  alpaca-eval's (the SEM of the predictions: 0 under the minimal formula, whose prediction is the same for every
  instruction); the interval is a bootstrap that refits the GLM per resample.
- **Style-controlled scores** (Arena-Hard, Li et al. 2024): with three or more models, a Bradley-Terry model over
  every judged pair of answers with style features (length in tokens, markdown headers, list items, bold spans;
  each as ``(a - b) / (a + b + 1)``, scaled to unit root mean square but not centred, so that equal style stays 0),
  fitted on the soft outcomes; a model's score is its predicted win rate against the baseline with the style terms
  at 0, with a bootstrap interval over the judged pairs. A judge's taste for length in another shape than these
  features is removed only in part (docs/evaluation.md).
"""

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


MINIMAL = "length_controlled_minimal"
MIN_INSTRUCTIONS = 5
WITH_DIFFICULTY = "length_controlled_noreg"


class LCUnavailable(ValueError):
    """The LC win rate cannot be computed for these judgments (too few instructions)."""


@dataclass(frozen=True)
class Rate:
    """A rate on the 0-100 scale with its standard error and a 95% interval."""

    value: float
    stderr: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


def bootstrap_interval(
    values: Sequence[float], statistic: Callable[[np.ndarray], float] | None = None, samples: int = 1000,
    seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over ``values``, resampled whole."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    index = rng.integers(0, data.size, size=(samples, data.size))
    if statistic is None:
        stats = data[index].mean(axis=1)
    else:
        stats = np.array([statistic(row) for row in index])
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def raw_win_rate(preferences: Sequence[float], samples: int = 1000, seed: int = 0) -> Rate:
    """``100 * mean(p)`` with its standard error and bootstrap interval."""
    p = np.asarray(preferences, dtype=float)
    stderr = float(p.std(ddof=1) / math.sqrt(p.size)) if p.size > 1 else math.nan
    low, high = bootstrap_interval(p, samples=samples, seed=seed) if samples else (math.nan, math.nan)
    return Rate(100 * float(p.mean()), 100 * stderr, 100 * low, 100 * high)


def glm_frame(
    preferences: Sequence[float], baseline_lengths: Sequence[float], model_lengths: Sequence[float],
    difficulty: Sequence[float] | None = None,
):  # fmt: skip
    """AlpacaEval's feature frame: ``preference`` in [0, 1], ``std_delta_len``, ``not_gamed_baseline`` (difficulty)."""
    import pandas as pd

    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    spread = delta.std(ddof=1) if delta.size > 1 else 0.0
    frame = pd.DataFrame(
        {
            "preference": np.asarray(preferences, dtype=float),
            "std_delta_len": delta / spread if spread > 0 else np.zeros_like(delta),
            "not_gamed_baseline": True,
        }
    )
    if difficulty is not None:
        frame["instruction_difficulty"] = np.asarray(difficulty, dtype=float)
    return frame


def _lc_predictions(frame, formula_name: str) -> np.ndarray:
    """The GLM's predicted preference per instruction at zero length difference (alpaca-eval's fit); one outcome
    everywhere leaves nothing to fit, and is its own prediction."""
    if frame["preference"].nunique() < 2:
        return frame["preference"].to_numpy(dtype=float)
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    info = GLM_INFO[formula_name]
    test = frame.drop(columns=["preference"]).copy()
    test["std_delta_len"] = 0.0
    with warnings.catch_warnings():  # scikit-learn's deprecation notes about alpaca-eval's arguments
        warnings.simplefilter("ignore")
        train, test_x = make_dmatrix_for_model(frame, test, formula=info["formula"])
        model = fit_LogisticRegressionCV(train, "preference", is_ytrue_proba=True, **info["kwargs"])
        return model.predict_proba(test_x)[:, 1]


def lc_win_rate(
    preferences: Sequence[float], baseline_lengths: Sequence[float], model_lengths: Sequence[float],
    difficulty: Sequence[float] | None = None, samples: int = 200, seed: int = 0,
) -> Rate:  # fmt: skip
    """AlpacaEval 2's length-controlled win rate (see the module docstring), standard error and bootstrap interval.

    Args:
        preferences: (n,) P(model beats baseline) per instruction, in [0, 1].
        baseline_lengths, model_lengths: (n,) answer lengths in characters, as alpaca-eval measures them.
        difficulty: (n,) AlpacaEval's per-instruction difficulties, only for its own prompts; None uses the minimal
            formula.
        samples: bootstrap resamples (each refits the GLM); 0 skips the interval.

    Raises:
        ImportError: alpaca-eval is not installed (the ``eval`` extra, see ``simpo_plugin.install_hint``).
        LCUnavailable: fewer than 5 instructions.
    """
    frame = glm_frame(preferences, baseline_lengths, model_lengths, difficulty)
    if len(frame) < MIN_INSTRUCTIONS:
        raise LCUnavailable(
            f"the LC win rate needs at least {MIN_INSTRUCTIONS} instructions (alpaca-eval's {MIN_INSTRUCTIONS} "
            f"cross-validation folds), got {len(frame)}"
        )
    name = MINIMAL if difficulty is None else WITH_DIFFICULTY
    predicted = _lc_predictions(frame, name)
    stderr = float(np.std(predicted, ddof=1) / math.sqrt(predicted.size)) if predicted.size > 1 else math.nan
    low = high = math.nan
    if samples:
        rng = np.random.default_rng(seed)
        stats = []
        for _ in range(samples):
            pick = rng.integers(0, len(frame), size=len(frame))
            sample = frame.iloc[pick].reset_index(drop=True)
            stats.append(float(_lc_predictions(sample, name).mean()))
        low, high = (float(x) for x in np.percentile(stats, [2.5, 97.5]))
    return Rate(100 * float(predicted.mean()), 100 * stderr, 100 * low, 100 * high)


_HEADER = re.compile(r"^#{1,6} ", flags=re.M)
_LIST = re.compile(r"^\s*(?:[-*+] |\d+\. )", flags=re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def style_features(text: str, tokens: int) -> np.ndarray:
    """Arena-Hard's style of an answer: its length in tokens and its markdown headers, list items and bold spans."""
    return np.array([tokens, len(_HEADER.findall(text)), len(_LIST.findall(text)), len(_BOLD.findall(text))], float)


@dataclass(frozen=True)
class Battle:
    """One instruction judged between two models: ``p_a`` = P(model_a's answer wins)."""

    model_a: str
    model_b: str
    p_a: float
    style_a: np.ndarray
    style_b: np.ndarray


def _bt_coefficients(battles: list[Battle], models: list[str]) -> np.ndarray:
    """Bradley-Terry strengths (one per model, the first fixed at 0) with style control, fitted on soft outcomes."""
    from sklearn.linear_model import LogisticRegression

    index = {model: i for i, model in enumerate(models)}
    rows, targets = [], []
    for battle in battles:
        x = np.zeros(len(models))
        x[index[battle.model_a]], x[index[battle.model_b]] = 1.0, -1.0
        style = (battle.style_a - battle.style_b) / (battle.style_a + battle.style_b + 1.0)
        rows.append(np.concatenate([x[1:], style]))
        targets.append(battle.p_a)
    features = np.asarray(rows)
    style = features[:, len(models) - 1 :]
    spread = np.sqrt((style**2).mean(axis=0))  # scaled, not centred: equal style stays at 0 (no intercept in BT)
    features[:, len(models) - 1 :] = style / np.where(spread > 0, spread, 1.0)
    p = np.asarray(targets)
    doubled = np.concatenate([features, features])  # soft targets: each row once as a win, once as a loss
    labels = np.concatenate([np.ones(len(p)), np.zeros(len(p))])
    weights = np.concatenate([p, 1.0 - p]) + 1e-12
    model = LogisticRegression(fit_intercept=False, C=1e6, max_iter=1000)
    model.fit(doubled, labels, sample_weight=weights)
    return np.concatenate([[0.0], model.coef_[0][: len(models) - 1]])


def style_controlled_scores(
    battles: list[Battle], models: list[str], baseline: str, samples: int = 200, seed: int = 0
) -> dict[str, Rate]:
    """Arena-Hard's style-controlled score of each model: ``100 * sigmoid(beta_m - beta_baseline)``, i.e. its win rate
    against the baseline with length and markdown held equal, with a bootstrap interval over battles."""
    order = [baseline] + [m for m in models if m != baseline]
    point = _bt_coefficients(battles, order)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        pick = rng.integers(0, len(battles), size=len(battles))
        draws.append(_bt_coefficients([battles[i] for i in pick], order))
    draws_array = np.asarray(draws) if draws else np.empty((0, len(order)))
    scores = {}
    for i, model in enumerate(order):
        value = 100 / (1 + math.exp(-point[i]))
        spread = 100 / (1 + np.exp(-draws_array[:, i])) if len(draws_array) else np.array([math.nan])
        low, high = np.percentile(spread, [2.5, 97.5])
        scores[model] = Rate(value, float(np.std(spread, ddof=1)) if spread.size > 1 else math.nan, float(low),
                             float(high))  # fmt: skip
    return scores
