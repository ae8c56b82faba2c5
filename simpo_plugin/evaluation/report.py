"""``eval_report.md``, ``eval_report.png`` and ``eval_win_rates.png`` of ``simpo-plugin eval``.

The report leads with the leaderboard (LC win rate, raw win rate, each with its 95% interval, mean lengths,
style-controlled score, checks), then the answers' health, the judge's speed, and the answers side by side.
"""

import math
from pathlib import Path
from typing import Any

from .metrics import Generated


HEALTH = {
    "length": "mean length (tokens)",
    "chars": "mean length (chars)",
    "eos_rate": "ended (EOS/stop)",
    "repeat_4": "repeated 4-grams",
    "distinct_2": "distinct-2",
    "duplicate_rate": "same answer as another prompt",
    "words": "mean words",
    "reward": "mean reward",
}
SHOWN_CHARS = 300


def _cell(text: str) -> str:
    text = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " ..."
    return text.replace("|", "\\|").replace("\n", "<br>") or "*(empty)*"


def _rate(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    low, high = row.get(f"{key}_ci", [math.nan, math.nan])
    if row.get("baseline") or not all(math.isfinite(x) for x in (low, high)):
        return f"{value:.1f}"
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def _health(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.4g}" if key in row else "n/a"


def _consistency(row: dict[str, Any]) -> str:
    return f"{row['position_consistency']:.2f}" if "position_consistency" in row else "n/a"


RATES = {"lc_win_rate": "LC win rate", "win_rate": "win rate", "style_score": "style-controlled"}


def console_line(name: str, row: dict[str, Any], baseline: str) -> str:
    """One model's line on the console: the numbers the report prints, formatted by the same helpers (rates with
    their 95% intervals as in the leaderboard, health as in its table), so the two never disagree."""
    cells = [f"{label} {_rate(row, key)}" for key, label in RATES.items() if key in row]
    cells += [f"position consistency {_consistency(row)}"] * ("position_consistency" in row)
    cells += [f"{label} {_health(row, key)}" for key, label in HEALTH.items() if key in row]
    cells += [f"checks {_checks(row)}"] * bool(row.get("checks"))
    return f"`{name}`" + " (baseline)" * (name == baseline) + ": " + "; ".join(cells)


def _checks(row: dict[str, Any]) -> str:
    cells = []
    for name, check in row.get("checks", {}).items():
        flag = " ⚠ drop" if check.get("dropped") else ""
        cells.append(f"{name} {check['score']:.0f}{flag}")
    return "; ".join(cells) or "n/a"


def leaderboard_lines(results: dict[str, dict[str, Any]], baseline: str) -> list[str]:
    """The leaderboard table, best LC win rate first (the baseline at 50)."""

    def order(name: str) -> float:
        value = results[name].get("lc_win_rate", results[name].get("win_rate"))
        return -value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf

    style = any("style_score" in row for row in results.values())
    header = "| model | LC win rate | win rate | mean length (tokens) | mean length (chars) |"
    header += " style-controlled |" * style + " position consistency | checks |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in sorted(results, key=order):
        row = results[name]
        length = f"{row['length']:.1f}" if "length" in row else "n/a"
        consistency = _consistency(row)
        cells = [f"`{name}`" + " (baseline)" * (name == baseline), _rate(row, "lc_win_rate"), _rate(row, "win_rate"),
                 length, f"{row['chars']:.0f}"] + ([_rate(row, "style_score")] if style else []) + [
                 consistency, _checks(row)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_eval(
    results: dict[str, dict[str, Any]], baseline: str, prompts: list[Any], answers: dict[str, list[list[Generated]]],
    settings: Any, timing: dict[str, Any], generated: bool = True,
) -> str:  # fmt: skip
    models = list(results)
    decoding = "greedy" if settings.temperature == 0 else f"temperature {settings.temperature}, top-p {settings.top_p}"
    count = f"{len(prompts)} instruction" + "s" * (len(prompts) != 1)
    how = (f"generated answers: {settings.num_samples} each, {decoding}, at most {settings.max_new_tokens} new "
           "tokens" if generated else "precomputed answers")  # fmt: skip
    lines = ["# Evaluation report", "",
             f"{count}; {how}. Win rates are against `{baseline}`, on a 0-100 scale, with 95% bootstrap intervals; "
             "the LC win rate is AlpacaEval 2's length-controlled one (docs/evaluation.md).", ""]  # fmt: skip
    if any("win_rate" in row and not row.get("baseline") for row in results.values()):
        lines += ["## Leaderboard", "", *leaderboard_lines(results, baseline), ""]
        lines += ["![win rate against mean length](eval_win_rates.png)", ""]
        missing = next((row["lc_missing"] for row in results.values() if "lc_missing" in row), None)
        if missing:
            lines += [f"LC win rate: n/a ({missing}).", ""]
        extrapolated = [f"`{name}`" for name, row in results.items() if row.get("lc_extrapolated")]
        if extrapolated:
            lines += [f"{', '.join(extrapolated)}: every answer is longer (or every one shorter) than the "
                      "baseline's, so the LC win rate extrapolates to equal length; read it with its interval.",
                      ""]  # fmt: skip
    else:
        lines += ["No judge was given (`judge_model`, `judge_function`, `reward_model` or `reward_function`): no win "
                  "rates.", ""]  # fmt: skip
    if timing:
        lines += [f"Judge: {timing['judge']}; {timing['judgments']} judgments ({timing['forwards']} judge calls) in "
                  f"{timing['seconds']:.1f} s, {timing['per_second']:.2f} judgments/s.", ""]  # fmt: skip
    if any("pairwise" in row for row in results.values()):
        lines += ["## Pairwise win rates (row beats column)", "", "| | " + " | ".join(f"`{m}`" for m in models) + " |",
                  "|---" * (len(models) + 1) + "|"]  # fmt: skip
        for a in models:
            won = results[a].get("pairwise", {})
            cells = [f"{won[b]:.1f}" if b in won else "-" for b in models]
            lines.append(f"| `{a}` | " + " | ".join(cells) + " |")
        lines.append("")
    keys = [key for key in HEALTH if any(key in row for row in results.values())]
    lines += ["## Answers' health", "", "| model | " + " | ".join(HEALTH[key] for key in keys) + " |",
              "|---|" + "---|" * len(keys)]  # fmt: skip
    for model in models:
        cells = [_health(results[model], key) for key in keys]
        lines.append(f"| `{model}` | " + " | ".join(cells) + " |")
    checked = [m for m in models if results[m].get("checks")]
    if checked:
        lines += ["", "## Capability checks (share passed, 95% interval; change against the baseline)", "",
                  "| model | set | score | change |", "|---|---|---|---|"]  # fmt: skip
        for model in checked:
            for name, check in results[model]["checks"].items():
                change = "" if "change" not in check else (
                    f"{check['change']:+.1f} [{check['change_ci'][0]:.1f}, {check['change_ci'][1]:.1f}]"
                    + (" significant drop" if check["dropped"] else ""))  # fmt: skip
                lines.append(f"| `{model}` | {name} | {check['score']:.1f} [{check['ci'][0]:.1f}, "
                             f"{check['ci'][1]:.1f}] | {change} |")  # fmt: skip
    if settings.show:
        lines += ["", f"## The first {min(settings.show, len(prompts))} prompts side by side", ""]
        lines += ["| prompt | " + " | ".join(f"`{Path(m).name or m}`" for m in models) + " |",
                  "|---|" + "---|" * len(models)]  # fmt: skip
        for i, prompt in enumerate(prompts[: settings.show]):
            row = [_cell(prompt.messages[-1]["content"])] + [_cell(answers[m][i][0].text) for m in models]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    return plt


PANEL_WIDTH = 4.2  # inches: a panel of horizontal bars, model names on the left
ASPECT = (0.6, 2.0)  # the figure's width / height stays in this range whatever the models and metrics


def eval_report_grid(metrics: int, models: int) -> tuple[int, int, float, float]:
    """(rows, columns, width, height in inches) of ``eval_report.png``: one panel per metric, one bar per model.
    A panel grows with its models (0.3 inch a bar), the columns (at most 4) are those whose figure is nearest to
    3:2, and a figure still outside :data:`ASPECT` is widened or heightened into it: the text keeps its size (9
    points) however many panels there are."""
    panel_height = 1.1 + 0.3 * models
    best = None
    for columns in range(1, min(metrics, 4) + 1):
        rows = -(-metrics // columns)
        width, height = columns * PANEL_WIDTH, rows * panel_height
        distance = abs(math.log(width / height / 1.5))
        if best is None or distance < best[0]:
            best = (distance, rows, columns, width, height)
    _, rows, columns, width, height = best
    width = max(width, ASPECT[0] * height)
    height = max(height, width / ASPECT[1])
    return rows, columns, width, height


def plot_eval(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """``eval_report.png``: :func:`draw_eval`'s figure."""
    figure = draw_eval(results)
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def draw_eval(results: dict[str, dict[str, Any]]) -> Any:
    """One panel per health metric, one horizontal bar per model, laid out by :func:`eval_report_grid`."""
    plt = _pyplot()
    models = list(results)
    keys = [key for key in HEALTH if any(key in metrics for metrics in results.values())]
    rows, columns, width, height = eval_report_grid(max(len(keys), 1), len(models))
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    labels = [_short(Path(m).name or m) for m in models]
    positions = range(len(models))[::-1]  # the first model on top, as in the tables
    for axis, key in zip(axes.flat, keys, strict=False):
        values = [results[m].get(key, 0.0) for m in models]
        axis.barh(positions, values, color="#1f77b4")
        axis.set_yticks(positions, labels, fontsize=9)
        axis.tick_params(axis="x", labelsize=9)
        axis.set_title(HEALTH[key], fontsize=10)
        axis.grid(axis="x", alpha=0.3)
        for position, value in zip(positions, values, strict=True):
            axis.annotate(f"{value:.3g}", (value, position), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=8)  # fmt: skip
        axis.margins(x=0.2)
    for axis in list(axes.flat)[len(keys) :]:
        axis.set_visible(False)
    figure.tight_layout()
    return figure


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def plot_win_rates(results: dict[str, dict[str, Any]], baseline: str, path: Path) -> Path:
    """Win rate against mean answer length, one point per model (raw: circle, LC: cross), with 95% intervals."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for key, marker, label in (("win_rate", "o", "win rate"), ("lc_win_rate", "x", "LC win rate")):
        xs, ys, errors = [], [], [[], []]
        for name, row in results.items():
            value = row.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            low, high = row.get(f"{key}_ci", [value, value])
            low, high = (low, high) if math.isfinite(low) and math.isfinite(high) else (value, value)
            xs.append(row["chars"])
            ys.append(value)
            errors[0].append(max(value - low, 0.0))
            errors[1].append(max(high - value, 0.0))
            if key == "win_rate":
                axis.annotate(Path(name).name or name, (row["chars"], value), textcoords="offset points",
                              xytext=(5, 5), fontsize=8)  # fmt: skip
        if xs:
            axis.errorbar(xs, ys, yerr=errors, fmt=marker, capsize=3, label=label)
    axis.axhline(50, color="grey", lw=0.8, ls="--")
    axis.set_xlabel("mean answer length (characters)")
    axis.set_ylabel(f"win rate against {Path(baseline).name or baseline} (%)")
    axis.legend(fontsize=8)
    axis.set_title("Win rate against length", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
