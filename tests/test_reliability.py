"""Runs that go wrong stop loudly and leave only loadable checkpoints."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import base_config, cli_env, log_history, run_cli
from safetensors.torch import load_file


LOGGED_LOSS_ROUNDING = 1.01e-4  # transformers 4.x logs `loss` rounded to 4 decimals; the weights are compared exactly


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tiny_assets, tmp_path) -> None:
    output_dir = tmp_path / "out"
    config = base_config(tiny_assets, output_dir, max_steps=6, save_strategy="steps", save_steps=2,
                         do_eval=False, eval_dataset=None, logging_steps=1)  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    script = Path(__file__).with_name("run_with_nan.py")
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "config.yaml"), "3"], env=cli_env(),
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode != 0
    assert "non-finite gradient at step 3" in result.stderr
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (output_dir / "model.safetensors").exists()
    weights = load_file(str(output_dir / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(output_dir / "checkpoint-2")


def _train_losses(output_dir: Path) -> list[float]:
    return [entry["loss"] for entry in log_history(output_dir) if "loss" in entry]


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_killed_run_resumes_to_the_same_weights_and_history(tiny_assets, tmp_path, finetuning_type) -> None:
    common = dict(max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1, do_eval=False, eval_dataset=None,
                  finetuning_type=finetuning_type, lora_target="all", learning_rate=5e-3)  # fmt: skip
    assert_ok(run_cli(base_config(tiny_assets, tmp_path / "straight", **common), tmp_path / "straight"))

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text(yaml.safe_dump(base_config(tiny_assets, killed / "out", **common)))
    script = Path(__file__).with_name("run_and_kill.py")
    result = subprocess.run([sys.executable, str(script), str(killed / "config.yaml"), "4"], env=cli_env(),
                            capture_output=True, text=True, timeout=600, start_new_session=True)  # fmt: skip
    assert result.returncode == -9, result.stderr[-2000:]
    assert (killed / "out" / "checkpoint-4").is_dir() and not (killed / "out" / "checkpoint-8").exists()

    resumed = base_config(tiny_assets, killed / "out", resume_from_checkpoint=str(killed / "out" / "checkpoint-4"),
                          overwrite_output_dir=False, **common)  # fmt: skip
    assert_ok(run_cli(resumed, killed))
    assert _train_losses(killed / "out") == pytest.approx(_train_losses(tmp_path / "straight"), rel=1e-5)
    name = "model.safetensors" if finetuning_type == "full" else "adapter_model.safetensors"
    expected, actual = load_file(str(tmp_path / "straight" / name)), load_file(str(killed / "out" / name))
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


def _weights_after(tiny_assets, output_dir: Path, env=None, **keys) -> tuple[list[float], dict]:
    config = base_config(tiny_assets, output_dir, max_steps=2, logging_steps=1, do_eval=False, eval_dataset=None,
                         optim="sgd", learning_rate=0.5, disable_shuffling=True, **keys)  # fmt: skip
    assert_ok(run_cli(config, output_dir, env=env))
    return _train_losses(output_dir), load_file(str(output_dir / "model.safetensors"))


def test_accumulation_and_ranks_give_the_same_update(tiny_assets, tmp_path) -> None:
    """4 pairs x 1, 1 pair x 4 accumulation, and 2 ranks x 2 pairs: same losses and same weights after 2 steps."""
    reference = _weights_after(tiny_assets, tmp_path / "b4", per_device_train_batch_size=4)
    accumulated = _weights_after(tiny_assets, tmp_path / "b1ga4", per_device_train_batch_size=1,
                                 gradient_accumulation_steps=4)  # fmt: skip
    ranks = _weights_after(tiny_assets, tmp_path / "r2b2", per_device_train_batch_size=2,
                           env=cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))  # fmt: skip
    for name, (losses, weights) in {"accumulation": accumulated, "ranks": ranks}.items():
        assert losses == pytest.approx(reference[0], rel=1e-5, abs=LOGGED_LOSS_ROUNDING), name
        for key in reference[1]:
            torch.testing.assert_close(weights[key], reference[1][key], atol=1e-6, rtol=1e-5, msg=f"{name}: {key}")
