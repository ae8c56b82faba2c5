"""The figures read as they should: legend labels name what is drawn, warning names never overlap, lines that lie
on each other still show, and eval_report.png keeps a readable shape and text size at any size of the results."""

import itertools

import pytest


pytest.importorskip("matplotlib")


def history(warnings: dict[int, list[str]] | None = None) -> list[dict]:
    """64 steps: train rows every 4, eval every 16, probes every 8 with two health metrics that coincide."""
    rows = []
    for step in range(4, 65, 4):
        rows.append({"step": step, "loss": 1.0 / step, "rewards/accuracies": min(1.0, 0.5 + step / 32),
                     "logps/chosen": -5.0, "logps/rejected": -6.0 - step / 64})  # fmt: skip
        if step % 16 == 0:
            rows.append({"step": step, "eval_loss": 1.2 / step, "eval_logps/chosen": -5.1})
    for step in range(0, 65, 8):
        rows.append({"step": step, "probe/length": 20.0, "probe/eos_rate": 1.0, "probe/distinct_2": 1.0,
                     "probe/repeat_4": 0.0, "probe/duplicate_rate": 0.0})  # fmt: skip
    for step, names in (warnings or {}).items():
        rows.append({"step": step, **{f"warning/{name}": 1.0 for name in names}})
    return rows


def panel(rows: list[dict], name: str):
    from simpo_plugin.train.plots import PANELS, draw_panel

    title, keys = PANELS[name]
    return draw_panel(rows, title, keys, "run")


def labels(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def warning_boxes(figure) -> list:
    from simpo_plugin.train.plots import WARNING_COLOR

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return [text.get_window_extent(renderer) for text in figure.axes[0].texts if text.get_color() == WARNING_COLOR]


def test_legend_labels_say_train_and_eval_without_eval_train() -> None:
    assert labels(panel(history(), "loss")) == ["train (smoothed)", "eval"]
    assert labels(panel(history(), "logps")) == ["train chosen (smoothed)", "eval chosen", "train rejected (smoothed)"]
    assert labels(panel(history(), "accuracies")) == ["train (smoothed)"]
    assert labels(panel(history(), "probe_length")) == ["length"]


@pytest.mark.parametrize(
    "warnings",
    [
        {50: ["duplicates", "short_answers"]},  # the demo's: two at one step
        {48: ["eos_drop"], 50: ["duplicates", "short_answers"], 52: ["repetition"]},  # close steps
        {2: ["likelihood_displacement"], 3: ["zero_loss", "length_drift"], 62: ["eos_drop"], 64: ["repetition"]},
    ],
)
def test_warning_names_never_overlap(warnings: dict[int, list[str]]) -> None:
    for name in ("loss", "probe_health"):
        boxes = warning_boxes(panel(history(warnings), name))
        assert len(boxes) == sum(map(len, warnings.values()))
        for first, second in itertools.combinations(boxes, 2):
            assert not first.overlaps(second), (name, first, second)


def test_probe_health_lines_that_coincide_still_differ_in_style() -> None:
    lines = [line for line in panel(history(), "probe_health").axes[0].get_lines() if line.get_label()[0] != "_"]
    assert len(lines) == 4
    styles = [(line.get_linestyle(), line.get_marker(), line.get_linewidth()) for line in lines]
    for attribute in zip(*styles, strict=True):
        assert len(set(attribute)) == 4, styles  # line style, marker and width each distinct
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True)  # drawn widest first: a line on top of another leaves its edges


@pytest.mark.parametrize(("models", "metrics"), [(2, 8), (1, 1), (2, 1), (12, 8), (40, 3), (3, 5)])
def test_eval_report_keeps_a_readable_shape_and_text(models: int, metrics: int) -> None:
    from simpo_plugin.evaluation.report import HEALTH, draw_eval

    keys = list(HEALTH)[:metrics]
    results = {f"saves/model-{i}": {key: 0.1 * (i + 1) for key in keys} for i in range(models)}
    figure = draw_eval(results)
    width, height = figure.get_size_inches()
    assert 0.6 <= width / height <= 2.0 + 1e-9, (width, height)
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert len(panels) == metrics
    figure.canvas.draw()
    for axis in panels:
        ticks = axis.get_yticklabels()
        heights = {tick.get_text(): tick.get_position()[1] for tick in ticks}
        assert sorted(heights, key=heights.get, reverse=True) == [f"model-{i}" for i in range(models)]  # first on top
        assert min(tick.get_fontsize() for tick in [*ticks, *axis.get_xticklabels()]) >= 8
        assert axis.title.get_fontsize() >= 9
        box = axis.get_window_extent()  # each panel at least 2 x 0.9 inches at the figure's dpi
        assert box.width >= 2 * figure.dpi and box.height >= 0.9 * figure.dpi, (box.width, box.height)
