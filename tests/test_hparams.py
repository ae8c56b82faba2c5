"""SimPO keys are parsed by the host's own `get_train_args` (as the tuner sees it) with the paper's defaults."""

from pathlib import Path
from typing import Any

import pytest
from llamafactory.train import tuner

from simpo_plugin.errors import SimPOArgumentError
from simpo_plugin.train.hparams import SimPOConfig


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


def parse(tmp_path: Path, **keys: Any):
    args = {
        "model_name_or_path": str(tmp_path / "model"),
        "stage": "simpo",
        "do_train": True,
        "dataset": "any",
        "template": "default",
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
    }
    args.update(keys)
    return tuner.get_train_args(args)


def test_defaults_are_the_papers(tmp_path: Path) -> None:
    _, _, _, finetuning_args, _ = parse(tmp_path)
    assert finetuning_args.stage_args == SimPOConfig(beta=2.0, gamma=1.0)
    assert finetuning_args.pref_beta == 2.0 and finetuning_args.simpo_gamma == 1.0
    assert finetuning_args.use_ref_model is False
    assert finetuning_args.plugin_stage == "simpo"
    config = finetuning_args.stage_args
    assert (config.lean_logps, config.prefix_sharing, config.padding_free, config.logps_chunk_size) == (
        True, True, False, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "beta", "gamma"),
    [
        ({"pref_beta": 0.1}, 0.1, 0.05),  # an explicit value always wins, even the host's DPO default
        ({"pref_beta": 10.0, "simpo_gamma_beta_ratio": 0.3}, 10.0, 3.0),
        ({"pref_beta": 2.5, "simpo_gamma": 1.4}, 2.5, 1.4),
        ({"simpo_gamma": 0.0}, 2.0, 0.0),
    ],
)
def test_user_values_win(tmp_path: Path, keys: dict, beta: float, gamma: float) -> None:
    config = parse(tmp_path, **keys)[3].stage_args
    assert config.beta == pytest.approx(beta) and config.gamma == pytest.approx(gamma)
    assert config.gamma_beta_ratio == pytest.approx(gamma / beta)


def test_loss_options_and_sft_weight(tmp_path: Path) -> None:
    config = parse(tmp_path, simpo_loss_type="hinge", pref_ftx=0.3)[3].stage_args
    assert (config.loss_type, config.sft_weight, config.label_smoothing) == ("hinge", 0.3, 0.0)
    config = parse(tmp_path, simpo_label_smoothing=0.1)[3].stage_args
    assert (config.loss_type, config.label_smoothing) == ("sigmoid", 0.1)


def test_command_line_flags(tmp_path: Path) -> None:
    argv = ["--model_name_or_path", str(tmp_path), "--stage", "simpo", "--do_train", "--dataset", "any"]
    argv += ["--output_dir", str(tmp_path / "o"), "--simpo_gamma_beta_ratio", "0.8", "--pref_beta=2.5"]
    config = tuner.get_train_args(argv)[3].stage_args
    assert config.beta == 2.5 and config.gamma == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"pref_beta": 0.0}, "pref_beta"),
        ({"pref_beta": -1.0}, "pref_beta"),
        ({"simpo_gamma": -0.5}, "simpo_gamma"),
        ({"simpo_gamma_beta_ratio": -0.1}, "simpo_gamma_beta_ratio"),
        ({"simpo_gamma": 0.5, "simpo_gamma_beta_ratio": 0.5}, "simpo_gamma_beta_ratio"),
        ({"simpo_label_smoothing": 0.5}, "simpo_label_smoothing"),
        ({"simpo_label_smoothing": -0.1}, "simpo_label_smoothing"),
        ({"simpo_label_smoothing": 0.1, "simpo_loss_type": "hinge"}, "simpo_label_smoothing"),
        ({"simpo_loss_type": "ipo"}, "simpo_loss_type"),
        ({"pref_ftx": -1.0}, "pref_ftx"),
        ({"simpo_logps_chunk_size": 0}, "simpo_logps_chunk_size"),
        ({"ref_model": "some/model"}, "ref_model"),
        ({"pref_loss": "sigmoid"}, "pref_loss"),
        ({"dpo_label_smoothing": 0.1}, "dpo_label_smoothing"),
        ({"ld_alpha": 0.5}, "ld_alpha"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, keys: dict, named: str) -> None:
    with pytest.raises(SimPOArgumentError, match=f"`{named}`"):
        parse(tmp_path, **keys)


def test_simpo_keys_are_rejected_outside_simpo(tmp_path: Path) -> None:
    """Other stages are parsed by the untouched host parser, which rejects unknown keys."""
    with pytest.raises(ValueError, match="simpo_gamma_beta_ratio"):
        parse(tmp_path, stage="dpo", simpo_gamma_beta_ratio=0.5)


def test_dpo_keeps_host_defaults(tmp_path: Path) -> None:
    _, _, _, finetuning_args, _ = parse(tmp_path, stage="dpo")
    assert finetuning_args.stage == "dpo" and finetuning_args.pref_beta == 0.1
    assert not hasattr(finetuning_args, "plugin_stage")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_simpo_keys_after_the_hosts(flag: str) -> None:
    """`llamafactory-cli train --stage simpo --help`: the host's help, then every SimPO key with its help text."""
    import textwrap
    from dataclasses import fields

    from conftest import BIN_DIR, cli_env, run_command

    from simpo_plugin.train.hparams import SimPOArguments

    result = run_command([str(BIN_DIR / "llamafactory-cli"), "train", "--stage", "simpo", flag], Path.cwd(), cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    section = out.index("Keys that `stage: simpo` adds")
    assert 0 < out.index("--model_name_or_path") < out.index("--pref_beta") < section
    ours = out[section:]
    flat = " ".join(ours.split())
    for field in fields(SimPOArguments):
        assert f"--{field.name}" in ours, field.name
        words = " ".join(field.metadata["help"].split())
        assert textwrap.shorten(words, 60, placeholder="") in flat, field.name
    host_part = " ".join(out[:section].split())
    assert "SimPO's beta, the reward scale (the paper uses 2-10) (`stage: simpo`) (default: 2.0)" in host_part
    assert "(2 x 0.5 by default) (`stage: simpo`) (default: 1.0)" in host_part  # gamma as the stage resolves it
    assert "--pref_loss" not in out[:section] and "--ld_alpha" not in out[:section]  # refused keys: not offered
    assert "Host keys that `stage: simpo` refuses" in ours and "--pref_loss: SimPO has its own loss switch" in ours
    host = run_command([str(BIN_DIR / "llamafactory-cli"), "train", "--stage", "dpo", flag], Path.cwd(), cli_env())
    assert host.returncode == 0 and "simpo_gamma_beta_ratio" not in host.stdout  # other stages: the host's help only
    assert "--pref_loss" in host.stdout and "(default: 0.1)" in " ".join(host.stdout.split())  # left as they were


@pytest.mark.parametrize("version, refused", [("5.6.0", True), ("5.5.4", False)])
def test_flash_attention_2_under_the_broken_transformers_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, refused: bool
) -> None:
    """transformers 5.6.0 breaks FlashAttention-2 for models without attention sinks (huggingface/transformers
    #45588): the parse says so and what to install, instead of the first forward failing."""
    import transformers
    import transformers.utils

    monkeypatch.setattr(transformers, "__version__", version)
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    if refused:
        with pytest.raises(SimPOArgumentError, match=r"`flash_attn: fa2` \(FlashAttention-2\) fails under .*5\.5\.4"):
            parse(tmp_path, flash_attn="fa2")
    else:
        parse(tmp_path, flash_attn="fa2")
    parse(tmp_path, flash_attn="sdpa")


def test_unsloth_takes_the_hosts_padded_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """unsloth replaces attention outside transformers' interface: the stage turns packing off, with a warning."""
    from llamafactory.hparams import parser

    real_check = parser.check_version
    monkeypatch.setattr(
        parser, "check_version", lambda name, *a, **k: None if name == "unsloth" else real_check(name, *a, **k)
    )
    config = parse(tmp_path, use_unsloth=True, simpo_padding_free=True)[3].stage_args
    assert (config.attention_route, config.prefix_sharing, config.padding_free) == (False, False, False)
    assert config.lean_logps  # the lean head does not depend on the attention
    assert "`use_unsloth` replaces the model's attention" in caplog.text


def test_gemma2_on_auto_attention_is_checked_once_its_type_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host turns Gemma-2's `flash_attn: auto` into FlashAttention-2 when it is installed; the workflow checks
    again with the model's type, which is read only under the broken transformers."""
    from types import SimpleNamespace

    import transformers
    import transformers.utils

    from simpo_plugin.train.hparams import check_flash_attention

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    auto = SimpleNamespace(flash_attn="auto")
    monkeypatch.setattr(transformers, "__version__", "5.5.4")
    check_flash_attention(auto, model_type=lambda: pytest.fail("read the config under a working transformers"))
    monkeypatch.setattr(transformers, "__version__", "5.6.0")
    check_flash_attention(auto, model_type=lambda: "llama")
    with pytest.raises(SimPOArgumentError, match=r"`flash_attn: auto` \(FlashAttention-2 for Gemma-2\) fails"):
        check_flash_attention(auto, model_type=lambda: "gemma2")
