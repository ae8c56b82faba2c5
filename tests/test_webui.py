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
