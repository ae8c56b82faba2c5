"""Training curves of a SimPO run, one PNG per question a user asks of it.

Each figure overlays train (raw, faded, and smoothed with the host's TensorBoard-style EMA) and eval curves
of related metrics, e.g. chosen vs rejected log-probs, so that likelihood displacement (both falling) or a
length drift is visible at a glance.
"""

import json
from pathlib import Path

from llamafactory.extras.ploting import smooth
from transformers.trainer import TRAINER_STATE_NAME


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


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    return [step for step, _ in points], [value for _, value in points]


def _warnings(history: list[dict]) -> list[tuple[int, str]]:
    """(step, name) of every early warning the run recorded (``warning/<name>`` in the log history)."""
    return [(entry["step"], key.split("/", 1)[1]) for entry in history for key in entry if key.startswith("warning/")]


def plot_simpo_curves(output_dir: str | Path) -> list[Path]:
    """Write ``training_simpo_<panel>.png`` for every panel with data; returns the written paths."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    history = json.loads((output_dir / TRAINER_STATE_NAME).read_text(encoding="utf-8"))["log_history"]
    written = []
    for name, (title, keys) in PANELS.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        keys = sorted({k for e in history for k in e if k.startswith(keys[0][:-1])}) if keys[0][-1] == "*" else keys
        for key in keys:
            color = COLORS.get(key.split("/")[-1], None if key.startswith("probe/checks/") else "#1f77b4")
            label = key.split("/")[-1] if len(keys) > 1 or key.startswith("probe/") else "train"
            steps, values = _series(history, key)
            if values and key.startswith("probe/"):  # a few points, each a whole generation pass: no smoothing
                ax.plot(steps, values, color=color, marker="o", markersize=4, label=label)
                drawn = True
            elif values:
                ax.plot(steps, values, color=color, alpha=0.3)
                ax.plot(steps, smooth(values), color=color, label=f"{label} (smoothed)")
                drawn = True
            steps, values = _series(history, f"eval_{key}")
            if values:
                ax.plot(steps, values, color=color, linestyle="--", marker="o", markersize=3, label=f"eval {label}")
                drawn = True
        if drawn:
            for step, warning in _warnings(history):
                ax.axvline(step, color="#d62728", linestyle=":", linewidth=1)
                ax.annotate(warning, (step, 1), xycoords=("data", "axes fraction"), fontsize=7, color="#d62728",
                            rotation=90, va="top", ha="right")  # fmt: skip
            ax.set_title(f"{title}\n{output_dir.name}", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(keys[0] if len(keys) == 1 else title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = output_dir / f"training_simpo_{name}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
        plt.close(fig)
    return written
