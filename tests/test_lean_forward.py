"""Every fast path of the forward gives the padded, full-logits path's log-probs and gradients."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from lean_cases import WINDOWED, assert_same, collated_batch, sums_and_grads, tiny_model, windowed_model

from simpo_plugin.lean import LeanConfig, SequenceLogps
from simpo_plugin.lean import sequence as forward
from simpo_plugin.lean.head import model_inputs
from simpo_plugin.lean.layout import packed_layout, padded_layout


def config(
    lean: bool = True, share: bool = True, one_row: bool = False, chunk: int = 7, route: bool = True
) -> LeanConfig:
    return LeanConfig(
        lean_logps=lean, prefix_sharing=share, padding_free=one_row, logps_chunk_size=chunk, attention_route=route
    )


REFERENCE = config(lean=False, share=False, one_row=False, route=False)
PATHS = {
    "lean": config(share=False, route=False),
    "lean+shared_rows": config(route=False),
    "lean+padding_free_mask": config(share=False, one_row=True, route=False),
    "lean+shared+padding_free_mask": config(one_row=True, route=False),
    "lean+route (default)": config(),
    "lean+route_unshared": config(share=False),
    "plain+route": config(lean=False),
    "lean+chunk_1": config(chunk=1),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize(
    ("kind", "attn"), [("llama", "sdpa"), ("llama", "eager"), ("tied", "sdpa"), ("gemma2", "eager")]
)
def test_fast_paths_match_padded_plain(kind: str, attn: str, path: str) -> None:
    model = tiny_model(kind, attn=attn)
    batch = collated_batch(num_pairs=3, seed=hash((kind, path)) % 1000)
    assert_same(sums_and_grads(model, batch, PATHS[path]), sums_and_grads(model, batch, REFERENCE))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", WINDOWED)
def test_sliding_windows_in_every_layout(kind: str, attn: str) -> None:
    """Every layout (block route, shared and padding-free dense masks) against the model's own padded forward,
    which builds its sliding-window masks itself; the window must matter for the batch, or the test proves
    nothing."""
    model = windowed_model(kind, attn=attn)
    batch = collated_batch(num_pairs=3, seed=11)
    expected = sums_and_grads(model, batch, REFERENCE)
    unwindowed = windowed_model(kind, window=None, attn=attn)
    assert (sums_and_grads(unwindowed, batch, REFERENCE)[0] - expected[0]).abs().max() > 1e-3
    for name, path in PATHS.items():
        try:
            assert_same(sums_and_grads(model, batch, path), expected)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


@pytest.mark.parametrize("route", [True, False])
def test_left_padding_and_gradient_checkpointing(route: bool) -> None:
    model = tiny_model("llama")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = collated_batch(num_pairs=4, seed=3, left_pad=True)
    expected = sums_and_grads(model, batch, REFERENCE)
    assert_same(sums_and_grads(model, batch, config(one_row=True, route=route)), expected)


@pytest.mark.parametrize(("kind", "attn"), [("llama", "sdpa"), ("llama", "eager"), ("gemma2", "eager")])
@pytest.mark.parametrize("case", ["one_pair", "one_token_prompt", "one_token_responses"])
def test_route_edge_cases(kind: str, attn: str, case: str) -> None:
    """Batches of one pair, and pairs whose prompt or responses are a single token."""
    batch = collated_batch(num_pairs=1 if case == "one_pair" else 3, seed=21, distinct_prompt=False)
    if case != "one_pair":
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        for row in range(ids.shape[0]):
            n = int(mask[row].sum())
            prompt = int((labels[row, :n] == -100).sum())
            keep = (1 + (n - prompt)) if case == "one_token_prompt" else (prompt + 1)
            src = slice(prompt - 1, n) if case == "one_token_prompt" else slice(0, keep)
            new_ids, new_labels = ids[row, src].clone(), labels[row, src].clone()
            ids[row], labels[row], mask[row] = 0, -100, 0
            ids[row, : len(new_ids)], labels[row, : len(new_ids)], mask[row, : len(new_ids)] = new_ids, new_labels, 1
        if case == "one_token_prompt":  # the pair's rows must still share their (now one-token) prompt
            half = ids.shape[0] // 2
            ids[half:, 0] = ids[:half, 0]
    model = tiny_model(kind, attn=attn)
    assert_same(sums_and_grads(model, batch, config()), sums_and_grads(model, batch, REFERENCE))


def test_route_runs_in_every_layer_without_a_dense_mask() -> None:
    model = tiny_model("llama")
    batch = collated_batch(num_pairs=3, seed=2)
    computer = SequenceLogps(config())
    layout = computer.layout(batch, "sdpa", model)
    assert layout.segments is not None and tuple(layout.attention_mask.shape) == (1, 1, 1, 1)
    assert layout.input_ids.shape[0] == 1 and layout.computed_tokens < int(batch["attention_mask"].sum())
    inputs = model_inputs(layout, "sdpa", torch.float32)
    with torch.no_grad():
        model(**inputs)
    assert layout.segments.calls == model.config.num_hidden_layers
    assert model.config._attn_implementation == "simpo_sdpa"
    # without segments the routed model is the plain sdpa model (generation, evaluation)
    padded = padded_layout(**batch)
    with torch.no_grad():
        routed = model(**model_inputs(padded, "sdpa", torch.float32)).logits
        model.config._attn_implementation = "sdpa"
        plain = model(**model_inputs(padded, "sdpa", torch.float32)).logits
    torch.testing.assert_close(routed, plain, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_route_passes_no_mask_to_sdpa_and_runs_on_fast_kernels(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SDPA segment runs ``is_causal`` or with torch's lower-right ``CausalBias`` (both have CUDA flash and
    memory-efficient kernels), GQA without copied K/V; an explicit mask only where a sliding window cuts into the
    segment. On CPU, the only non-math backend (flash) computes the whole route, exactly."""
    from types import SimpleNamespace

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import CausalBias

    from simpo_plugin.lean import attention

    calls: list[tuple[object, int, int]] = []

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append((attn_mask, k.shape[1], k.shape[2]))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention, "F", SimpleNamespace(scaled_dot_product_attention=recording))
    model = tiny_model("llama") if kind == "llama" else windowed_model("mistral", window=6)
    batch = collated_batch(num_pairs=3, seed=2)
    expected = sums_and_grads(model, batch, REFERENCE)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        routed = sums_and_grads(model, batch, config())
    assert_same(routed, expected)
    kv_heads, heads = model.config.num_key_value_heads, model.config.num_attention_heads
    assert any(isinstance(mask, CausalBias) for mask, _, _ in calls)
    plain = [mask is None or isinstance(mask, CausalBias) for mask, _, _ in calls]
    masked = [(key_heads, keys) for (_, key_heads, keys), ok in zip(calls, plain, strict=True) if not ok]
    unmasked = [(key_heads, keys) for (_, key_heads, keys), ok in zip(calls, plain, strict=True) if ok]
    assert unmasked and all(key_heads == kv_heads < heads for key_heads, _ in unmasked)  # GQA: K/V not copied
    if kind == "llama":
        assert not masked
    else:  # window 6: only segments with more than 6 keys need a mask, and with one, K/V per head (CUDA's
        # memory-efficient kernel takes masks but not GQA; the flash kernel takes GQA but not masks)
        assert masked and all(keys > 6 and key_heads == heads for key_heads, keys in masked)
        assert all(keys <= 6 for _, keys in unmasked)


@pytest.mark.parametrize("bypassing", ["every_layer", "one_layer"])
def test_attention_that_bypasses_the_route_falls_back_to_padded_rows(
    bypassing: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Attention outside transformers' interface (remote code, a patched attention) may ignore 4D masks and
    position ids too: the host's padded rows are the only layout it is sure to attend exactly. One such layer
    among routed ones is enough to be wrong."""
    import copy

    model = tiny_model("llama")
    batch = collated_batch(num_pairs=3, seed=12)
    expected = sums_and_grads(model, batch, REFERENCE)
    computer = SequenceLogps(config())
    computer.layout(batch, "sdpa", model)  # installs the route on the model's config ...
    layers = model.model.layers if bypassing == "every_layer" else model.model.layers[1:]
    for layer in layers:  # ... which these attention modules no longer read
        layer.self_attn.config = copy.copy(model.config)
        layer.self_attn.config._attn_implementation = "sdpa"
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        model.zero_grad(set_to_none=True)
        sums, lengths = computer(model, model, batch)
        weights = torch.randn(sums.shape, generator=torch.Generator().manual_seed(1))
        (sums * weights).sum().backward()
    assert computer.route is False and "does not go through transformers' attention interface" in caplog.text
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same((sums.detach(), lengths, grads), expected)
    layout = computer.layout(batch, "sdpa", model)
    assert layout.input_ids.shape == batch["input_ids"].shape and layout.position_ids is None  # the host's rows


def test_attention_sinks_take_the_padded_rows_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("llama")
    model.model.layers[0].self_attn.sinks = torch.nn.Parameter(torch.zeros(4))  # as gpt-oss's attention has
    batch = collated_batch(num_pairs=3, seed=13)
    computer = SequenceLogps(config())
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        layouts = [computer.layout(batch, "sdpa", model) for _ in range(2)]
    assert all(layout.input_ids.shape == batch["input_ids"].shape for layout in layouts)
    assert model.config._attn_implementation == "sdpa"  # not routed
    assert caplog.text.count("has attention sinks") == 1


def test_lora_including_the_head_uses_the_checkpointed_module_path() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)  # non-zero B so LoRA changes the head's output
    batch = collated_batch(num_pairs=3, seed=5)
    unwrapped = model
    assert type(unwrapped.get_output_embeddings()) is not torch.nn.Linear

    def run(cfg: LeanConfig):
        model.zero_grad(set_to_none=True)
        sums, lengths = SequenceLogps(cfg)(model, unwrapped, batch)
        sums.sum().backward()
        return sums.detach(), lengths, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    lean, plain = run(config()), run(REFERENCE)
    assert any("lm_head" in name for name in plain[2])
    assert_same(lean, plain)


def test_head_outside_the_forward_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("cohere")  # logits are scaled after the head: the one-time check must catch it
    batch = collated_batch(num_pairs=2, seed=7)
    computer = SequenceLogps(config())
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        first = computer(model, model, batch)[0].detach()
        computer(model, model, batch)
    assert computer.lean is False
    assert len([r for r in caplog.records if "differ from its logits" in r.getMessage()]) == 1
    torch.testing.assert_close(first, SequenceLogps(REFERENCE)(model, model, batch)[0].detach(), atol=1e-5, rtol=0)


def test_unsplittable_model_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("llama")
    model.get_output_embeddings = lambda: torch.nn.Linear(32, 97)  # a head the forward never calls
    batch = collated_batch(num_pairs=2, seed=8)
    computer = SequenceLogps(config())
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        sums = computer(model, model, batch)[0]
    assert computer.lean is False and "cannot split" in caplog.text
    torch.testing.assert_close(sums, SequenceLogps(REFERENCE)(model, model, batch)[0], atol=1e-5, rtol=0)


def test_fsdp_wrapped_model_uses_the_plain_path_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    class FullyShardedDataParallel(torch.nn.Module):  # stands in for torch's wrapper, which needs a GPU here
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, **kwargs):  # noqa: ANN003
            return self.module(**kwargs)

    model = tiny_model("llama")
    batch = collated_batch(num_pairs=2, seed=18)
    computer = SequenceLogps(config())
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        for _ in range(2):
            sums = computer(FullyShardedDataParallel(model), model, batch)[0]
    assert computer.lean is False
    assert len([r for r in caplog.records if "FSDP shards the LM head" in r.getMessage()]) == 1
    torch.testing.assert_close(sums, SequenceLogps(REFERENCE)(model, model, batch)[0], atol=1e-5, rtol=0)


def test_one_time_check_scores_a_sample_without_full_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check rides on the lean forward: the head gets K sampled states, so no (rows, L, V) logits and no second
    forward, even on step 1."""
    monkeypatch.setattr(forward, "LEAN_CHECK_TOKENS", 5)
    model = tiny_model("gemma2", attn="eager")  # soft-capping runs in the model's forward after the head
    batch = collated_batch(num_pairs=4, seed=9)
    head_rows: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_rows.append(out.shape[:-1].numel())
    )
    computer = SequenceLogps(config())
    sums = computer(model, model, batch)[0]
    computer(model, model, batch)
    handle.remove()
    assert computer.lean and computer._lean_checked
    assert head_rows == [5, 0]  # step 1: the check's sample in the one forward; then the empty slice
    assert int((batch["labels"] != -100).sum()) > 5
    torch.testing.assert_close(
        sums.detach(), SequenceLogps(REFERENCE)(model, model, batch)[0].detach(), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("offset, keeps_lean", [("one_ulp", True), ("every_token", False)])
def test_check_tolerates_rounding_of_a_few_tokens_but_not_a_shift_of_all(
    monkeypatch: pytest.MonkeyPatch, offset: str, keeps_lean: bool
) -> None:
    original = forward.lean_token_logps

    def perturbed(*args, **kwargs):
        token_logps, checked = original(*args, **kwargs)
        if offset == "one_ulp":  # one bf16 ulp at |logit| ~ 10, as matmuls of different shapes may round
            return token_logps + torch.nn.functional.one_hot(torch.tensor(0), token_logps.numel()) * 0.0625, checked
        return token_logps + 0.05, checked

    monkeypatch.setattr(forward, "lean_token_logps", perturbed)
    model = tiny_model("llama")
    computer = SequenceLogps(config())
    computer(model, model, collated_batch(num_pairs=3, seed=4))
    assert computer.lean is keeps_lean


def test_neftune_noise_keeps_the_lean_path(caplog: pytest.LogCaptureFixture) -> None:
    """NEFTune (``neftune_noise_alpha``, LLaMA-Factory#1849) draws new embedding noise in every training forward:
    the check compares on the same forward's states, so the noise cannot make it fall back."""
    try:
        from transformers.integrations.neftune import neftune_post_forward_hook
    except ImportError:  # transformers < 5
        from transformers.trainer_utils import neftune_post_forward_hook

    model = tiny_model("llama").train()
    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = 50.0
    embeddings.register_forward_hook(neftune_post_forward_hook)
    batch = collated_batch(num_pairs=3, seed=12)
    computer = SequenceLogps(config())
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        first, second = (computer(model, model, batch)[0].detach() for _ in range(2))
    assert computer.lean and computer._lean_checked
    assert not [r.getMessage() for r in caplog.records if r.name == "llamafactory.simpo"]
    assert (first - second).abs().max() > 0.05  # the noise is real: two forwards differ by more than the tolerance


def test_fp32_model_under_bf16_autocast_keeps_the_lean_path(caplog: pytest.LogCaptureFixture) -> None:
    """Mixed precision with fp32 weights: lean and plain round the head's matmul to bf16 alike, so no fallback."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits of several units, as in a trained model, so bf16 rounding shows
    batch = collated_batch(num_pairs=3, seed=6)
    computer = SequenceLogps(config())
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"), torch.autocast("cpu", dtype=torch.bfloat16):
        lean = computer(model, model, batch)[0].detach()
        plain = SequenceLogps(REFERENCE)(model, model, batch)[0].detach()
    assert computer.lean and "differ from its logits" not in caplog.text
    torch.testing.assert_close(lean, plain, atol=0.1, rtol=1e-2)


def test_layouts_compute_fewer_tokens_and_score_the_same_responses() -> None:
    batch = collated_batch(num_pairs=4, seed=11, distinct_prompt=False)
    padded = padded_layout(**batch)
    shared = packed_layout(**batch, share_prompt=True)
    one_row = packed_layout(**batch, share_prompt=True, one_row=True)
    routed = packed_layout(**batch, share_prompt=True, one_row=True, segments=True)
    assert torch.equal(routed.input_ids, one_row.input_ids) and torch.equal(routed.predictors, one_row.predictors)
    assert routed.segments.items[0].start == 0 and routed.segments.items[-1].end == routed.computed_tokens
    unique = int(batch["attention_mask"].sum()) - sum(
        int((batch["labels"][i] == -100).logical_and(batch["attention_mask"][i].bool()).sum()) for i in range(4)
    )  # every prompt once
    assert torch.equal(padded.lengths(), shared.lengths()) and torch.equal(padded.lengths(), one_row.lengths())
    assert one_row.computed_tokens == unique < shared.computed_tokens <= padded.computed_tokens
    assert one_row.input_ids.shape[0] == 1 and shared.input_ids.shape[0] == 4


def test_two_process_ddp_lean_gradients_agree(tmp_path: Path) -> None:
    """Under DDP (gloo), the lean path's gradients are identical on both ranks and equal the 1-process average; a
    lean check that fails on one rank only turns the lean path off on both (one decision, no hang)."""
    script = Path(__file__).with_name("dist_lean_grads.py")
    env = cli_env(PYTHONPATH=str(script.parent))
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29611", str(script), str(tmp_path / "out.txt")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    across_ranks, vs_reference, verdicts = (tmp_path / "out.txt").read_text().split()
    assert float(across_ranks) == 0.0
    assert float(vs_reference) < 1e-5
    assert verdicts == "0,0"


def test_the_chunk_size_defaults_per_device_and_a_given_one_wins() -> None:
    """`simpo_logps_chunk_size` unset: the batch's device picks it (CPU 256, CUDA 1024, others the CPU's)."""
    from types import SimpleNamespace

    from simpo_plugin.lean.config import chunk_size_for

    assert (chunk_size_for("cpu"), chunk_size_for("cuda"), chunk_size_for("xpu")) == (256, 1024, 256)
    for device, expected in (("cpu", 256), ("meta", 256)):
        layout = SimpleNamespace(input_ids=torch.zeros(1, 3, dtype=torch.long, device=device))
        assert SequenceLogps(LeanConfig()).chunk_size(layout) == expected
        assert SequenceLogps(LeanConfig(logps_chunk_size=7)).chunk_size(layout) == 7
