"""LLaMA Board built in-process: SimPO is a stage, its widgets feed the run/preview handlers and the YAML."""

import pytest
from conftest import board_values, build_board


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


@pytest.fixture(scope="module")
def board():
    return build_board()


SIMPO_WIDGETS = [
    "simpo_beta",
    "simpo_margin_mode",
    "simpo_margin",
    "simpo_ftx",
    "simpo_label_smoothing",
    "simpo_loss_type",
]


def test_stage_dropdown_offers_simpo_with_pair_data(board) -> None:
    from llamafactory.extras.constants import STAGES_USE_PAIR_DATA, TRAINING_STAGES

    _, engine = board
    dropdown = engine.manager.get_elem_by_id("train.training_stage")
    assert "SimPO" in [choice[0] for choice in dropdown.choices]
    assert TRAINING_STAGES["SimPO"] == "simpo" and "simpo" in STAGES_USE_PAIR_DATA


def test_simpo_widgets_have_paper_ranges_and_every_locale(board) -> None:
    from llamafactory.webui.locales import LOCALES

    _, engine = board
    beta = engine.manager.get_elem_by_id("train.simpo_beta")
    assert beta.maximum >= 10 and beta.value == 2.0
    assert engine.manager.get_elem_by_id("train.simpo_margin").value == 0.5
    for name in [*SIMPO_WIDGETS, "simpo_tab"]:
        assert set(LOCALES[name]) == set(LOCALES["pref_beta"]), name


def test_simpo_widgets_are_inputs_of_run_preview_and_save(board) -> None:
    demo, engine = board
    widget_ids = {engine.manager.get_elem_by_id(f"train.{name}")._id for name in SIMPO_WIDGETS}
    handlers = {"preview_train", "run_train", "save_args"}
    seen = set()
    for block_fn in demo.fns.values():
        name = getattr(block_fn.fn, "__name__", "")
        if name in handlers:
            assert widget_ids <= {block._id for block in block_fn.inputs}, name
            seen.add(name)
    assert seen == handlers


def test_generated_arguments_for_a_simpo_run(board, tmp_path) -> None:
    _, engine = board
    data = board_values(
        engine,
        **{
            "top.model_path": "/models/tiny",
            "train.training_stage": "SimPO",
            "train.dataset": ["simpo_synthetic"],
            "train.output_dir": str(tmp_path),
            "train.simpo_beta": 2.5,
            "train.simpo_margin": 0.3,
            "train.simpo_ftx": 0.1,
            "train.ds_stage": "3",
        },
    )
    args = engine.runner._parse_train_args(data)
    expected = {
        "stage": "simpo", "pref_beta": 2.5, "simpo_gamma_beta_ratio": 0.3, "pref_ftx": 0.1,
        "simpo_label_smoothing": 0.0, "simpo_loss_type": "sigmoid",
    }  # fmt: skip
    assert {key: args[key] for key in expected} == expected
    assert "pref_loss" not in args and "simpo_gamma" not in args
    assert args["deepspeed"].endswith("ds_z3_config.json")

    data[engine.manager.get_elem_by_id("train.simpo_margin_mode")] = "gamma"
    args = engine.runner._parse_train_args(data)
    assert args["simpo_gamma"] == 0.3 and "simpo_gamma_beta_ratio" not in args


def test_dpo_arguments_are_the_hosts(board, tmp_path) -> None:
    _, engine = board
    data = board_values(engine, **{"train.training_stage": "DPO", "train.output_dir": str(tmp_path)})
    args = engine.runner._parse_train_args(data)
    assert args["stage"] == "dpo" and args["pref_beta"] == 0.1 and args["pref_loss"] == "sigmoid"
    assert not any(key.startswith("simpo_") for key in args)


def test_saved_ui_config_keeps_simpo_values(board, tmp_path, monkeypatch) -> None:
    _, engine = board
    monkeypatch.chdir(tmp_path)  # the host saves UI configs under ./llamaboard_config
    overrides = {
        "top.lang": "en", "top.model_name": "Llama-3-8B", "top.model_path": "/models/tiny",
        "train.training_stage": "SimPO", "train.dataset": ["simpo_synthetic"], "train.config_path": "simpo.yaml",
        "train.output_dir": "simpo_run",
        "train.simpo_beta": 10.0, "train.simpo_margin_mode": "gamma", "train.simpo_margin": 1.5,
        "train.simpo_ftx": 0.2, "train.simpo_label_smoothing": 0.1, "train.simpo_loss_type": "sigmoid",
    }  # fmt: skip
    saved = engine.runner.save_args(board_values(engine, **overrides))
    assert "simpo.yaml" in str(saved), saved
    loaded = engine.runner.load_args("en", "simpo.yaml")
    restored = {engine.manager.get_id_by_elem(elem): value for elem, value in loaded.items() if elem in
                engine.manager.get_elem_list()}  # fmt: skip
    for elem_id, value in overrides.items():
        if elem_id.startswith("train.simpo") or elem_id == "train.training_stage":
            assert restored[elem_id] == value, elem_id


def test_switching_the_margin_unit_converts_its_value() -> None:
    from simpo_plugin.host.webui import convert_margin

    assert convert_margin("gamma", 0.5, 2.5) == 1.25  # gamma/beta 0.5 at beta 2.5 is gamma 1.25
    assert convert_margin("gamma/beta", 1.25, 2.5) == 0.5
    assert convert_margin("gamma", 0.3, 0.0) == 0.3  # no beta yet: left as it is


def fire(demo, engine, elem_id: str, event: str, values: dict) -> dict:
    """Run the handlers that `event` of the element triggers, as gradio would, with inputs read from `values`
    (element id -> value; the rest at their defaults); returns element id -> what each handler gave it."""
    elem = engine.manager.get_elem_by_id(elem_id)
    given = {}
    for block_fn in demo.fns.values():
        if (elem._id, event) not in [(getattr(target, "_id", target), name) for target, name in block_fn.targets]:
            continue
        ids = [engine.manager.get_id_by_elem(block) if block in engine.manager.get_elem_list() else block
               for block in block_fn.inputs]  # fmt: skip
        result = block_fn.fn(*(values.get(i, getattr(block, "value", None)) for i, block in
                               zip(ids, block_fn.inputs, strict=True)))  # fmt: skip
        outputs = block_fn.outputs
        result = result if isinstance(result, (list, tuple)) and len(outputs) > 1 else [result]
        for block, update in zip(outputs, result, strict=True):
            key = engine.manager.get_id_by_elem(block) if block in engine.manager.get_elem_list() else block
            given.setdefault(key, []).append(update)
    return given


def _visible(updates: list) -> bool | None:
    return next((u["visible"] for u in updates if isinstance(u, dict) and "visible" in u), None)


def _value(updates: list | None):
    return next((u["value"] for u in updates or [] if isinstance(u, dict) and "value" in u), "unchanged")


def test_choosing_simpo_brings_its_learning_rate_and_epochs_and_another_stage_the_hosts(board) -> None:
    from simpo_plugin.train.hparams import BOARD_HOST_VALUES

    demo, engine = board
    chosen = fire(demo, engine, "train.training_stage", "input", {"train.training_stage": "SimPO"})
    assert _value(chosen.get("train.learning_rate")) == BOARD_HOST_VALUES["learning_rate"] == "1e-6"
    assert _value(chosen.get("train.num_train_epochs")) == "1.0"
    simpo_values = {"train.learning_rate": "1e-6", "train.num_train_epochs": "1.0"}
    back = fire(demo, engine, "train.training_stage", "input", {"train.training_stage": "DPO", **simpo_values})
    assert _value(back.get("train.learning_rate")) == "5e-5" and _value(back.get("train.num_train_epochs")) == "3.0"


def test_choosing_a_stage_keeps_the_fields_the_user_changed(board) -> None:
    demo, engine = board
    changed = {"train.learning_rate": "2e-6", "train.num_train_epochs": "2.0"}
    for label in ("SimPO", "DPO", "SFT"):
        given = fire(demo, engine, "train.training_stage", "input", {"train.training_stage": label, **changed})
        assert _value(given.get("train.learning_rate")) == "unchanged", label
        assert _value(given.get("train.num_train_epochs")) == "unchanged", label
    given = fire(demo, engine, "train.training_stage", "input", {"train.training_stage": "SimPO", **changed,
                                                                 "train.num_train_epochs": "3.0"})  # fmt: skip
    assert _value(given.get("train.learning_rate")) == "unchanged"  # its own field, set by the user, stays
    assert _value(given.get("train.num_train_epochs")) == "1.0"  # the host's default becomes SimPO's


def test_the_dataset_list_offers_the_bundled_demo_for_simpo_only(board, tmp_path) -> None:
    import json

    demo, engine = board
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"mine_pairs": {"file_name": "a.json", "ranking": True}, "mine_sft": {"file_name": "b.json"}}))  # fmt: skip

    def listed(label: str, dataset_dir: str) -> list[str]:
        updates = fire(demo, engine, "train.dataset", "focus",
                       {"train.training_stage": label, "train.dataset_dir": dataset_dir})["train.dataset"]  # fmt: skip
        return [choice[0] if isinstance(choice, tuple) else choice for choice in updates[-1].choices]

    assert listed("SimPO", str(tmp_path)) == ["mine_pairs", "simpo_demo"]
    assert listed("SimPO", str(tmp_path / "missing")) == ["simpo_demo"]  # the host's default `data` may not exist
    assert listed("DPO", str(tmp_path)) == ["mine_pairs"]  # only SimPO finds the bundled folder by name
    assert listed("Supervised Fine-Tuning", str(tmp_path)) == ["mine_sft"]


def test_simpo_hides_the_ppo_and_other_unused_host_widgets_and_other_stages_show_them(board) -> None:
    demo, engine = board
    unused = ["reward_model", "ppo_score_norm", "ppo_whiten_rewards", "packing", "neat_packing",
              "train_on_prompt", "mask_history", "pref_beta", "pref_ftx", "pref_loss"]  # fmt: skip
    simpo = fire(demo, engine, "train.training_stage", "change", {"train.training_stage": "SimPO"})
    assert {name: _visible(simpo[f"train.{name}"]) for name in unused} == dict.fromkeys(unused, False)
    assert _visible(simpo["train.simpo_tab"]) is True
    for label in ("DPO", "PPO", "Supervised Fine-Tuning"):
        other = fire(demo, engine, "train.training_stage", "change", {"train.training_stage": label})
        assert {name: _visible(other[f"train.{name}"]) for name in unused} == dict.fromkeys(unused, True), label
        assert _visible(other["train.simpo_tab"]) is False


def test_simpo_widgets_sit_three_to_a_row_with_room_for_their_labels(board) -> None:
    import gradio as gr

    _, engine = board
    accordion = engine.manager.get_elem_by_id("train.simpo_tab")
    known = set(engine.manager.get_elem_list())

    def widgets(block) -> list[str]:  # gradio puts a row's form fields inside a Form of their own
        if block in known:
            return [engine.manager.get_id_by_elem(block)]
        return [name for child in getattr(block, "children", []) for name in widgets(child)]

    placed = [widgets(row) for row in accordion.children if isinstance(row, gr.Row)]
    assert placed == [["train.simpo_beta", "train.simpo_margin_mode", "train.simpo_margin"],
                      ["train.simpo_loss_type", "train.simpo_label_smoothing", "train.simpo_ftx"]]  # fmt: skip
    assert all(engine.manager.get_elem_by_id(f"train.{name}").min_width >= 240 for name in SIMPO_WIDGETS)


def test_simpo_widget_defaults_are_the_stages() -> None:
    from simpo_plugin.host.webui import build_simpo_widgets
    from simpo_plugin.train.hparams import DEFAULT_BETA, DEFAULT_GAMMA_BETA_RATIO

    widgets = build_simpo_widgets()
    assert (widgets["simpo_beta"].value, widgets["simpo_margin"].value) == (DEFAULT_BETA, DEFAULT_GAMMA_BETA_RATIO)
    assert widgets["simpo_ftx"].value == 0.0 and widgets["simpo_margin_mode"].value == "gamma/beta"
