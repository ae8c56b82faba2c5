"""The vLLM backend of `simpo-plugin pairs`: runs where vLLM and a CUDA GPU exist, and says why it skips elsewhere."""

import importlib.util
import json

import pytest
import torch
from pairs_cases import pairs_config, write_prompt_datasets

from simpo_plugin.generation import build_pairs


needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="the vLLM backend needs vLLM (`pip install vllm`) and a CUDA GPU; this machine lacks one of them",
)


@needs_vllm
def test_vllm_samples_are_reproducible_per_prompt(tmp_path) -> None:
    from transformers import AutoTokenizer

    from simpo_plugin.testing import build_demo_assets, build_tiny_model

    assets = build_demo_assets(tmp_path / "assets")
    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    build_tiny_model(assets["model"], tokenizer, hidden_size=256, intermediate_size=512)  # head_dim 64 for vLLM
    prompts = write_prompt_datasets(tmp_path / "prompts")
    runs = []
    for name, overrides in (("a", {}), ("b", {}), ("alone", {"dataset": "chat_sft", "max_samples": 1})):
        stats = build_pairs(pairs_config(assets["model"], prompts, tmp_path / name, backend="vllm", batch_size=64,
                                         **overrides))  # fmt: skip
        assert stats.samples == 3 * stats.prompts
        runs.append(
            {
                r["key"]: [s["text"] for s in r["samples"]]
                for r in map(json.loads, (tmp_path / name / "parts/samples.all.jsonl").read_text().splitlines())
            }
        )
    assert runs[0] == runs[1]
    ((key, texts),) = runs[2].items()
    assert texts == runs[0][key] and len(set(texts)) > 1
