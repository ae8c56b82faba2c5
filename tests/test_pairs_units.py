"""The pieces of `simpo-plugin pairs` on hand-made inputs: selection rules, seeded sampling, report, config."""

import math

import pytest
import torch

from simpo_plugin.cli import read_config
from simpo_plugin.errors import SimPOArgumentError
from simpo_plugin.generation.args import PairsConfigError, check_keys
from simpo_plugin.generation.report import PairsStats, quantiles
from simpo_plugin.generation.sampling import SeededSampling, sample_seed, split_at_stop, top_p_mask
from simpo_plugin.generation.selection import select_pair


# ---- selection -------------------------------------------------------------------------------------------------


def test_best_is_chosen_and_worst_is_rejected() -> None:
    pick = select_pair(["a", "bb", "ccc", "dd"], [0.5, 2.0, -1.0, 1.0], [False] * 4)
    assert (pick.chosen, pick.rejected, pick.drop_reason) == (1, 2, None)
    assert pick.gap == pytest.approx(3.0)


def test_equal_best_scores_go_to_the_lowest_index() -> None:
    pick = select_pair(["a", "b", "c", "d"], [1.0, 3.0, 3.0, 1.0], [False] * 4)
    assert (pick.chosen, pick.rejected) == (1, 0)


@pytest.mark.parametrize(
    ("texts", "scores", "truncated", "kwargs", "reason"),
    [
        (["same"] * 3, [1.0, 2.0, 3.0], [False] * 3, {}, "identical"),
        (["a", "b", "c"], [1.0, 1.0, 1.0], [False] * 3, {}, "tie"),
        (["a", "b", "c"], [1.0, 1.2, 1.1], [False] * 3, {"min_score_gap": 0.5}, "tie"),
        (["a", "b", "c"], [1.0, math.nan, 0.0], [False] * 3, {}, "non_finite"),
        (["a", "b", "c"], [1.0, math.inf, 0.0], [False] * 3, {}, "non_finite"),
        (["a", "b", "c"], [3.0, 2.0, 1.0], [True, False, False], {}, "truncated"),
        (["a", "b", "c"], [3.0, 2.0, 1.0], [False, False, True], {}, "truncated"),
        (["a", "b", "  "], [3.0, 2.0, 1.0], [False] * 3, {}, "empty"),
        (["same", "same"], [math.nan, 1.0], [True, True], {}, "non_finite"),  # the first reason counts
    ],
)
def test_drop_reasons(texts, scores, truncated, kwargs, reason) -> None:
    assert select_pair(texts, scores, truncated, **kwargs).drop_reason == reason


def test_truncated_middle_sample_does_not_drop_and_keep_truncated_keeps() -> None:
    assert select_pair(["a", "b", "c"], [3.0, 2.0, 1.0], [False, True, False]).kept
    assert select_pair(["a", "b", "c"], [3.0, 2.0, 1.0], [True, False, True], keep_truncated=True).kept
    assert select_pair(["a", "b", "c"], [1.0, 1.6, 1.1], [False] * 3, min_score_gap=0.5).kept


# ---- sampling ---------------------------------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_set_that_reaches_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_mask(probs.log(), 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(top_p_mask(probs.log(), 0.8))  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_mask(probs.log(), 0.81)).sum() == 3
    assert torch.isfinite(top_p_mask(probs.log(), 0.01)).tolist() == [[True, False, False, False]]


def test_seeded_sampling_draws_from_the_tempered_nucleus() -> None:
    """Frequencies of argmax(processed scores) match softmax(logits / T) over the top-p set (20k draws)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    draws = 20_000
    processor = SeededSampling(list(range(draws)), temperature=0.8, top_p=0.95, device=torch.device("cpu"))
    picked = processor(None, logits.expand(draws, -1).clone()).argmax(dim=-1)
    frequencies = torch.bincount(picked, minlength=5) / draws
    expected = top_p_mask(logits / 0.8, 0.95).softmax(dim=-1)[0]
    assert frequencies.tolist() == pytest.approx(expected.tolist(), abs=0.012)
    assert frequencies[3:].sum() == 0  # outside the nucleus


def test_seeded_sampling_is_per_row_and_greedy_at_zero_temperature() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    seeds = [11, 22, 33]
    together = SeededSampling(seeds, 1.0, 1.0, torch.device("cpu"))(None, logits.clone()).argmax(-1)
    alone = [SeededSampling([s], 1.0, 1.0, torch.device("cpu"))(None, logits[i : i + 1]).argmax(-1).item()
             for i, s in enumerate(seeds)]  # fmt: skip
    assert together.tolist() == alone
    greedy = SeededSampling(seeds, 0.0, 0.95, torch.device("cpu"))(None, logits.clone())
    assert torch.equal(greedy.argmax(-1), logits.argmax(-1))


def test_seeds_depend_on_prompt_and_sample_only() -> None:
    assert sample_seed(42, "abc", 0) == sample_seed(42, "abc", 0)
    assert len({sample_seed(42, "abc", 0), sample_seed(42, "abc", 1), sample_seed(43, "abc", 0),
                sample_seed(42, "abd", 0)}) == 4  # fmt: skip
    assert 0 <= sample_seed(1, "x") < 2**63


def test_split_at_stop() -> None:
    assert split_at_stop([5, 6, 2, 7], {2, 9}) == ([5, 6], False)
    assert split_at_stop([5, 6, 7], {2}) == ([5, 6, 7], True)
    assert split_at_stop([9], {2, 9}) == ([], False)


# ---- report -----------------------------------------------------------------------------------------------------


def _stats(chosen: list[int], rejected: list[int]) -> PairsStats:
    return PairsStats(gaps=[1.0] * len(chosen), chosen_tokens=chosen, rejected_tokens=rejected)


def test_length_warning_names_the_direction_and_numbers() -> None:
    longer = _stats([30] * 8 + [10, 10], [10] * 8 + [20, 20])
    assert longer.share("longer") == pytest.approx(0.8)
    warning = longer.length_warning()
    assert "prefers longer responses" in warning and "80%" in warning and "mean 26 vs 12 tokens" in warning
    assert "prefers shorter" in _stats([5] * 10, [9] * 10).length_warning()
    assert _stats([5] * 5 + [9] * 5, [9] * 5 + [5] * 5).length_warning() is None
    assert _stats([30] * 9, [10] * 9).length_warning() is None  # too few pairs to tell


def test_quantiles() -> None:
    assert quantiles([]) == "n/a"
    assert quantiles([float(v) for v in range(11)]) == "0 / 1 / 5 / 9 / 10"


# ---- config -----------------------------------------------------------------------------------------------------


def test_overrides_take_host_and_dash_styles(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("num_samples: 5\ntemperature: 0.8\ndataset: a\n")
    config = read_config([str(path), "num_samples=3", "--top_p", "0.9", "--keep-truncated=true", "dataset=a,b"])
    assert config == {"num_samples": 3, "temperature": 0.8, "top_p": 0.9, "keep_truncated": True, "dataset": "a,b"}
    with pytest.raises(SimPOArgumentError, match="not found"):
        read_config([str(tmp_path / "missing.yaml")])
    with pytest.raises(SimPOArgumentError, match="key=value"):
        read_config([str(path), "--num_samples"])


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(PairsConfigError, match=r"Unknown key `num_sample`.*Did you mean `num_samples`\?"):
        check_keys({"num_sample": 3})
    with pytest.raises(PairsConfigError, match="Unknown key `do_sample`"):
        check_keys({"do_sample": True})
    check_keys({"model_name_or_path": "m", "template": "llama2", "cutoff_len": 10, "reward_model": "r"})
