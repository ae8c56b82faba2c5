"""``eval_report.md`` and ``eval_report.png`` of ``simpo-plugin eval``: one row per model, answers side by side."""

from pathlib import Path
from typing import Any

from .metrics import Generated


COLUMNS = {
    "length": "mean length (tokens)",
    "eos_rate": "ended (EOS/stop)",
    "repeat_4": "repeated 4-grams",
    "distinct_2": "distinct-2",
    "duplicate_rate": "same answer as another prompt",
    "words": "mean words",
    "reward": "mean reward",
    "win_rate": "win rate vs reference",
}
SHOWN_CHARS = 300


def _cell(text: str) -> str:
    text = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " ..."
    return text.replace("|", "\\|").replace("\n", "<br>") or "*(empty)*"


def render_eval(
    results: dict[str, dict[str, float]],
    prompts: list[Any],
    answers: dict[str, list[list[Generated]]],
    show: int,
    settings: Any,
) -> str:
    models = list(results)
    keys = [key for key in COLUMNS if any(key in metrics for metrics in results.values())]
    decoding = "greedy" if settings.temperature == 0 else f"temperature {settings.temperature}, top-p {settings.top_p}"
    lines = [
        "# Evaluation report",
        "",
        f"{len(prompts)} prompts, {settings.num_samples} answer(s) each, {decoding}, at most "
        f"{settings.max_new_tokens} new tokens. Reference (win rates are against it): `{models[0]}`.",
        "",
        "| model | " + " | ".join(COLUMNS[key] for key in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for model in models:
        cells = [f"{results[model][key]:.4g}" if key in results[model] else "n/a" for key in keys]
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    if show:
        lines += ["", f"## The first {min(show, len(prompts))} prompts side by side", ""]
        lines += ["| prompt | " + " | ".join(f"`{Path(m).name}`" for m in models) + " |",
                  "|---|" + "---|" * len(models)]  # fmt: skip
        for i, prompt in enumerate(prompts[:show]):
            row = [_cell(prompt.messages[-1]["content"])] + [_cell(answers[m][i][0].text) for m in models]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_eval(results: dict[str, dict[str, float]], path: Path) -> Path:
    """One bar panel per metric, one bar per model."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    models = list(results)
    keys = [key for key in COLUMNS if any(key in metrics for metrics in results.values())]
    figure, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3.2), squeeze=False)
    labels = [Path(m).name or m for m in models]
    for axis, key in zip(axes[0], keys, strict=True):
        axis.bar(range(len(models)), [results[m].get(key, 0.0) for m in models], color="#1f77b4")
        axis.set_xticks(range(len(models)), labels, rotation=30, ha="right", fontsize=8)
        axis.set_title(COLUMNS[key], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
