"""Text-health metrics on hand-written answers whose values are worked out in the comments."""

import pytest

from simpo_plugin.evaluation.metrics import Generated, distinct, repeat_rate, summarize, text_units, win_rate


def test_units_are_words_or_cjk_characters() -> None:
    assert text_units("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]
    assert text_units("Café naïve ÉTÉ") == ["café", "naïve", "été"]
    assert text_units("我爱北京") == ["我", "爱", "北", "京"]
    assert text_units("東京タワー and 서울") == ["東", "京", "タ", "ワ", "ー", "and", "서", "울"]
    assert text_units("") == [] and text_units("  ...!? ") == []


def test_repeat_rate_counts_4grams_seen_before() -> None:
    assert repeat_rate(text_units("Hi Hi Hi Hi Hi")) == 0.5  # 4-grams: (hi x4) twice, 1 unique -> 1 - 1/2
    assert repeat_rate("a b c a b c a b c".split()) == pytest.approx(1 - 3 / 6)  # 6 4-grams, 3 unique
    assert repeat_rate("the cat sat on the mat".split()) == 0.0
    assert repeat_rate("too short".split()) == 0.0 and repeat_rate([]) == 0.0
    assert repeat_rate(list("我我我我我我")) == pytest.approx(1 - 1 / 3)


def test_distinct_2_is_over_all_answers() -> None:
    assert distinct([["a", "b", "c"], ["a", "b", "d"]]) == 0.75  # bigrams ab bc ab bd: 3 unique of 4
    assert distinct([["same", "words"]] * 4) == 0.25
    assert distinct([["one"], []]) == 0.0  # no bigram at all


def test_win_rate_counts_ties_as_half() -> None:
    assert win_rate([2.0, 1.0, 3.0, 0.0], [1.0, 1.0, 4.0, -1.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert win_rate([], []) == 0.0


def test_summarize_with_empty_and_unended_answers() -> None:
    answers = [
        Generated("The cat sat on the mat.", 7, True),
        Generated("", 0, True),
        Generated("go go go go go", 128, False),
    ]
    metrics = summarize(answers, scores=[1.0, 0.0, -1.0], reference_scores=[0.0, 0.0, 0.0])
    assert metrics["length"] == pytest.approx(135 / 3)
    assert metrics["eos_rate"] == pytest.approx(2 / 3)
    assert metrics["repeat_4"] == pytest.approx((0 + 0 + 0.5) / 3)
    assert metrics["distinct_2"] == pytest.approx(6 / 9)  # 5 distinct of 5 + 1 of 4 -> 6 unique of 9
    assert metrics["reward"] == 0.0 and metrics["win_rate"] == pytest.approx(0.5)
    assert "reward" not in summarize(answers) and summarize([]) == {}


def test_degenerate_answers_are_not_scored_as_perfect() -> None:
    """One word each, the same word: no distinct-2 (too few pairs to measure), every answer a duplicate."""
    collapsed = [Generated(f"{noise} accurate.", 4, True) for noise in ("\ufffd", "\ufffd\ufffd", "", "!")] * 2
    metrics = summarize(collapsed)
    assert "distinct_2" not in metrics
    assert metrics["duplicate_rate"] == 1.0 and metrics["words"] == 1.0
    varied = summarize([Generated("a b c", 3, True), Generated("a b d", 3, True), Generated("a b c", 3, True)] * 3)
    assert varied["duplicate_rate"] == 1.0 and varied["distinct_2"] == pytest.approx(3 / 18)
    few = [Generated("a b c", 3, True), Generated("a b d", 3, True), Generated("a b c", 3, True)]
    assert "duplicate_rate" not in summarize(few)  # 3 answers: two agreeing says nothing
    assert "distinct_2" not in summarize([Generated("x y", 2, True), Generated("z", 1, True)])  # 1 pair, 2 answers
