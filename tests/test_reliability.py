"""Runs that go wrong stop loudly and leave only loadable checkpoints."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import base_config, cli_env, log_history, run_cli, run_command
from safetensors.torch import load_file


# These check the plugin's stop, checkpoint and resume logic, which `make test` runs on the newest host; the signal
# path through the host's own launcher process is test_launchers.py's (`host`: the lowest host runs it too;
# docs/testing.md, "Markers").


LOGGED_LOSS_ROUNDING = 1.01e-4  # transformers 4.x logs `loss` rounded to 4 decimals; the weights are compared exactly


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tiny_assets, tmp_path) -> None:
    output_dir = tmp_path / "out"
    config = base_config(tiny_assets, output_dir, max_steps=6, save_strategy="steps", save_steps=2,
                         do_eval=False, eval_dataset=None, logging_steps=1)  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    script = Path(__file__).with_name("run_with_nan.py")
    result = run_command([str(script), str(tmp_path / "config.yaml"), "3"], tmp_path, cli_env())
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


def _signalled_run(config: dict, workdir: Path, step: int, name: str, ranks: int = 1):
    """Run `config` with run_and_signal.py (under torchrun for 2 ranks) in its own process group."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    script = [str(Path(__file__).with_name("run_and_signal.py")), str(workdir / "config.yaml"), str(step), name]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_port=29533"]
    launcher = [sys.executable] if ranks == 1 else torchrun
    return subprocess.run([*launcher, *script], env=cli_env(), capture_output=True, text=True, timeout=600,
                          start_new_session=True)  # fmt: skip


@pytest.mark.parametrize(("ranks", "name", "zero"), [(1, "SIGINT", None), (2, "SIGTERM", None), (2, "SIGTERM", 3)])
def test_signalled_run_checkpoints_its_step_and_resumes_exactly(tiny_assets, tmp_path, ranks, name, zero) -> None:
    """Ctrl-C (1 process) or SIGTERM to torchrun's whole process group (2 gloo ranks, DDP or DeepSpeed ZeRO-3; the
    agent forwards it once more) at step 5 of 10: the step finishes, checkpoint-5 is written on every rank, one line
    names the resume setting, the exit is non-zero; the resumed run ends like an uninterrupted one."""
    deepspeed = str(Path(__file__).parents[1] / "examples" / "deepspeed" / f"ds_z{zero}_config.json") if zero else None
    common = dict(max_steps=10, logging_steps=1, do_eval=False, eval_dataset=None, learning_rate=5e-3,
                  per_device_train_batch_size=8 // ranks, deepspeed=deepspeed)  # fmt: skip
    env = cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2") if ranks == 2 else None
    assert_ok(run_cli(base_config(tiny_assets, tmp_path / "straight", **common), tmp_path / "straight", env=env))

    out = tmp_path / "stopped" / "out"
    result = _signalled_run(base_config(tiny_assets, out, **common), tmp_path / "stopped", 5, name, ranks)
    signum = getattr(signal, name)
    assert result.returncode == (128 + signum if ranks == 1 else 1), result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: stopped by")]
    checkpoint = out / "checkpoint-5"
    assert lines == [
        f"simpo-plugin: stopped by {name} after step 5; checkpoint saved to {checkpoint}. Resume with "
        f"`resume_from_checkpoint: {checkpoint}` in the same config (or `resume_from_checkpoint={checkpoint}` on "
        "the command line)."
    ], result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5"]
    assert not (out / "model.safetensors").exists()  # no final save: the run did not finish
    assert len(list(checkpoint.glob("rng_state*.pth"))) == ranks  # every rank wrote its part
    if zero:
        assert len(list(checkpoint.glob("global_step5/*optim_states.pt"))) == ranks  # each rank's ZeRO shard
    assert len(_train_losses(checkpoint)) == 5

    resumed = base_config(tiny_assets, out, resume_from_checkpoint=str(checkpoint), overwrite_output_dir=False,
                          **common)  # fmt: skip
    resumed_run = run_cli(resumed, tmp_path / "stopped", env=env)
    assert resumed_run.returncode == 0, resumed_run.stdout[-3000:] + resumed_run.stderr[-6000:]
    assert _train_losses(out) == pytest.approx(_train_losses(tmp_path / "straight"), rel=1e-5)
    expected = load_file(str(tmp_path / "straight" / "model.safetensors"))
    actual = load_file(str(out / "model.safetensors"))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


REPEATS = """
import signal, sys, time
from simpo_plugin.train.preemption import StopRequest
request = StopRequest(repeat_window_s=1.0)
request.install()
print("ready", flush=True)
while True:
    time.sleep(0.01)
    if request.signum:
        print("requested", request.signum, flush=True)
        request.signum = -request.signum  # print once; the handler keeps its first time
"""


def test_a_repeat_within_the_window_is_the_same_request_and_a_later_one_stops_at_once() -> None:
    child = subprocess.Popen([sys.executable, "-c", REPEATS], env=cli_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        child.send_signal(signal.SIGTERM)  # a launcher forwarding the same request
        assert child.stdout.readline() == f"requested {int(signal.SIGTERM)}\n"
        time.sleep(0.3)
        assert child.poll() is None  # still finishing its step
        time.sleep(1.0)
        started = time.monotonic()
        child.send_signal(signal.SIGINT)  # a second request, after the window: stop now
        assert child.wait(timeout=10) == -signal.SIGINT
        assert time.monotonic() - started < 1.0
    finally:
        child.kill()
