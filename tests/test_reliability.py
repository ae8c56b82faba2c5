"""Runs that go wrong stop loudly and leave only loadable checkpoints."""

import subprocess
import sys
from pathlib import Path

import torch
import yaml
from conftest import base_config, cli_env
from safetensors.torch import load_file


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
