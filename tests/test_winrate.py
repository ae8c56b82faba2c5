"""Win rates against a baseline: the LC win rate against alpaca-eval's own code, length-only models, intervals."""

import warnings
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from simpo_plugin.evaluation.winrate import (
    Battle,
    bootstrap_interval,
    lc_win_rate,
    raw_win_rate,
    style_controlled_scores,
    style_features,
)


def alpaca_eval_lc(preferences, baseline_len, model_len, tmp_path, glm_name="length_controlled_minimal",
                   difficulty=None) -> dict:  # fmt: skip
    """alpaca-eval's `get_length_controlled_winrate` on the same judgments, its hub download stood in by a file
    (the minimal formula reads nothing from it; the noreg one reads the per-instruction difficulty)."""
    from alpaca_eval.metrics import glm_winrate

    n = len(preferences)
    gamed = pd.DataFrame({"index": range(n), "model": "x", "preference": 0.5,
                          "instruction_difficulty": difficulty if difficulty is not None else 0.0})  # fmt: skip
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    annotations = pd.DataFrame({
        "output_1": ["a" * int(n_) for n_ in baseline_len], "output_2": ["b" * int(n_) for n_ in model_len],
        "preference": np.asarray(preferences) + 1, "index": range(n), "generator_1": "base",
        "generator_2": "model", "annotator": "judge",
    })  # fmt: skip
    with mock.patch.object(glm_winrate, "hf_hub_download", return_value=str(tmp_path / "df_gamed.csv")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return glm_winrate.get_length_controlled_winrate(annotations, glm_name=glm_name, save_weights_dir=None)


def length_judged(seed: int = 0, n: int = 160, shift: float = 0.3):
    rng = np.random.default_rng(seed)
    baseline = rng.integers(200, 1500, n).astype(float)
    model = baseline + rng.integers(-300, 900, n)
    spread = np.std(baseline - model, ddof=1)
    p = 1 / (1 + np.exp(-(1.5 * np.tanh((model - baseline) / spread) + shift)))
    outcomes = (rng.random(n) < p).astype(float)
    outcomes[::17] = 0.5  # ties
    return outcomes, baseline, model


@pytest.mark.parametrize("soft", [False, True])
def test_lc_win_rate_equals_alpaca_eval_minimal(tmp_path, soft) -> None:
    outcomes, baseline, model = length_judged()
    if soft:  # probabilities, as a two-order or reward judge gives them
        outcomes = np.clip(outcomes * 0.8 + 0.1 + np.random.default_rng(1).normal(0, 0.05, outcomes.size), 0, 1)
    ours = lc_win_rate(outcomes, baseline, model, samples=0)
    theirs = alpaca_eval_lc(outcomes, baseline, model, tmp_path)
    assert ours.value == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
    assert ours.stderr == pytest.approx(theirs["lc_standard_error"], abs=1e-6)
    assert raw_win_rate(outcomes).value == pytest.approx(theirs["win_rate"], abs=1e-6)


def test_lc_win_rate_with_difficulty_equals_alpaca_eval_noreg(tmp_path) -> None:
    outcomes, baseline, model = length_judged(seed=3)
    difficulty = np.random.default_rng(4).normal(0, 1, outcomes.size)
    ours = lc_win_rate(outcomes, baseline, model, difficulty=difficulty, samples=0)
    theirs = alpaca_eval_lc(outcomes, baseline, model, tmp_path, "length_controlled_noreg", difficulty)
    assert ours.value == pytest.approx(theirs["length_controlled_winrate"], abs=1e-6)
    assert ours.stderr == pytest.approx(theirs["lc_standard_error"], abs=1e-6)
    assert ours.value != pytest.approx(lc_win_rate(outcomes, baseline, model, samples=0).value, abs=1e-3)


def test_a_model_that_only_gets_longer_wins_raw_but_not_length_controlled() -> None:
    """B is A's answers plus filler; the judge prefers length alone, in the GLM's own shape."""
    rng = np.random.default_rng(0)
    a = rng.integers(150, 900, 200).astype(float)
    b = a + rng.integers(200, 800, 200)  # filler appended
    spread = np.std(a - b, ddof=1)
    p = 1 / (1 + np.exp(-3.0 * np.tanh((b - a) / spread)))
    longer = lc_win_rate(p, a, b, samples=0)
    assert raw_win_rate(p).value >= 80 and longer.value == pytest.approx(50, abs=5)

    better = 1 / (1 + np.exp(-(3.0 * np.tanh((b - a) / spread) + 1.0)))  # also better at equal length
    lc = lc_win_rate(better, a, b, samples=0).value
    assert lc > 65 and lc == pytest.approx(100 / (1 + np.exp(-1.0)), abs=5)


def test_another_length_shape_agrees_with_alpaca_eval_not_with_50(tmp_path) -> None:
    """A reward linear in characters: the GLM's tanh shape does not absorb it all, and that is alpaca-eval's answer."""
    rng = np.random.default_rng(5)
    a = rng.integers(150, 900, 150).astype(float)
    b = a + rng.integers(0, 1500, 150)
    p = 1 / (1 + np.exp(-(b - a) / 200))
    ours = lc_win_rate(p, a, b, samples=0)
    assert ours.value == pytest.approx(alpaca_eval_lc(p, a, b, tmp_path)["length_controlled_winrate"], abs=1e-6)


def test_bootstrap_interval_covers_at_its_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    truth, covered = 0.62, 0
    for repeat in range(200):
        outcomes = (rng.random(120) < truth).astype(float)
        low, high = bootstrap_interval(outcomes, samples=500, seed=repeat)
        covered += low <= truth <= high
    assert covered / 200 == pytest.approx(0.95, abs=0.05)


def test_raw_win_rate_and_the_lc_interval() -> None:
    outcomes, baseline, model = length_judged(n=80)
    raw = raw_win_rate(outcomes, samples=300)
    assert raw.value == pytest.approx(100 * outcomes.mean())
    assert raw.stderr == pytest.approx(100 * outcomes.std(ddof=1) / np.sqrt(outcomes.size))
    assert raw.low < raw.value < raw.high
    lc = lc_win_rate(outcomes, baseline, model, samples=30)
    assert lc.low <= lc.value <= lc.high and lc.high - lc.low < 40


def test_style_control_removes_a_length_advantage() -> None:
    """Three models: `long` wins only by length, `good` wins at equal length; style control ranks them so."""
    rng = np.random.default_rng(2)
    battles = []
    for _ in range(300):
        base_tokens = rng.integers(50, 150)
        for model, extra, skill in (("long", 200, 0.0), ("good", 0, 1.2)):
            tokens = base_tokens + extra + rng.integers(-10, 10)
            style_gap = (tokens - base_tokens) / (tokens + base_tokens + 1)
            p = 1 / (1 + np.exp(-(skill + 4 * style_gap)))
            style = style_features("x", tokens), style_features("x", base_tokens)
            battles.append(Battle(model, "base", float(p), *style))
    scores = style_controlled_scores(battles, ["base", "long", "good"], "base", samples=20)
    assert scores["base"].value == pytest.approx(50)
    assert scores["long"].value == pytest.approx(50, abs=5)
    assert scores["good"].value == pytest.approx(100 / (1 + np.exp(-1.2)), abs=5)
    assert style_features("# T\n- a\n- b\n**x**", 7).tolist() == [7, 1, 2, 1]
