"""What a pairs run kept and dropped, and whether its reward prefers length: ``pairs_report.md`` and ``.png``.

A reward that prefers longer answers makes chosen responses longer than rejected ones in most pairs; SimPO's
length normalization removes the length bias of its own reward, not the one baked into the data, so such data
teaches the model to ramble. The report warns when chosen is longer (or shorter) in at least
``LENGTH_BIAS_SHARE`` of the pairs (with at least ``LENGTH_BIAS_MIN_PAIRS`` pairs).
"""

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .selection import DROP_REASONS


LENGTH_BIAS_SHARE = 0.7
LENGTH_BIAS_MIN_PAIRS = 10
SHOWN = 5


CUT_LABELS = {"chosen": "with only the chosen answer cut off", "rejected": "with only the rejected answer cut off",
              "both": "with both answers cut off"}  # fmt: skip


@dataclass
class PairsStats:
    rows: int = 0
    unusable: list[str] = field(default_factory=list)
    duplicates: int = 0
    too_long: int = 0
    prompts: int = 0
    samples: int = 0
    truncated_samples: int = 0
    kept_rejected_truncated: int = 0  # kept pairs whose rejected answer only hit max_new_tokens
    kept_chosen_truncated: int = 0  # kept pairs whose chosen answer only hit it (drop_truncated: none)
    kept_both_truncated: int = 0  # kept pairs whose two answers hit it (drop_truncated: none)
    empty_samples: int = 0
    drops: Counter = field(default_factory=Counter)
    non_finite: list[str] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    chosen_tokens: list[int] = field(default_factory=list)
    rejected_tokens: list[int] = field(default_factory=list)
    longest_pair: int = 0
    sampling_rate: str = ""

    @property
    def kept(self) -> int:
        return len(self.gaps)

    def share(self, compare: str) -> float:
        pairs = list(zip(self.chosen_tokens, self.rejected_tokens, strict=True))
        hits = sum((c > r) if compare == "longer" else (c < r) for c, r in pairs)
        return hits / len(pairs) if pairs else 0.0

    def length_warning(self) -> str | None:
        if self.kept < LENGTH_BIAS_MIN_PAIRS:
            return None
        for direction in ("longer", "shorter"):
            share = self.share(direction)
            if share >= LENGTH_BIAS_SHARE:
                return (
                    f"the reward prefers {direction} responses: chosen is {direction} than rejected in {share:.0%} of "
                    f"pairs (mean {statistics.mean(self.chosen_tokens):.0f} vs "
                    f"{statistics.mean(self.rejected_tokens):.0f} tokens); SimPO will learn the length too. Consider "
                    "a length-controlled reward, or check that long or short answers really are better."
                )
        return None

    def cut_counts(self) -> tuple[int, int, int]:
        """Kept pairs cut off at ``max_new_tokens``: the chosen answer only, the rejected only, both."""
        return self.kept_chosen_truncated, self.kept_rejected_truncated, self.kept_both_truncated

    def count_cut(self, chosen: bool, rejected: bool) -> None:
        """Count a kept pair by which of its answers hit ``max_new_tokens``."""
        self.kept_both_truncated += chosen and rejected
        self.kept_chosen_truncated += chosen and not rejected
        self.kept_rejected_truncated += rejected and not chosen

    def summary(self) -> str:
        drops = ", ".join(f"{reason} {self.drops[reason]}" for reason in DROP_REASONS if self.drops[reason])
        counts = zip(self.cut_counts(), ("chosen", "rejected", "both"), strict=True)
        parts = [f"{count} {CUT_LABELS[side]}" for count, side in counts if count]
        cut = f" ({', '.join(parts)})" if parts else ""
        return (
            f"{self.kept} pairs kept{cut} from {self.prompts} prompts ({self.samples} samples); "
            f"dropped: {drops or 'none'}"
        )


def quantiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(int(q * (len(ordered) - 1) + 0.5), len(ordered) - 1)]

    return " / ".join(f"{at(q):.4g}" for q in (0.0, 0.1, 0.5, 0.9, 1.0))


def render_markdown(stats: PairsStats, dataset_name: str) -> str:
    def listed(items: list[str]) -> str:
        return "; ".join(items[:SHOWN]) + (f"; ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")

    mean = statistics.mean
    lines = [
        "# On-policy pairs report",
        "",
        f"Dataset entry: `{dataset_name}` (pairs.json). {stats.summary()}.",
        "",
        "| | count |",
        "|---|---|",
        f"| rows read | {stats.rows} |",
        f"| rows without a usable prompt | {len(stats.unusable)} |",
        f"| duplicate prompts (kept once) | {stats.duplicates} |",
        f"| prompts longer than cutoff_len (skipped) | {stats.too_long} |",
        f"| prompts sampled | {stats.prompts} |",
        f"| samples | {stats.samples} |",
        f"| samples truncated at max_new_tokens | {stats.truncated_samples} |",
        f"| empty samples | {stats.empty_samples} |",
        f"| **pairs kept** | **{stats.kept}** |",
        *(
            f"| kept pairs {CUT_LABELS[side]} at max_new_tokens | {count} |"
            for side, count in zip(("chosen", "rejected", "both"), stats.cut_counts(), strict=True)
        ),
    ]
    lines += [f"| dropped: {reason} | {stats.drops[reason]} |" for reason in DROP_REASONS]
    lines += ["", f"Score gap (chosen - rejected) of kept pairs, min/p10/median/p90/max: {quantiles(stats.gaps)}"]
    if stats.kept:
        lines += [
            "",
            f"Mean length: chosen {mean(stats.chosen_tokens):.1f} tokens, rejected {mean(stats.rejected_tokens):.1f}; "
            f"chosen is longer in {stats.share('longer'):.0%} of pairs, shorter in {stats.share('shorter'):.0%}.",
            "",
            f"Longest pair: {stats.longest_pair} tokens (prompt + longer response + stop token); train with "
            f"`cutoff_len: {stats.longest_pair}` or more to keep every pair whole.",
        ]
    if warning := stats.length_warning():
        lines += ["", f"**Warning:** {warning}"]
    if stats.non_finite:
        lines += ["", f"Non-finite scores: {listed(stats.non_finite)}"]
    if stats.unusable:
        lines += ["", f"Rows without a usable prompt: {listed(stats.unusable)}"]
    if stats.sampling_rate:
        lines += ["", f"Sampling in this run: {stats.sampling_rate}"]
    return "\n".join(lines) + "\n"


def plot_report(stats: PairsStats, path: Path) -> Path | None:
    """Score-gap histogram and chosen-vs-rejected lengths; None when no pair was kept."""
    if not stats.kept:
        return None
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    figure, (gap_axis, length_axis) = plt.subplots(1, 2, figsize=(10, 4))
    gap_axis.hist(stats.gaps, bins=min(30, max(5, stats.kept // 3)), color="#1f77b4")
    gap_axis.set(title="Score gap of kept pairs", xlabel="score(chosen) - score(rejected)", ylabel="pairs")
    length_axis.scatter(stats.rejected_tokens, stats.chosen_tokens, s=10, alpha=0.6, color="#d62728")
    top = max(stats.chosen_tokens + stats.rejected_tokens + [1])
    length_axis.plot([0, top], [0, top], color="gray", linewidth=1, linestyle="--")
    length_axis.set(
        title=f"Lengths (chosen longer in {stats.share('longer'):.0%})",
        xlabel="rejected (tokens)",
        ylabel="chosen (tokens)",
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
