"""Whether a pairs run produced something to train on: no pair kept is an error, a run that kept few is a warning.

Both name the cause with its count (the drop reasons of :mod:`.selection`, the samples that ran into
``max_new_tokens``) and the key that fixes it, so that an empty ``pairs.json`` never reads as success.
"""

from typing import TYPE_CHECKING

from ..errors import EmptyOutput
from .selection import DROP_REASONS


if TYPE_CHECKING:
    from .args import PairsArguments
    from .report import PairsStats


MOSTLY = 0.5  # a share of prompts dropped (or of samples cut off) at or above this is warned about


def drop_fix(reason: str, settings: "PairsArguments") -> str:
    """What a drop reason means and the key that fixes it."""
    if reason == "truncated":
        which = "chosen or rejected" if settings.drop_truncated == "both" else "chosen"
        return (f"the {which} sample ran into `max_new_tokens: {settings.max_new_tokens}`: raise `max_new_tokens`, "
                "or keep such pairs with `drop_truncated: none`")  # fmt: skip
    if reason == "tie":
        gap = f" or closer than `min_score_gap: {settings.min_score_gap:g}`" if settings.min_score_gap > 0 else ""
        lower = ", or lower `min_score_gap`" if gap else ""
        return f"best and worst scores equal{gap}: raise `num_samples` or `temperature`{lower}"
    if reason == "identical":
        return (f"every sample the same text: raise `temperature` ({settings.temperature:g}) or `num_samples` "
                f"({settings.num_samples})")  # fmt: skip
    if reason == "empty":
        return "the chosen or rejected answer is empty: check `template` (the model may stop at once)"
    return "a score is NaN or infinite: check `reward_function` / `reward_model`"


def breakdown(stats: "PairsStats", settings: "PairsArguments") -> str:
    return "; ".join(f"{reason} {stats.drops[reason]} ({drop_fix(reason, settings)})"
                     for reason in DROP_REASONS if stats.drops[reason])  # fmt: skip


def truncation(stats: "PairsStats", settings: "PairsArguments") -> str:
    if not stats.truncated_samples:
        return ""
    every = "all" if stats.truncated_samples == stats.samples else f"{stats.truncated_samples} of"
    return f"{every} {stats.samples} samples ran into `max_new_tokens: {settings.max_new_tokens}`"


def check_outcome(stats: "PairsStats", settings: "PairsArguments", written: str) -> str | None:
    """Raise :class:`EmptyOutput` when no pair was kept; return a warning when most prompts or samples were lost.

    Args:
        written: where the report and the candidates are, for the message.
    """
    cut = truncation(stats, settings)
    if stats.kept == 0:
        cause = f" {cut[0].upper()}{cut[1:]}." if cut else ""
        raise EmptyOutput(
            f"no pairs kept from {stats.prompts} prompts ({stats.samples} samples): nothing to train on.{cause} "
            f"Dropped: {breakdown(stats, settings)}. Written, with every sample and its score: {written}."
        )
    dropped = sum(stats.drops.values())
    if stats.prompts and dropped / stats.prompts >= MOSTLY:
        return f"only {stats.kept} of {stats.prompts} prompts kept a pair; dropped: {breakdown(stats, settings)}."
    if stats.samples and stats.truncated_samples / stats.samples >= MOSTLY:
        return f"{cut}: raise `max_new_tokens` (a pair of cut-off answers teaches length, not quality)."
    return None
