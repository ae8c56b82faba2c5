"""DeepSpeed ZeRO-2 and ZeRO-3, for real, on CPU: 2 processes over gloo, fp32 (no bf16, no use_cpu)."""

from pathlib import Path

import pytest
import torch
from conftest import base_config, cli_env, log_history, run_cli


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "deepspeed"


def _losses(tiny_assets, output_dir: Path, **keys) -> list[float]:
    config = base_config(tiny_assets, output_dir, max_steps=4, logging_steps=1, do_eval=False, eval_dataset=None,
                         per_device_train_batch_size=4, disable_shuffling=True, **keys)  # fmt: skip
    result = run_cli(config, output_dir, env=cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "simpo-plugin" not in result.stdout + result.stderr  # no fallback warning: the lean path ran
    return [entry["loss"] for entry in log_history(output_dir) if "loss" in entry]


@pytest.fixture(scope="module")
def ddp_losses(tiny_assets, tmp_path_factory) -> list[float]:
    return _losses(tiny_assets, tmp_path_factory.mktemp("ddp") / "out")


@pytest.mark.parametrize("stage", ["2", "3"])
def test_zero_matches_ddp_and_saves_a_loadable_model(tiny_assets, tmp_path, ddp_losses, stage) -> None:
    losses = _losses(tiny_assets, tmp_path / "out", deepspeed=str(EXAMPLES / f"ds_z{stage}_config.json"))
    assert len(losses) == 4
    assert losses == pytest.approx(ddp_losses, rel=1e-5)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # ZeRO-3 gathers the 16-bit weights on save
    assert all(torch.isfinite(p).all() and p.numel() > 0 for p in model.parameters())
