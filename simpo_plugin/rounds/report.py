"""The rounds' outputs: ``rounds_results.json`` (a row per round), ``rounds_report.md`` and ``rounds.png``.

A row holds the new policy's win rates against the start and against the previous round (raw and
length-controlled, 0-100, with 95% intervals: ``simpo-plugin eval``'s numbers), its mean answer length in tokens
and characters, its capability-check scores and their change against the start, the pairs kept, the training's
collapse warnings and the seconds each phase took.
"""

import math
from pathlib import Path
from typing import Any

from ..sampling import write_atomic
from .state import write_json


def _rate(row: dict[str, Any], key: str) -> tuple[float | None, list[float] | None]:
    value = row.get(key)
    return (None, None) if value is None else (float(value), row.get(f"{key}_ci"))


def round_row(r: int, done: dict[str, Any]) -> dict[str, Any]:
    """One round's row from its phases' records (``state.RoundsState.phases``)."""
    vs_start, vs_previous = done["eval"]["vs_start"], done["eval"]["vs_previous"]
    lc_start, lc_start_ci = _rate(vs_start, "lc_win_rate")
    win_start, win_start_ci = _rate(vs_start, "win_rate")
    lc_prev, lc_prev_ci = _rate(vs_previous, "lc_win_rate")
    win_prev, win_prev_ci = _rate(vs_previous, "win_rate")
    checks = vs_start.get("checks", {})
    return {
        "round": r, "policy": done["train"]["policy"], "model": done["train"]["model"],
        "pairs_kept": done["pairs"]["kept"],
        "prompt_slice": done["pairs"]["prompt_slice"],
        "lc_vs_start": lc_start, "lc_vs_start_ci": lc_start_ci, "win_vs_start": win_start,
        "win_vs_start_ci": win_start_ci, "lc_vs_previous": lc_prev, "lc_vs_previous_ci": lc_prev_ci,
        "win_vs_previous": win_prev, "win_vs_previous_ci": win_prev_ci,
        "lc_gain": None if lc_prev is None else lc_prev - 50.0,
        "length": vs_start.get("length"), "chars": vs_start.get("chars"),
        "checks": {name: check["score"] for name, check in checks.items()},
        "check_changes": {name: check["change"] for name, check in checks.items() if "change" in check},
        "warnings": done["train"]["warnings"],
        "seconds": {phase: round(done[phase].get("seconds", 0.0), 1) for phase in ("pairs", "train", "eval")},
    }  # fmt: skip


def best_round(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest LC win rate against the start (the raw one where LC is missing)."""

    def key(row: dict[str, Any]) -> float:
        value = row["lc_vs_start"] if row["lc_vs_start"] is not None else row["win_vs_start"]
        return -math.inf if value is None else value

    return max(rows, key=key)


def _cell(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else f"{value:.1f}"


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """The table of rounds, best round named."""
    best = best_round(rows)
    checks = sorted({name for row in rows for name in row["checks"]})
    head = ["round", "pairs", "LC vs start", "raw vs start", "LC vs previous", "raw vs previous", "length",
            *[f"{name} (change)" for name in checks], "warnings", "s pairs / train / eval"]  # fmt: skip
    lines = ["# simpo-plugin rounds", "", "Win rates of each round's policy (0-100, 95% intervals; 50 = no change). "
             f"Best round by LC win rate against the start: **round {best['round']}** (`{best['policy']}`).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in rows:
        cells = [str(row["round"]), str(row["pairs_kept"]), _cell(row["lc_vs_start"], row["lc_vs_start_ci"]),
                 _cell(row["win_vs_start"], row["win_vs_start_ci"]),
                 _cell(row["lc_vs_previous"], row["lc_vs_previous_ci"]),
                 _cell(row["win_vs_previous"], row["win_vs_previous_ci"]),
                 "-" if row["length"] is None else f"{row['length']:.0f}"]  # fmt: skip
        for name in checks:
            score, change = row["checks"].get(name), row["check_changes"].get(name)
            cells.append("-" if score is None else f"{score:.1f}" + ("" if change is None else f" ({change:+.1f})"))
        seconds = row["seconds"]
        cells += [", ".join(row["warnings"]) or "-", f"{seconds['pairs']:.0f} / {seconds['train']:.0f} / "
                  f"{seconds['eval']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![rounds](rounds.png)", ""]
    return "\n".join(lines)


def plot_rounds(rows: list[dict[str, Any]], path: Path) -> None:
    """Win rates (LC and raw, with intervals) against the start, lengths and check scores, per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    for key, label, offset in (("lc_vs_start", "LC win rate", -0.05), ("win_vs_start", "raw win rate", 0.05)):
        points = [(row["round"] + offset, row[key], row[f"{key}_ci"]) for row in rows if row[key] is not None]
        if points:
            x, y, ci = zip(*points, strict=True)
            errors = [[v - c[0] if c else 0 for v, c in zip(y, ci, strict=True)],
                      [c[1] - v if c else 0 for v, c in zip(y, ci, strict=True)]]  # fmt: skip
            axes[0].errorbar(x, y, yerr=errors, marker="o", capsize=4, label=label)
    axes[0].axhline(50, color="gray", linestyle=":", linewidth=1)
    axes[0].set(title="against the start", xlabel="round", ylabel="win rate (%)", ylim=(0, 100))
    axes[0].legend()
    lengths = [(row["round"], row["length"]) for row in rows if row["length"] is not None]
    if lengths:
        axes[1].plot(*zip(*lengths, strict=True), marker="o")
    axes[1].set(title="mean answer length", xlabel="round", ylabel="tokens")
    for name in sorted({name for row in rows for name in row["checks"]}):
        points = [(row["round"], row["checks"][name]) for row in rows if name in row["checks"]]
        axes[2].plot(*zip(*points, strict=True), marker="o", label=name)
    axes[2].set(title="capability checks", xlabel="round", ylabel="score (%)", ylim=(0, 100))
    if any(row["checks"] for row in rows):
        axes[2].legend()
    else:
        axes[2].text(0.5, 0.5, "no capability checks\n(`checks:` in the eval block)", ha="center", va="center",
                     transform=axes[2].transAxes, color="gray")  # fmt: skip
    for axis in axes:
        axis.set_xticks(rounds)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(output_dir: Path, rows: list[dict[str, Any]]) -> None:
    write_json(output_dir / "rounds_results.json", rows)
    write_atomic(output_dir / "rounds_report.md", render_markdown(rows))
    plot_rounds(rows, output_dir / "rounds.png")
