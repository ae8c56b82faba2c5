"""The flash-attention paths on CPU, through a plain-PyTorch flash-attn (tests/flash_reference.py).

The block route under ``flash_attention_2`` computes every segment of the packed row in one varlen call per
layer; without the route, a packed row goes through flash-attention's sequence boundaries passed as kwargs. Both
must equal the model's own padded forward, on flash-attention and on sdpa, values and gradients, and neither may
build anything of size (L x L).
"""

import flash_reference
import pytest
import torch
from lean_cases import assert_same, collated_batch, sums_and_grads, tiny_model, windowed_model
from test_logprob import MaxOutputNumel

from simpo_plugin.lean import LeanConfig, SequenceLogps
from simpo_plugin.lean.head import model_inputs


ROUTE = LeanConfig(logps_chunk_size=7)  # the default: block route, shared prompts
PACKED = LeanConfig(logps_chunk_size=7, padding_free=True, attention_route=False)  # varlen through boundaries
PADDED = LeanConfig(lean_logps=False, prefix_sharing=False, attention_route=False)  # the host's rows, full logits
CASES = {  # family -> (model, what it adds)
    "llama": lambda attn: tiny_model("llama", attn=attn),  # GQA
    "mistral": lambda attn: windowed_model("mistral", attn=attn),  # a window of 4 in every layer
    "gemma2": lambda attn: windowed_model("gemma2", attn=attn),  # soft-capped scores, mixed window layers
    "qwen2": lambda attn: windowed_model("qwen2", attn=attn),  # max_window_layers
    "gemma3": lambda attn: windowed_model("gemma3", attn=attn),  # layer_types: a local layer, then a global one
    "phi3": lambda attn: windowed_model("phi3", attn=attn),  # fused qkv, a window in every layer
}


@pytest.fixture
def flash(monkeypatch: pytest.MonkeyPatch):
    flash_reference.install(monkeypatch)
    return flash_reference


@pytest.mark.parametrize("kind", sorted(CASES))
def test_flash_paths_match_the_models_own_padded_forward(kind: str, flash) -> None:
    batch = collated_batch(num_pairs=3, seed=31)
    on_sdpa = sums_and_grads(CASES[kind]("sdpa"), batch, PADDED)
    model = CASES[kind]("flash_attention_2")
    own = sums_and_grads(model, batch, PADDED)  # the model's own flash path on padded rows
    assert_same(own, on_sdpa)
    flash.calls.clear()
    assert_same(sums_and_grads(model, batch, ROUTE), own)
    layers = model.config.num_hidden_layers
    assert model.config._attn_implementation == "simpo_flash_attention_2"
    assert len(flash.calls) == layers and all(call["gathered"] for call in flash.calls)  # one call per layer
    assert all(call["host_ints"] for call in flash.calls)  # the longest lengths are known: no device sync
    assert all(call["sequences"] == 6 for call in flash.calls)  # 2 shared pairs of 2 segments, 1 pair of 2 blocks
    if kind != "llama":
        assert any(call["window"][0] == 3 for call in flash.calls)  # window 4: three keys back
    fresh = CASES[kind]("flash_attention_2")
    flash.calls.clear()
    assert_same(sums_and_grads(fresh, batch, PACKED), own)
    assert len(flash.calls) == layers and not any(call["gathered"] for call in flash.calls)
    assert all(call["host_ints"] for call in flash.calls)
    assert fresh.config._attn_implementation == "flash_attention_2"


def test_flash_route_hands_generation_to_flash_attention(flash) -> None:
    """Without segments (generation, evaluation) the routed model is the plain flash-attention model."""
    model = tiny_model("llama", attn="flash_attention_2")
    batch = collated_batch(num_pairs=2, seed=32)
    SequenceLogps(ROUTE)(model, model, batch)
    assert model.config._attn_implementation == "simpo_flash_attention_2"
    inputs = {"input_ids": batch["input_ids"][:1, :5]}
    with torch.no_grad():
        routed = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        model.config._attn_implementation = "flash_attention_2"
        plain = model(**inputs).logits
        plain_generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(routed, plain, atol=0, rtol=0)
    assert torch.equal(generated, plain_generated)


@pytest.mark.parametrize("config", [ROUTE, PACKED], ids=["route", "packed"])
def test_flash_paths_build_nothing_of_size_L_squared(config: LeanConfig, flash, monkeypatch) -> None:
    """The layout and the forward (the kernel itself stubbed out) allocate nothing (L x L); the dense-mask layout
    on sdpa, measured the same way, does."""
    monkeypatch.setattr(flash, "flash_attn_varlen_func", lambda q, k, v, **kwargs: torch.zeros_like(q))
    flash.install(monkeypatch)
    batch = collated_batch(num_pairs=16, seed=33)
    model = tiny_model("llama", attn="flash_attention_2")
    computer = SequenceLogps(config)
    with MaxOutputNumel() as probe:
        layout = computer.layout(batch, "flash_attention_2", model)
        model.model(**model_inputs(layout, "flash_attention_2", torch.float32), use_cache=False)  # the body: no logits
    length = layout.input_ids.shape[1]
    assert layout.input_ids.shape[0] == 1 and length > 200
    assert probe.max_numel < length * length // 2  # the largest: (L, intermediate size 64) in the MLP
    dense = SequenceLogps(LeanConfig(padding_free=True, attention_route=False))
    with MaxOutputNumel() as dense_probe:
        dense_length = dense.layout(batch, "sdpa", tiny_model("llama")).input_ids.shape[1]
    assert dense_probe.max_numel >= dense_length * dense_length


def test_flash_route_gives_the_kernel_one_16_bit_dtype_under_autocast(flash) -> None:
    """fp32 weights under bf16 autocast: RoPE's fp32 ``cos`` makes q and k fp32 while v is bf16; the kernel must
    get all three in autocast's dtype (the reference kernel refuses mixed dtypes, as the real one does)."""
    batch = collated_batch(num_pairs=3, seed=34)
    results = {}
    for attn, config in (("flash_attention_2", ROUTE), ("sdpa", PADDED)):  # the same weights
        model = tiny_model("llama", attn=attn)
        with torch.no_grad():
            model.lm_head.weight.mul_(30)  # logits of several units, so that bf16 rounding shows
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            results[attn] = SequenceLogps(config)(model, model, batch)[0]
    assert flash.calls and all(call["dtype"] == torch.bfloat16 for call in flash.calls)
    torch.testing.assert_close(results["flash_attention_2"], results["sdpa"], atol=0.3, rtol=2e-2)
