"""Pair selection: chosen = the highest-scored sample, rejected = the lowest, or a named reason to drop the prompt.

Checks run in this order, and a dropped prompt counts under the first reason that applies:

1. ``non_finite``: a score is NaN or infinite (the scorer failed on that sample);
2. ``identical``: every sample has the same text, so there is nothing to prefer;
3. ``tie``: best and worst score are equal, or differ by less than ``min_score_gap``;
4. ``truncated``: a sample of the pair hit ``max_new_tokens``, as ``drop_truncated`` says: ``chosen`` (the
   default) drops only when the chosen sample did, ``both`` when the chosen or the rejected one did, ``none``
   never. A rejected answer that rambles past the budget is what the pair should teach against, so by default
   such a pair is kept, with ``Selection.rejected_truncated`` set (and ``chosen_truncated`` for a chosen answer
   kept under ``none``);
5. ``empty``: the chosen or the rejected text is empty or whitespace (a preference for or against saying
   nothing teaches the model to stop early or to ramble).

Ties between samples with the same best (or worst) score go to the lowest sample index, as ``argmax`` does.
"""

import math
from dataclasses import dataclass


DROP_REASONS = ("non_finite", "identical", "tie", "truncated", "empty")
DROP_TRUNCATED = ("chosen", "both", "none")


@dataclass(frozen=True)
class Selection:
    chosen: int | None
    rejected: int | None
    gap: float | None
    drop_reason: str | None
    rejected_truncated: bool = False  # a kept pair whose rejected sample hit max_new_tokens
    chosen_truncated: bool = False  # a kept pair whose chosen sample hit max_new_tokens (drop_truncated: none)

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def select_pair(
    texts: list[str],
    scores: list[float],
    truncated: list[bool],
    min_score_gap: float = 0.0,
    drop_truncated: str = "chosen",
) -> Selection:
    """Pick (chosen, rejected) sample indices for one prompt, or the reason to drop it.

    ``drop_truncated`` is ``chosen``, ``both`` or ``none`` (see rule 4 above).
    """
    if drop_truncated not in DROP_TRUNCATED:
        raise ValueError(f"drop_truncated must be one of {', '.join(DROP_TRUNCATED)}, got {drop_truncated!r}")
    if not all(math.isfinite(score) for score in scores):
        return Selection(None, None, None, "non_finite")
    chosen = max(range(len(scores)), key=lambda i: (scores[i], -i))
    rejected = min(range(len(scores)), key=lambda i: (scores[i], i))
    gap = scores[chosen] - scores[rejected]
    if len(set(texts)) == 1:
        return Selection(chosen, rejected, gap, "identical")
    if gap <= 0 or gap < min_score_gap:
        return Selection(chosen, rejected, gap, "tie")
    if (truncated[chosen] and drop_truncated != "none") or (truncated[rejected] and drop_truncated == "both"):
        return Selection(chosen, rejected, gap, "truncated")
    if not texts[chosen].strip() or not texts[rejected].strip():
        return Selection(chosen, rejected, gap, "empty")
    return Selection(chosen, rejected, gap, None, bool(truncated[rejected]), bool(truncated[chosen]))
