"""Pair selection: chosen = the highest-scored sample, rejected = the lowest, or a named reason to drop the prompt.

Checks run in this order, and a dropped prompt counts under the first reason that applies:

1. ``non_finite``: a score is NaN or infinite (the scorer failed on that sample);
2. ``identical``: every sample has the same text, so there is nothing to prefer;
3. ``tie``: best and worst score are equal, or differ by less than ``min_score_gap``;
4. ``truncated``: the chosen or the rejected sample hit ``max_new_tokens`` (unless ``keep_truncated``);
5. ``empty``: the chosen or the rejected text is empty or whitespace (a preference for or against saying
   nothing teaches the model to stop early or to ramble).

Ties between samples with the same best (or worst) score go to the lowest sample index, as ``argmax`` does.
"""

import math
from dataclasses import dataclass


DROP_REASONS = ("non_finite", "identical", "tie", "truncated", "empty")


@dataclass(frozen=True)
class Selection:
    chosen: int | None
    rejected: int | None
    gap: float | None
    drop_reason: str | None

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def select_pair(
    texts: list[str],
    scores: list[float],
    truncated: list[bool],
    min_score_gap: float = 0.0,
    keep_truncated: bool = False,
) -> Selection:
    """Pick (chosen, rejected) sample indices for one prompt, or the reason to drop it."""
    if not all(math.isfinite(score) for score in scores):
        return Selection(None, None, None, "non_finite")
    chosen = max(range(len(scores)), key=lambda i: (scores[i], -i))
    rejected = min(range(len(scores)), key=lambda i: (scores[i], i))
    gap = scores[chosen] - scores[rejected]
    if len(set(texts)) == 1:
        return Selection(chosen, rejected, gap, "identical")
    if gap <= 0 or gap < min_score_gap:
        return Selection(chosen, rejected, gap, "tie")
    if not keep_truncated and (truncated[chosen] or truncated[rejected]):
        return Selection(chosen, rejected, gap, "truncated")
    if not texts[chosen].strip() or not texts[rejected].strip():
        return Selection(chosen, rejected, gap, "empty")
    return Selection(chosen, rejected, gap, None)
