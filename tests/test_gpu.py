"""Configurations that need a GPU: QLoRA (bitsandbytes) and FSDP. They run when a CUDA device is present and are
skipped, with the reason, on the CPU machines CI uses; the rest of the matrix is `test_matrix.py`."""

import pytest
import torch
from conftest import base_config, cli_env, log_history, run_cli


pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (QLoRA, FSDP)"),
]
PLAIN = {"simpo_lean_logps": False, "simpo_prefix_sharing": False, "simpo_attention_route": False}


def losses_and_lines(tiny_assets, output_dir, env=None, **keys) -> tuple[list[float], list[str]]:
    config = base_config(tiny_assets, output_dir, max_steps=2, logging_steps=1, per_device_train_batch_size=4,
                         disable_shuffling=True, max_samples=32, simpo_probe_steps=1, simpo_probe_prompts=3,
                         simpo_probe_max_new_tokens=6, bf16=True, **keys)  # fmt: skip
    result = run_cli(config, output_dir, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "simpo-plugin:" in line and "hint:" not in line and "simpo-plugin: recap" not in line]  # fmt: skip
    return [entry["loss"] for entry in log_history(output_dir) if "loss" in entry], lines


def test_qlora_fast_path_equals_the_plain_path(tiny_assets, tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    keys = dict(finetuning_type="lora", lora_target="all", quantization_bit=4, learning_rate=5e-3)
    fast, fast_lines = losses_and_lines(tiny_assets, tmp_path / "fast", **keys)
    plain, _ = losses_and_lines(tiny_assets, tmp_path / "plain", **keys, **PLAIN)
    assert fast_lines == [] and len(fast) == 2
    assert fast == pytest.approx(plain, rel=1e-2)  # bf16


def test_fsdp_trains_and_the_lean_head_steps_aside_with_one_line(tiny_assets, tmp_path) -> None:
    env = cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(min(torch.cuda.device_count(), 2)))
    keys = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
    fast, lines = losses_and_lines(tiny_assets, tmp_path / "fast", env=env, **keys)
    plain, _ = losses_and_lines(tiny_assets, tmp_path / "plain", env=env, **keys, **PLAIN)
    assert any("FSDP shards the LM head" in line for line in lines), lines  # once per rank
    assert fast == pytest.approx(plain, rel=1e-2)
