"""LLaMA Board (web UI) support: SimPO's widgets, their locale strings, and the widget-to-argument mapping.

The host builds the Train tab in one function whose event handlers read a set of inputs captured at its start
(``engine.manager.get_base_elems()``), so :func:`create_train_tab` creates the SimPO widgets unrendered, adds them
to that base set for the duration of the call, then renders them inside the host's RLHF accordion, in the rows
the stage's :class:`StageUI` names. Choosing a plugin stage in the *Stage* dropdown then:

- shows its accordion and hides the host widgets it does not read (its ``hides`` and every host widget of a key
  the stage refuses or ignores: PPO's reward model and reward switches, packing, ...); any other stage shows them;
- sets the host fields it has its own defaults for (``host_values``: SimPO's learning rate and epochs) when the
  user left them at the host's defaults, and puts the host's defaults back when another stage is chosen;
- offers its bundled datasets (``datasets``) in the dataset list beside those of ``dataset_dir``
  (:func:`wrap_list_datasets`).

Nothing here imports gradio at module level: the stage record imports this module while the host is being
imported.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


MARGIN_MODES = ("gamma/beta", "gamma")


def _locale(en: tuple[str, str], ru: tuple[str, str], zh: tuple[str, str], ko: tuple[str, str], ja: tuple[str, str]):
    return {lang: {"label": label, "info": info} for lang, (label, info) in zip(
        ("en", "ru", "zh", "ko", "ja"), (en, ru, zh, ko, ja), strict=True)}  # fmt: skip


SIMPO_LOCALES: dict[str, dict[str, dict[str, str]]] = {
    "simpo_tab": {lang: {"label": "SimPO"} for lang in ("en", "ru", "zh", "ko", "ja")},
    "simpo_beta": _locale(
        ("SimPO beta", "Reward scale beta; the paper uses 2-10."),
        ("SimPO бета", "Масштаб награды beta; в статье 2-10."),
        ("SimPO beta", "奖励缩放系数 beta，论文取值 2-10。"),
        ("SimPO 베타", "보상 스케일 beta; 논문은 2-10을 사용합니다."),
        ("SimPO beta", "報酬のスケール beta。論文では 2-10。"),
    ),
    "simpo_margin_mode": _locale(
        ("Margin given as", "gamma/beta (official configs) or the absolute gamma."),
        ("Отступ задан как", "gamma/beta (официальные конфиги) или абсолютная gamma."),
        ("目标间隔形式", "gamma/beta（官方配置）或绝对值 gamma。"),
        ("마진 형식", "gamma/beta (공식 설정) 또는 절대값 gamma."),
        ("マージンの指定", "gamma/beta（公式設定）または絶対値 gamma。"),
    ),
    "simpo_margin": _locale(
        ("Target margin", "Value of gamma/beta (paper: 0.1-0.8) or of gamma."),
        ("Целевой отступ", "Значение gamma/beta (в статье 0.1-0.8) или gamma."),
        ("目标间隔", "gamma/beta（论文 0.1-0.8）或 gamma 的取值。"),
        ("목표 마진", "gamma/beta 값 (논문: 0.1-0.8) 또는 gamma 값."),
        ("目標マージン", "gamma/beta（論文では 0.1-0.8）または gamma の値。"),
    ),
    "simpo_ftx": _locale(
        ("SFT weight", "Weight of an NLL term on the chosen responses; 0 is pure SimPO."),
        ("Вес SFT", "Вес NLL-члена для выбранных ответов; 0 - чистый SimPO."),
        ("SFT 权重", "对 chosen 回复的 NLL 项权重，0 为纯 SimPO。"),
        ("SFT 가중치", "선택된 응답의 NLL 항 가중치; 0은 순수 SimPO."),
        ("SFT 重み", "chosen 応答の NLL 項の重み。0 で純粋な SimPO。"),
    ),
    "simpo_label_smoothing": _locale(
        ("Label smoothing", "Probability that a preference label is flipped, in [0, 0.5); sigmoid loss only."),
        ("Сглаживание меток", "Вероятность перевёрнутой метки предпочтения, [0, 0.5); только sigmoid."),
        ("标签平滑", "偏好标签被翻转的概率，取值 [0, 0.5)，仅用于 sigmoid 损失。"),
        ("라벨 스무딩", "선호 라벨이 뒤집힐 확률 [0, 0.5); sigmoid 손실 전용."),
        ("ラベル平滑化", "選好ラベルが反転する確率 [0, 0.5)。sigmoid 損失のみ。"),
    ),
    "simpo_loss_type": _locale(
        ("SimPO loss", "sigmoid (paper) or hinge."),
        ("Функция потерь SimPO", "sigmoid (статья) или hinge."),
        ("SimPO 损失", "sigmoid（论文）或 hinge。"),
        ("SimPO 손실", "sigmoid (논문) 또는 hinge."),
        ("SimPO 損失", "sigmoid（論文）または hinge。"),
    ),
}


def build_simpo_widgets() -> dict[str, Any]:
    """The SimPO controls, unrendered, keyed by the names the host's manager and locales use."""
    import gradio as gr

    wide = {"render": False, "min_width": 260}  # a slider's label, info line and number box on one line
    return {
        "simpo_beta": gr.Slider(minimum=0.1, maximum=20.0, value=2.0, step=0.1, **wide),
        "simpo_margin_mode": gr.Dropdown(choices=list(MARGIN_MODES), value="gamma/beta", **wide),
        "simpo_margin": gr.Slider(minimum=0.0, maximum=10.0, value=0.5, step=0.01, **wide),
        "simpo_loss_type": gr.Dropdown(choices=["sigmoid", "hinge"], value="sigmoid", **wide),
        "simpo_label_smoothing": gr.Slider(minimum=0.0, maximum=0.49, value=0.0, step=0.01, **wide),
        "simpo_ftx": gr.Slider(minimum=0.0, maximum=10.0, value=0.0, step=0.01, **wide),
    }


def simpo_train_args(get: Callable[[str], Any]) -> dict[str, Any]:
    """YAML keys of a SimPO run from the widget values (``get("train.<name>")``)."""
    margin_key = "simpo_gamma" if get("train.simpo_margin_mode") == "gamma" else "simpo_gamma_beta_ratio"
    return {
        "pref_beta": get("train.simpo_beta"),
        margin_key: get("train.simpo_margin"),
        "pref_ftx": get("train.simpo_ftx"),
        "simpo_label_smoothing": get("train.simpo_label_smoothing"),
        "simpo_loss_type": get("train.simpo_loss_type"),
    }


def convert_margin(mode: str, margin: float, beta: float) -> float:
    """The margin's value in the unit just chosen: gamma = (gamma/beta) x beta, and back."""
    if not beta:
        return margin
    return round(margin * beta if mode == "gamma" else margin / beta, 6)


def wire_simpo_widgets(widgets: dict[str, Any]) -> None:
    """Switching the margin's unit converts its value (a user's switch only: a loaded config keeps its numbers)."""
    widgets["simpo_margin_mode"].input(
        convert_margin,
        [widgets["simpo_margin_mode"], widgets["simpo_margin"], widgets["simpo_beta"]],
        [widgets["simpo_margin"]],
        queue=False,
    )


@dataclass(frozen=True)
class StageUI:
    """What a plugin stage shows in LLaMA Board."""

    build: Callable[[], dict[str, Any]]
    to_args: Callable[[Callable[[str], Any]], dict[str, Any]]
    locales: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    accordion: str = "simpo_tab"
    hides: tuple[str, ...] = ()  # host widgets that do not apply while this stage is chosen (besides the widgets
    # of the keys the stage record refuses or ignores, which are hidden too)
    wire: Callable[[dict[str, Any]], None] | None = None  # events between the stage's own widgets
    rows: tuple[tuple[str, ...], ...] = ()  # the widgets' rows in the accordion; () = all in one row
    host_values: Mapping[str, Any] = field(default_factory=dict)  # host widget -> its value under this stage
    datasets: Callable[[], dict[str, dict]] | None = None  # dataset_info entries offered beside dataset_dir's


# The host's DPO beta and ftx weight: SimPO has its own beta and SFT weight (its loss type is a refused key).
# Three controls a row, the margin beside beta and its unit; the stage record adds host_values and datasets.
SIMPO_UI = StageUI(build=build_simpo_widgets, to_args=simpo_train_args, locales=SIMPO_LOCALES,
                   hides=("pref_beta", "pref_ftx", "pref_loss"), wire=wire_simpo_widgets,
                   rows=(("simpo_beta", "simpo_margin_mode", "simpo_margin"),
                         ("simpo_loss_type", "simpo_label_smoothing", "simpo_ftx")))  # fmt: skip


def hidden_host_widgets(stage: Any, host_widgets: Any) -> set[str]:
    """The host widgets ``stage`` hides: its UI's ``hides`` and those of the keys it refuses or ignores."""
    keys = {*stage.ui.hides, *stage.rejected_keys, *stage.ignored_keys}
    return {name for name in keys if name in host_widgets}


def stage_values(label: str, current: Mapping[str, Any], host: Mapping[str, Any], stages: list) -> dict[str, Any]:
    """The host fields to set when the stage ``label`` is chosen: a field still at the host's default or at a
    plugin stage's value takes the chosen stage's value (the host's default for a host stage); a field the user
    changed is left out."""
    own = {stage.label: stage.ui.host_values for stage in stages}.get(label, {})
    updates = {}
    for name, value in current.items():
        ours = {stage.ui.host_values[name] for stage in stages if name in stage.ui.host_values}
        target = own.get(name, host[name])
        if (value == host[name] or value in ours) and value != target:
            updates[name] = target
    return updates


def wrap_list_datasets(original: Callable, stages: list) -> Callable:
    """The host's dataset list for the Train tab, plus a plugin stage's bundled datasets of the right kind
    (``ranking`` as the stage's pair-data flag, as the host filters dataset_info.json) for that stage."""
    import functools

    import gradio as gr

    by_label = {stage.label: stage for stage in stages if stage.ui.datasets is not None}

    @functools.wraps(original)
    def list_datasets(*args: Any, **kwargs: Any) -> Any:
        listed = original(*args, **kwargs)
        stage = by_label.get(args[1] if len(args) > 1 else kwargs.get("training_stage"))
        if stage is None:
            return listed
        names = [choice[0] if isinstance(choice, tuple) else choice for choice in listed.choices or []]
        extra = [name for name, info in stage.ui.datasets().items()
                 if info.get("ranking", False) == stage.uses_pair_data and name not in names]  # fmt: skip
        return gr.Dropdown(choices=names + extra) if extra else listed

    return list_datasets


def wrap_create_train_tab(original: Callable, stages: list) -> Callable:
    """The host's Train tab plus, for each plugin stage with a UI, an accordion of its widgets."""
    import functools

    import gradio as gr

    @functools.wraps(original)
    def create_train_tab(engine: Any) -> dict[str, Any]:
        per_stage = [(stage, stage.ui.build()) for stage in stages]
        widgets = {name: widget for _, built in per_stage for name, widget in built.items()}
        manager = engine.manager
        base_elems = manager.get_base_elems
        manager.get_base_elems = lambda: base_elems() | set(widgets.values())
        try:
            elem_dict = original(engine)
        finally:
            del manager.get_base_elems  # the instance attribute shadowed the class method

        with elem_dict["rlhf_tab"]:
            for stage, built in per_stage:
                with gr.Accordion(open=True, visible=False) as accordion:  # shown while its stage is chosen
                    for row in stage.ui.rows or (tuple(built),):
                        with gr.Row():
                            for name in row:
                                built[name].render()
                elem_dict[stage.ui.accordion] = accordion
                if stage.ui.wire is not None:
                    stage.ui.wire(built)
        elem_dict.update(widgets)

        labels = [stage.label for stage in stages]
        elem_dict["training_stage"].change(  # each plugin stage's widgets show while it is chosen, and only then
            lambda label: (
                [gr.Accordion(open=True) if label in labels else gr.Accordion()]
                + [gr.update(visible=label == own) for own in labels]
            ),
            [elem_dict["training_stage"]],
            [elem_dict["rlhf_tab"], *(elem_dict[stage.ui.accordion] for stage in stages)],
            queue=False,
        )
        hidden_by: dict[str, set[str]] = {}  # host widget -> labels of the stages that hide it
        for stage in stages:
            for name in hidden_host_widgets(stage, elem_dict.keys() - widgets.keys()):
                hidden_by.setdefault(name, set()).add(stage.label)
        if hidden_by:
            names = sorted(hidden_by)
            elem_dict["training_stage"].change(  # a plugin stage hides the host widgets it ignores; others show them
                lambda label: [gr.update(visible=label not in hidden_by[name]) for name in names],
                [elem_dict["training_stage"]],
                [elem_dict[name] for name in names],
                queue=False,
            )
        _wire_host_values(elem_dict, stages)
        return elem_dict

    return create_train_tab


def _wire_host_values(elem_dict: dict[str, Any], stages: list) -> None:
    """A user's choice of stage (``.input``: a loaded config keeps its numbers) brings that stage's host values."""
    import gradio as gr

    names = sorted({name for stage in stages for name in stage.ui.host_values if name in elem_dict})
    if not names:
        return
    host = {name: elem_dict[name].value for name in names}  # the host's defaults, as built

    def choose_stage(label: str, *current: Any) -> list:
        updates = stage_values(label, dict(zip(names, current, strict=True)), host, stages)
        return [gr.update(value=updates[name]) if name in updates else gr.update() for name in names]

    elem_dict["training_stage"].input(
        choose_stage, [elem_dict["training_stage"], *(elem_dict[name] for name in names)],
        [elem_dict[name] for name in names], queue=False,
    )  # fmt: skip
