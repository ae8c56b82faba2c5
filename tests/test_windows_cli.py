"""Sliding-window models through the real `llamafactory-cli train`: the plugin's step 1 equals the host's own.

The host's `stage: dpo` with `pref_loss: simpo` computes padded rows with the model's own attention (its windows
included). The plugin's default step (block route, shared prompts, lean head) must log the same step-1 loss and
log-probs for a model whose window (4 tokens) is shorter than every sequence.
"""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import base_config, log_history, run_cli
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM


def windowed_model_dir(kind: str, assets: dict[str, Path], path: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        sliding_window=4,
    )  # fmt: skip
    torch.manual_seed(0)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    else:  # a local layer, then a global one
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=16,
                                                   layer_types=["sliding_attention", "full_attention"]))  # fmt: skip
    model.save_pretrained(str(path))
    for name in Path(assets["model"]).iterdir():
        if "token" in name.name or name.name.endswith(".model"):
            shutil.copy(name, path / name.name)
    return path


@pytest.mark.parametrize("kind", ["mistral", "gemma3"])
def test_windowed_model_logs_the_hosts_step_one(kind: str, tiny_assets, tmp_path: Path) -> None:
    model = windowed_model_dir(kind, tiny_assets, tmp_path / "model")
    common = dict(model_name_or_path=str(model), max_steps=1, logging_steps=1, do_eval=False, eval_dataset=None,
                  flash_attn="sdpa", pref_beta=2.0)  # fmt: skip
    runs = {
        "plugin": base_config(tiny_assets, tmp_path / "plugin", **common),
        "host": base_config(
            tiny_assets, tmp_path / "host", stage="dpo", pref_loss="simpo", simpo_gamma=1.0, **common
        ),  # fmt: skip
    }
    logs = {}
    for name, config in runs.items():
        result = run_cli(config, tmp_path / name)
        assert result.returncode == 0, result.stderr[-4000:]
        logs[name] = next(entry for entry in log_history(tmp_path / name) if "loss" in entry)
    plugin, host = logs["plugin"], logs["host"]
    assert plugin["loss"] == pytest.approx(host["loss"], rel=1e-5, abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected"):
        assert plugin[key] == pytest.approx(host[key], rel=1e-5, abs=1e-6), key
