"""DeepSpeed ZeRO-2 and ZeRO-3, for real, on CPU: 2 processes over gloo, fp32 (no bf16, no use_cpu)."""

from pathlib import Path

import pytest
import torch
from conftest import base_config, cli_env, log_history, run_cli


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "deepspeed"


def _losses(tiny_assets, output_dir: Path, **keys) -> tuple[list[float], list[dict]]:
    """Per-step losses and the generation probes (steps 0, 2 and 4) of a 2-process run."""
    config = base_config(tiny_assets, output_dir, max_steps=4, logging_steps=1, do_eval=False, eval_dataset=None,
                         per_device_train_batch_size=4, disable_shuffling=True, simpo_probe_steps=2,
                         simpo_probe_prompts=5, simpo_probe_max_new_tokens=16, **keys)  # fmt: skip
    result = run_cli(config, output_dir, env=cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert result.returncode == 0, result.stderr[-4000:]
    lines = (result.stdout + result.stderr).splitlines()
    monitor = ("simpo-plugin: hint:", "simpo-plugin: warning at step")  # the run's health, not the lean path's
    assert not [
        line
        for line in lines
        if "simpo-plugin:" in line and "simpo-plugin: recap" not in line and not any(m in line for m in monitor)
    ]
    history = log_history(output_dir)
    probes = [{k: v for k, v in entry.items() if k.startswith("probe/") or k == "step"} for entry in history
              if "probe/length" in entry]  # fmt: skip
    return [entry["loss"] for entry in history if "loss" in entry], probes


@pytest.fixture(scope="module")
def ddp_losses(tiny_assets, tmp_path_factory) -> tuple[list[float], list[dict]]:
    return _losses(tiny_assets, tmp_path_factory.mktemp("ddp") / "out")


@pytest.mark.parametrize("stage", ["2", "3"])
def test_zero_matches_ddp_and_saves_a_loadable_model(tiny_assets, tmp_path, ddp_losses, stage) -> None:
    losses, probes = _losses(tiny_assets, tmp_path / "out", deepspeed=str(EXAMPLES / f"ds_z{stage}_config.json"))
    assert len(losses) == 4
    assert losses == pytest.approx(ddp_losses[0], rel=1e-5)
    # every rank took part in each probe's generate call (ZeRO-3 gathers sharded weights), and the answers match DDP's
    assert [entry["step"] for entry in probes] == [0, 2, 4]
    for ours, theirs in zip(probes, ddp_losses[1], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-6)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # ZeRO-3 gathers the 16-bit weights on save
    assert all(torch.isfinite(p).all() and p.numel() > 0 for p in model.parameters())
