"""Training curves of a SimPO run, one PNG per question a user asks of it.

Each figure overlays train (raw, faded, and smoothed with the host's TensorBoard-style EMA) and eval curves
of related metrics, e.g. chosen vs rejected log-probs, so that likelihood displacement (both falling) or a
length drift is visible at a glance. Series that share a panel differ in colour, line style, marker and width
(the earlier drawn wider), so one that lies on another still shows; the legend sits beside the axes; each
warning is a dotted line with its name at the top, names stacked where they would overlap.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING

from llamafactory.extras.ploting import smooth
from transformers.trainer import TRAINER_STATE_NAME


if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text


PANELS: dict[str, tuple[str, list[str]]] = {
    "loss": ("SimPO loss", ["loss"]),
    "accuracies": ("Preference accuracy (r_chosen > r_rejected)", ["rewards/accuracies"]),
    "margins": ("Reward margin r_chosen - r_rejected", ["rewards/margins"]),
    "logps": ("Mean token log-prob", ["logps/chosen", "logps/rejected"]),
    "lengths": ("Response length (tokens)", ["lengths/chosen", "lengths/rejected"]),
    "probe_length": ("Probe answers: mean length (tokens)", ["probe/length"]),
    "probe_health": (
        "Probe answers: health",
        ["probe/eos_rate", "probe/repeat_4", "probe/distinct_2", "probe/duplicate_rate"],
    ),
    "probe_reward": (
        "Probe answers: reward and win rates vs start",
        ["probe/reward", "probe/win_rate", "probe/judge_win_rate"],
    ),
    "probe_checks": ("Probe capability checks: share passed", ["probe/checks/*"]),
}
COLORS = {"chosen": "#1f77b4", "rejected": "#d62728", "eos_rate": "#2ca02c", "repeat_4": "#d62728",
          "distinct_2": "#9467bd", "duplicate_rate": "#8c564b", "win_rate": "#ff7f0e",
          "judge_win_rate": "#17becf"}  # fmt: skip
STYLES = (("-", "o", 3.2), ("--", "s", 2.4), ("-.", "^", 1.7), (":", "D", 1.1))  # line, marker, width per series
WARNING_COLOR = "#d62728"


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def _warnings(history: list[dict]) -> list[tuple[int, str]]:
    """(step, name) of every early warning the run recorded (``warning/<name>`` in the log history)."""
    return [(entry["step"], key.split("/", 1)[1]) for entry in history for key in entry if key.startswith("warning/")]


def _mark_warnings(ax: "Axes", warnings: list[tuple[int, str]]) -> list["Text"]:
    """A dotted line at each warning's step and its name at the top of the axes, right of the line (left of it
    where the name would leave the axes); a name that would overlap one already placed moves down a row. Call
    after the figure's layout is final."""
    renderer = ax.figure.canvas.get_renderer()
    edge = ax.get_window_extent(renderer).x1
    placed, texts = [], []
    for step in sorted({step for step, _ in warnings}):
        ax.axvline(step, color=WARNING_COLOR, linestyle=":", linewidth=1)
    for step, name in sorted(warnings):
        for row in range(len(warnings)):
            text = ax.annotate(name, (step, 1), xycoords=("data", "axes fraction"), textcoords="offset points",
                               xytext=(3, -3 - 10 * row), fontsize=7, color=WARNING_COLOR, va="top",
                               bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 0.5})  # fmt: skip
            box = text.get_window_extent(renderer)
            if box.x1 > edge:
                text.xyann = (-3, text.xyann[1])  # left of the line
                text.set_horizontalalignment("right")
                box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        placed.append(box)
        texts.append(text)
    return texts


def draw_panel(history: list[dict], title: str, keys: list[str], run: str) -> "Figure | None":
    """The figure of one panel (``keys`` from :data:`PANELS`, a trailing ``*`` matching every key it starts),
    or None when the history holds none of its metrics."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    drawn = False
    keys = sorted({k for e in history for k in e if k.startswith(keys[0][:-1])}) if keys[0][-1] == "*" else keys
    for index, key in enumerate(keys):
        color = COLORS.get(key.split("/")[-1], None if key.startswith("probe/checks/") else "#1f77b4")
        series = key.split("/")[-1] if len(keys) > 1 or key.startswith("probe/") else ""  # "": the panel's only one
        steps, values = _series(history, key)
        if values and key.startswith("probe/"):  # a few points, each a whole generation pass: no smoothing
            line, marker, width = STYLES[index % len(STYLES)] if len(keys) > 1 else (*STYLES[0][:2], 1.5)
            ax.plot(steps, values, color=color, linestyle=line, marker=marker, linewidth=width,
                    markersize=2 + 1.5 * width, label=series)  # fmt: skip
            drawn = True
        elif values:
            ax.plot(steps, values, color=color, alpha=0.3)
            ax.plot(steps, smooth(values), color=color, label=" ".join(filter(None, ("train", series, "(smoothed)"))))
            drawn = True
        steps, values = _series(history, f"eval_{key}")
        if values:
            ax.plot(steps, values, color=color, linestyle="--", marker="o", markersize=3,
                    label=" ".join(filter(None, ("eval", series))))  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(f"{title}\n{run}", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(keys[0] if len(keys) == 1 else title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside: off the names
    fig.tight_layout()
    _mark_warnings(ax, _warnings(history))
    return fig


def plot_simpo_curves(output_dir: str | Path) -> list[Path]:
    """Write ``training_simpo_<panel>.png`` for every panel with data; returns the written paths."""
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    history = json.loads((output_dir / TRAINER_STATE_NAME).read_text(encoding="utf-8"))["log_history"]
    written = []
    for name, (title, keys) in PANELS.items():
        fig = draw_panel(history, title, keys, output_dir.name)
        if fig is not None:
            path = output_dir / f"training_simpo_{name}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
            plt.close(fig)
    return written
