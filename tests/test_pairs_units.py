"""The pieces of `simpo-plugin pairs` on hand-made inputs: selection rules, seeded sampling, report, config."""

import json
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from simpo_plugin.cli import read_config
from simpo_plugin.errors import PairsConfigError, SimPOArgumentError
from simpo_plugin.pairs.args import PairsArguments
from simpo_plugin.pairs.outputs import candidate_lines
from simpo_plugin.pairs.report import PairsStats, quantiles, render_markdown
from simpo_plugin.pairs.selection import DROP_TRUNCATED, select_pair
from simpo_plugin.sampling.prompts import Prompt, PromptSet
from simpo_plugin.sampling.samplers import SeededSampling, sample_seed, split_at_stop, top_p_mask
from simpo_plugin.sampling.settings import check_keys


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
        (["a", "b", "c"], [3.0, 2.0, 1.0], [False, False, True], {}, None),  # default `chosen`: rejected may ramble
        (["a", "b", "c"], [3.0, 2.0, 1.0], [False, False, True], {"drop_truncated": "both"}, "truncated"),
        (["a", "b", "  "], [3.0, 2.0, 1.0], [False] * 3, {}, "empty"),
        (["a", "b", "  "], [3.0, 2.0, 1.0], [True, False, False], {}, "truncated"),  # checked before empty
        (["a", "b", "  "], [3.0, 2.0, 1.0], [True, False, False], {"drop_truncated": "none"}, "empty"),
        (["a", "b", "c"], [1.0, 1.0, 1.0], [True, False, True], {"drop_truncated": "both"}, "tie"),  # after tie
        (["same", "same"], [math.nan, 1.0], [True, True], {}, "non_finite"),  # the first reason counts
    ],
)
def test_drop_reasons(texts, scores, truncated, kwargs, reason) -> None:
    assert select_pair(texts, scores, truncated, **kwargs).drop_reason == reason


def test_truncated_middle_sample_does_not_drop_and_drop_truncated_none_keeps() -> None:
    assert select_pair(["a", "b", "c"], [3.0, 2.0, 1.0], [False, True, False], drop_truncated="both").kept
    assert select_pair(["a", "b", "c"], [3.0, 2.0, 1.0], [True, False, True], drop_truncated="none").kept
    assert select_pair(["a", "b", "c"], [1.0, 1.6, 1.1], [False] * 3, min_score_gap=0.5).kept


# (chosen truncated?, rejected truncated?) -> kept?, for each value of `drop_truncated`
TRUNCATION_RULES = {
    "chosen": {(False, False): True, (False, True): True, (True, False): False, (True, True): False},
    "both": {(False, False): True, (False, True): False, (True, False): False, (True, True): False},
    "none": {(False, False): True, (False, True): True, (True, False): True, (True, True): True},
}


@pytest.mark.parametrize(
    ("drop_truncated", "chosen_cut", "rejected_cut", "kept"),
    [(mode, c, r, kept) for mode, table in TRUNCATION_RULES.items() for (c, r), kept in table.items()],
)
def test_drop_truncated_decides_by_the_side_that_was_cut(drop_truncated, chosen_cut, rejected_cut, kept) -> None:
    # sample 0 is chosen, sample 2 rejected; the truncated middle sample is in no pair and never counts
    pick = select_pair(["a", "b", "c"], [3.0, 2.0, 1.0], [chosen_cut, True, rejected_cut], 0.0, drop_truncated)
    assert (pick.chosen, pick.rejected, pick.gap) == (0, 2, 2.0)
    assert pick.drop_reason == (None if kept else "truncated")
    assert pick.rejected_truncated is (kept and rejected_cut)


def test_drop_truncated_default_is_chosen_and_other_values_are_refused() -> None:
    for cuts in TRUNCATION_RULES["chosen"]:
        truncated = [cuts[0], False, cuts[1]]
        assert select_pair(["a", "b", "c"], [3.0, 2.0, 1.0], truncated).kept is TRUNCATION_RULES["chosen"][cuts]
    with pytest.raises(ValueError, match="drop_truncated must be one of chosen, both, none, got 'rejected'"):
        select_pair(["a", "b"], [2.0, 1.0], [False, False], drop_truncated="rejected")


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


def test_report_counts_kept_pairs_whose_rejected_answer_was_cut_off() -> None:
    stats = _stats([10, 12], [64, 20])
    stats.prompts, stats.samples, stats.truncated_samples = 3, 9, 2
    stats.drops["truncated"] = 1
    stats.count_cut(chosen=False, rejected=True)
    assert stats.summary() == (
        "2 pairs kept (1 with only the rejected answer cut off) from 3 prompts (9 samples); dropped: truncated 1"
    )
    report = render_markdown(stats, "onpolicy")
    assert "| kept pairs with only the rejected answer cut off at max_new_tokens | 1 |" in report
    assert "| kept pairs with both answers cut off at max_new_tokens | 0 |" in report
    assert "(1 with only the rejected answer cut off)" in report
    stats.kept_rejected_truncated = 0
    assert stats.summary() == "2 pairs kept from 3 prompts (9 samples); dropped: truncated 1"
    assert "| kept pairs with only the rejected answer cut off at max_new_tokens | 0 |" in render_markdown(stats, "x")


def _prompt(text: str = "q") -> Prompt:
    return Prompt(text, [{"role": "user", "content": text}], "", "", [1, 2, 3], f"src row {text}")


def _record(texts: list[str], truncated: list[bool]) -> dict:
    pairs = zip(texts, truncated, strict=True)
    return {"samples": [{"text": text, "tokens": 8 if cut else 3, "truncated": cut} for text, cut in pairs]}


@pytest.mark.parametrize(
    ("drop_truncated", "flags", "roles"),
    [
        ("chosen", [[], ["truncated"], ["truncated", "rejected_truncated"]], ["chosen", None, "rejected"]),
        ("none", [[], ["truncated"], ["truncated", "rejected_truncated"]], ["chosen", None, "rejected"]),
        ("both", [[], ["truncated"], ["truncated"]], [None, None, None]),
    ],
)
def test_candidates_flag_the_rejected_answer_that_was_cut_off(drop_truncated, flags, roles) -> None:
    record, scores = _record(["a", "b", "c"], [False, True, True]), [3.0, 2.0, 1.0]
    selection = select_pair(["a", "b", "c"], scores, [False, True, True], 0.0, drop_truncated)
    lines = [json.loads(line) for line in candidate_lines(4, _prompt(), record, scores, selection)]
    assert [line["flags"] for line in lines] == flags  # the cut-off middle sample is in no pair: no pair flag
    assert [line["role"] for line in lines] == roles
    assert {line["drop_reason"] for line in lines} == {None if drop_truncated != "both" else "truncated"}


def test_select_and_write_keeps_counts_and_flags_pairs_with_a_cut_off_rejected_answer(tmp_path) -> None:
    from simpo_plugin.pairs.build import select_and_write  # here: pairs.py imports the samplers

    # prompt 0: rejected cut off; prompt 1: chosen cut off; prompt 2: nothing cut off
    cuts = [[False, False, True], [True, False, False], [False, False, False]]
    samples = {i: _record([f"{i}a", f"{i}b", f"{i}c"], cut) for i, cut in enumerate(cuts)}
    scores = {i: {"scores": [3.0, 2.0, 1.0]} for i in samples}
    store = SimpleNamespace(read=lambda kind: {"samples": samples, "scores": scores}[kind])
    prompt_set = PromptSet([_prompt(str(i)) for i in samples], rows=3)
    expected = {"chosen": (2, 1, 1), "both": (1, 2, 0), "none": (3, 0, 1)}  # kept, dropped truncated, flagged
    for mode, (kept, dropped, flagged) in expected.items():
        settings = SimpleNamespace(min_score_gap=0.0, drop_truncated=mode, dataset_name="onpolicy")
        stats = select_and_write(tmp_path, settings, prompt_set, store)
        assert (stats.kept, stats.drops["truncated"], stats.kept_rejected_truncated) == (kept, dropped, flagged)
        assert stats.kept_chosen_truncated == (mode == "none") and stats.kept_both_truncated == 0
        assert len(json.loads((tmp_path / "pairs.json").read_text())) == kept
        candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
        marked = [(c["prompt_index"], c["sample_index"]) for c in candidates if "rejected_truncated" in c["flags"]]
        assert marked == ([(0, 2)] if flagged else [])


# ---- config -----------------------------------------------------------------------------------------------------


def test_overrides_take_host_and_dash_styles(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("num_samples: 5\ntemperature: 0.8\ndataset: a\n")
    argv = [str(path), "num_samples=3", "--top_p", "0.9", "--overwrite-output-dir=true", "--drop-truncated=none",
            "dataset=a,b"]  # fmt: skip
    assert read_config(argv) == {"num_samples": 3, "temperature": 0.8, "top_p": 0.9, "overwrite_output_dir": True,
                                 "drop_truncated": "none", "dataset": "a,b"}  # fmt: skip
    with pytest.raises(SimPOArgumentError, match="not found"):
        read_config([str(tmp_path / "missing.yaml")])
    with pytest.raises(SimPOArgumentError, match="key=value"):
        read_config([str(path), "--num_samples"])


def _pairs_args(**keys) -> PairsArguments:
    return PairsArguments(output_dir="out", reward_function="rewards:score", **keys)


def test_drop_truncated_key_defaults_to_chosen_and_names_its_values() -> None:
    assert _pairs_args().drop_truncated == "chosen" and _pairs_args().keep_truncated is None
    assert [_pairs_args(drop_truncated=mode).drop_truncated for mode in DROP_TRUNCATED] == ["chosen", "both", "none"]
    for bad in ("rejected", None, True):
        message = rf"`drop_truncated` must be one of chosen, both, none, got {bad!r}"
        with pytest.raises(PairsConfigError, match=message):
            _pairs_args(drop_truncated=bad)
    check_keys({"drop_truncated": "both", "keep_truncated": True}, PairsArguments)  # both are keys of `pairs`
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning without `keep_truncated`
        _pairs_args(drop_truncated="both")


@pytest.mark.parametrize(
    ("keys", "means"),
    [
        ({"keep_truncated": True}, "none"),
        ({"keep_truncated": False}, "both"),
        ({"keep_truncated": True, "drop_truncated": "none"}, "none"),
        ({"keep_truncated": False, "drop_truncated": "both"}, "both"),
    ],
)
def test_deprecated_keep_truncated_maps_to_drop_truncated_with_a_warning(keys, means) -> None:
    with pytest.warns(FutureWarning, match=rf"`keep_truncated` is deprecated: use `drop_truncated: {means}` instead"):
        assert _pairs_args(**keys).drop_truncated == means


def test_keep_truncated_that_disagrees_or_is_no_bool_is_an_error() -> None:
    message = r"`keep_truncated: true` \(deprecated\) means `drop_truncated: none`, but `drop_truncated: both`"
    with pytest.raises(PairsConfigError, match=message):
        _pairs_args(keep_truncated=True, drop_truncated="both")
    with pytest.raises(PairsConfigError, match=r"`keep_truncated: false`.*`drop_truncated: none` is given too"):
        _pairs_args(keep_truncated=False, drop_truncated="none")
    with pytest.raises(PairsConfigError, match=r"`keep_truncated` must be true or false, got 'yes'"):
        _pairs_args(keep_truncated="yes")


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(PairsConfigError, match=r"Unknown key `num_sample`.*Did you mean `num_samples`\?"):
        check_keys({"num_sample": 3}, PairsArguments)
    with pytest.raises(PairsConfigError, match="Unknown key `do_sample`"):
        check_keys({"do_sample": True}, PairsArguments)
    check_keys(
        {"model_name_or_path": "m", "template": "llama2", "cutoff_len": 10, "reward_model": "r"}, PairsArguments
    )


def test_drop_truncated_none_counts_chosen_rejected_and_both_cut_off_as_the_candidates_show(tmp_path) -> None:
    from simpo_plugin.pairs.build import select_and_write

    # both cut off (twice), chosen only, rejected only, nothing: sample 0 is chosen, sample 2 rejected
    cuts = [[True, False, True], [True, True, True], [True, False, False], [False, False, True], [False] * 3]
    samples = {i: _record([f"{i}a", f"{i}b", f"{i}c"], cut) for i, cut in enumerate(cuts)}
    store = SimpleNamespace(read=lambda kind: {"samples": samples, "scores": {i: {"scores": [3.0, 2.0, 1.0]}
                                                                             for i in samples}}[kind])  # fmt: skip
    prompt_set = PromptSet([_prompt(str(i)) for i in samples], rows=5)
    settings = SimpleNamespace(min_score_gap=0.0, drop_truncated="none", dataset_name="onpolicy")
    stats = select_and_write(tmp_path, settings, prompt_set, store)
    assert stats.cut_counts() == (1, 1, 2)  # chosen only, rejected only, both
    assert stats.summary().startswith(
        "5 pairs kept (1 with only the chosen answer cut off, 1 with only the rejected answer cut off, 2 with both "
        "answers cut off) from 5 prompts"
    )
    candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    cut = {
        (c["prompt_index"], c["role"])
        for c in candidates
        if {"chosen_truncated", "rejected_truncated"} & set(c["flags"])
    }
    by_prompt = [((i, "chosen") in cut, (i, "rejected") in cut) for i in range(len(samples))]
    assert stats.cut_counts() == (by_prompt.count((True, False)), by_prompt.count((False, True)),
                                  by_prompt.count((True, True)))  # fmt: skip
    assert len(json.loads((tmp_path / "pairs.json").read_text())) == stats.kept == 5
