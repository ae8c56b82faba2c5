"""Each host touch-point patches idempotently, unpatches exactly, and degrades to a warning when missing."""

import types
from typing import get_args

import llamafactory.hparams.finetuning_args as finetuning_args_module
import llamafactory.train.tuner as tuner
import pytest
from llamafactory.hparams import FinetuningArguments

from simpo_plugin.host import hooks, patches
from simpo_plugin.host.dispatch import CARRIER_STAGE, wrap_carrier_run, wrap_get_train_args
from simpo_plugin.host.registry import Stage, StageRegistry


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


def test_tuner_patch_is_idempotent_and_reversible() -> None:
    patched_get, patched_run = tuner.get_train_args, tuner.run_dpo
    assert hasattr(patched_get, "__simpo_original__")
    assert patches.patch_tuner(tuner) is False
    try:
        assert patches.unpatch_tuner(tuner) is True
        assert tuner.get_train_args is patched_get.__simpo_original__
        assert tuner.run_dpo is patched_run.__simpo_original__
        assert patches.unpatch_tuner(tuner) is False
    finally:
        assert patches.patch_tuner(tuner) is True
    assert hasattr(tuner.get_train_args, "__simpo_original__")


def test_stage_choices_patch_is_reversible() -> None:
    def choices() -> tuple:
        return get_args(FinetuningArguments.__annotations__["stage"])

    assert "simpo" in choices() and "dpo" in choices()
    assert patches.patch_stage_choices(finetuning_args_module) is False
    try:
        assert patches.unpatch_stage_choices(finetuning_args_module) is True
        assert choices() == ("pt", "sft", "rm", "ppo", "dpo", "kto")
    finally:
        assert patches.patch_stage_choices(finetuning_args_module) is True
    assert "simpo" in choices()


def test_missing_host_symbol_warns_once_and_leaves_module(capsys: pytest.CaptureFixture[str]) -> None:
    fake = types.ModuleType("llamafactory.train.tuner")
    fake.get_train_args = lambda args=None: None
    with pytest.raises(patches.HostIncompatibleError, match="run_dpo"):
        patches.patch_tuner(fake)

    monkey = pytest.MonkeyPatch()
    monkey.setattr("simpo_plugin.notice._WARNED", False)
    try:
        hooks._guarded(patches.patch_tuner)(fake)  # must not raise
        hooks._guarded(patches.patch_tuner)(fake)
    finally:
        monkey.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "simpo-plugin" in err[0] and "run_dpo" in err[0] and "llamafactory>=0.9.4" in err[0]
    assert not hasattr(fake.get_train_args, "__simpo_original__")


def test_carrier_dispatches_registered_stage_and_passes_others_through() -> None:
    """A toy stage rides the carrier branch and sees its own name again; other stages reach the original."""
    calls = []
    registry = StageRegistry()
    registry.register(
        Stage(
            name="toy",
            run=lambda *a: calls.append(("toy", a[3].stage)),
            args_class=type("ToyArgs", (), {"__dataclass_fields__": {}}),
            resolve=lambda *a: "resolved",
            label="Toy",
        )
    )
    run = wrap_carrier_run(lambda *a: calls.append(("dpo", a[3].stage)), registry)
    plugin_args = types.SimpleNamespace(stage=CARRIER_STAGE, plugin_stage="toy")
    run(None, None, None, plugin_args, [])
    run(None, None, None, types.SimpleNamespace(stage="dpo"), [])
    assert calls == [("toy", "toy"), ("dpo", "dpo")]


def test_get_train_args_wrapper_relabels_only_registered_stages() -> None:
    seen = []

    def original(raw):
        seen.append(raw)
        return None, None, None, types.SimpleNamespace(stage=raw["stage"]), None

    from dataclasses import dataclass

    @dataclass
    class ToyArgs:
        toy_knob: int = 1

    registry = StageRegistry()
    registry.register(Stage("toy", run=print, args_class=ToyArgs, resolve=lambda a, keys, *rest: (a, keys), label="T"))
    wrapped = wrap_get_train_args(original, registry)

    finetuning_args = wrapped({"stage": "toy", "toy_knob": 3, "learning_rate": 1})[3]
    assert seen[-1] == {"stage": "toy", "learning_rate": 1}  # the host never sees the stage's own keys
    assert finetuning_args.stage == CARRIER_STAGE and finetuning_args.plugin_stage == "toy"
    assert finetuning_args.stage_args == (ToyArgs(toy_knob=3), {"stage", "toy_knob", "learning_rate"})

    finetuning_args = wrapped({"stage": "sft", "toy_knob": 3})[3]
    assert seen[-1] == {"stage": "sft", "toy_knob": 3} and finetuning_args.stage == "sft"


def test_launcher_patch_is_idempotent_reversible_and_leaves_other_stages_to_the_host(monkeypatch, tmp_path) -> None:
    import subprocess
    import sys

    import llamafactory.launcher as launcher

    from simpo_plugin.host.launcher import LauncherSubprocess

    assert isinstance(launcher.subprocess, LauncherSubprocess) and launcher.subprocess.PIPE == subprocess.PIPE
    assert patches.patch_launcher(launcher) is False
    try:
        assert patches.unpatch_launcher(launcher) is True and launcher.subprocess is subprocess
    finally:
        assert patches.patch_launcher(launcher) is True
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append(args) or "host's run")
    for stage, host in (("dpo", True), ("simpo", False)):
        (tmp_path / "c.yaml").write_text(f"stage: {stage}\n")
        monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(tmp_path / "c.yaml")])
        code = "import sys; sys.exit(7)"
        result = launcher.subprocess.run([sys.executable, "-c", code], env=None, check=True)
        assert (result == "host's run") is host
        if not host:  # the plugin's runner: no CalledProcessError, the child's own code
            assert result.returncode == 7


def test_dataset_list_patch_is_idempotent_and_reversible() -> None:
    import llamafactory.webui.components.train as train_tab
    from llamafactory.webui import control

    patched = train_tab.list_datasets
    assert patched.__simpo_original__ is control.list_datasets
    assert patches.patch_dataset_list(train_tab) is False
    try:
        assert patches.unpatch_dataset_list(train_tab) is True
        assert train_tab.list_datasets is control.list_datasets
        assert patches.unpatch_dataset_list(train_tab) is False
    finally:
        assert patches.patch_dataset_list(train_tab) is True
    assert train_tab.list_datasets.__simpo_original__ is control.list_datasets
