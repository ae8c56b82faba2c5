"""Health of generated text: what the training probes log and ``simpo-plugin eval`` reports.

Text is split into units that work for every script: a word (a run of letters/digits) in alphabetic scripts,
one character in Chinese, Japanese and Korean, which do not separate words with spaces; punctuation is not a
unit. On those units:

- ``repeat_4``: the share of a response's 4-grams that already occurred earlier in it (seq-rep-4 of Welleck
  et al., 2019): 0 for fresh text, towards 1 for a loop ("Hi Hi Hi ..."). Averaged over responses.
- ``distinct_2``: unique 2-grams / all 2-grams over all responses together (Li et al., 2016): low when the
  model says the same things to every prompt. Left out when the responses hold fewer 2-grams than there are
  responses (mostly one-word answers): a ratio over a handful of pairs says nothing, and 1.0 would read as perfect.
- ``duplicate_rate``: the share of responses whose units equal another response's (the same answer to different
  prompts; empty answers count as equal); left out below :data:`DUPLICATE_MIN_RESPONSES` responses, where two short
  answers agreeing by chance would read as a collapse. ``words``: the mean number of units per response.
- ``length``: mean response length in tokens of the policy's tokenizer; ``eos_rate``: the share of responses
  that ended with EOS or the template's stop word instead of running into ``max_new_tokens``.
- ``reward`` (with a scorer): the mean score; ``win_rate``: per prompt 1 if the score beats the reference
  response's score (the start of training, or the first model of an eval), 0.5 on a tie, else 0; averaged.
"""

import re
import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNIT = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
REPEAT_N = 4
DISTINCT_N = 2
DUPLICATE_MIN_RESPONSES = 8


@dataclass(frozen=True)
class Generated:
    """One response as the metrics see it."""

    text: str
    tokens: int
    ended: bool


def text_units(text: str) -> list[str]:
    return [unit.lower() for unit in _UNIT.findall(text)]


def ngrams(units: Sequence[Hashable], n: int) -> list[tuple]:
    return [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]


def repeat_rate(units: Sequence[Hashable], n: int = REPEAT_N) -> float:
    """Share of the n-grams that repeat an earlier one; 0 for a response shorter than n units."""
    grams = ngrams(units, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct(responses: Sequence[Sequence[Hashable]], n: int = DISTINCT_N) -> float:
    """Unique n-grams over all n-grams of all responses; 0 when there is no n-gram at all."""
    grams = [gram for units in responses for gram in ngrams(units, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_or_none(responses: Sequence[Sequence[Hashable]], n: int = DISTINCT_N) -> float | None:
    """:func:`distinct`, or None when there are fewer n-grams than responses (too few to measure diversity)."""
    count = sum(max(len(units) - n + 1, 0) for units in responses)
    return distinct(responses, n) if count >= max(len(responses), 1) else None


def duplicate_rate(responses: Sequence[Sequence[Hashable]]) -> float:
    """Share of responses whose units equal those of at least one other response."""
    counts: dict[tuple, int] = {}
    for units in responses:
        counts[tuple(units)] = counts.get(tuple(units), 0) + 1
    return sum(counts[tuple(units)] > 1 for units in responses) / len(responses) if responses else 0.0


def win_rate(scores: Sequence[float], reference: Sequence[float]) -> float:
    """Mean over prompts of 1 (beats the reference), 0.5 (tie) or 0."""
    results = [1.0 if s > r else 0.5 if s == r else 0.0 for s, r in zip(scores, reference, strict=True)]
    return statistics.mean(results) if results else 0.0


def summarize(
    responses: Sequence[Generated],
    scores: Sequence[float] | None = None,
    reference_scores: Sequence[float] | None = None,
) -> dict[str, float]:
    """The health metrics of a set of responses (and their rewards, when scored); a metric without data is left out."""
    if not responses:
        return {}
    units = [text_units(response.text) for response in responses]
    metrics = {
        "length": statistics.mean(response.tokens for response in responses),
        "eos_rate": statistics.mean(float(response.ended) for response in responses),
        "repeat_4": statistics.mean(repeat_rate(u) for u in units),
        "distinct_2": distinct_or_none(units),
        "duplicate_rate": duplicate_rate(units) if len(units) >= DUPLICATE_MIN_RESPONSES else None,
        "words": statistics.mean(len(u) for u in units),
    }
    metrics = {key: value for key, value in metrics.items() if value is not None}
    if scores is not None:
        metrics["reward"] = statistics.mean(scores)
        if reference_scores is not None:
            metrics["win_rate"] = win_rate(scores, reference_scores)
    return metrics
