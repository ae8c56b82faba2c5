"""flash-attention's kernels as plain PyTorch, for running the flash-attention paths on CPU.

:func:`flash_attn_varlen_func` and :func:`flash_attn_func` follow flash-attn 2's signatures and semantics: (total,
heads, dim) packed by ``cu_seqlens``; GQA by fewer key heads; a causal mask aligned to the bottom right when the
query and key lengths differ (flash-attn >= 2.1); ``window_size=(left, right)`` inclusive; ``softcap`` on the scaled
scores. Each sequence is computed alone, eagerly, in fp32 softmax. :func:`install` makes transformers load them
(its lazy import of the flash-attn package), so a model with ``flash_attention_2`` runs its own flash path too.
"""

import inspect

import torch
from torch import Tensor


calls: list[dict] = []  # per varlen call: the sequence lengths and whether keys differ from queries


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float | None, causal: bool, window: tuple[int, int],
            softcap: float) -> Tensor:  # fmt: skip
    """One sequence: q (Lq, H, D), k and v (Lk, H_kv, D) -> (Lq, H, D)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    lq, lk = q.shape[0], k.shape[0]
    distance = torch.arange(lk - lq, lk)[:, None] - torch.arange(lk)[None, :]  # query minus key, bottom right
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        allowed &= distance >= 0
    if window[0] >= 0:
        allowed &= distance <= window[0]
    if window[1] >= 0:
        allowed &= -distance <= window[1]
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1, dtype=torch.float32).to(q.dtype)
    return torch.einsum("hqk,khd->qhd", weights, v)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    """What the real kernels refuse: q, k and v of different dtypes (fp32 is allowed here only so that fp32 models
    run on CPU, as transformers itself passes them), a last dimension that is not contiguous, head counts that do
    not divide."""
    assert q.dtype == k.dtype == v.dtype, (q.dtype, k.dtype, v.dtype)
    assert q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    assert k.shape[-2] == v.shape[-2] and q.shape[-2] % k.shape[-2] == 0


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):  # fmt: skip
    assert dropout_p == 0.0 and alibi_slopes is None
    _check_inputs(q, k, v)
    for cu in (cu_seqlens_q, cu_seqlens_k):  # what the CUDA kernel checks of its offsets
        assert cu.dtype == torch.int32 and cu.is_contiguous() and cu.device == q.device and cu.dim() == 1
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    assert int(max_seqlen_q) >= max(b - a for a, b in zip(bounds_q, bounds_q[1:], strict=False))
    assert int(max_seqlen_k) >= max(b - a for a, b in zip(bounds_k, bounds_k[1:], strict=False))
    assert bounds_q[-1] == q.shape[0] and bounds_k[-1] == k.shape[0] == v.shape[0]
    calls.append({"sequences": len(bounds_q) - 1, "gathered": bounds_q != bounds_k, "window": window_size,
                  "host_ints": type(max_seqlen_q) is int and type(max_seqlen_k) is int, "dtype": q.dtype})  # fmt: skip
    pieces = [
        _attend(q[qa:qb], k[ka:kb], v[ka:kb], softmax_scale, causal, window_size, softcap)
        for qa, qb, ka, kb in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:], strict=False)
    ]
    return torch.cat(pieces)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):  # fmt: skip
    """(B, L, H, D) batches of equal-length sequences."""
    assert dropout_p == 0.0 and alibi_slopes is None
    _check_inputs(q, k, v)
    return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal, window_size, softcap) for b in range(len(q))])


def install(monkeypatch) -> None:
    """Make transformers' lazy flash-attention import return these functions (and forget what it loaded)."""
    from transformers import modeling_flash_attention_utils as utils

    calls.clear()
    five = "attention_wrapper" in inspect.signature(utils.lazy_import_flash_attention).parameters  # transformers 5

    def lazy_imports(*args, **kwargs):
        if five:
            return flash_attn_func, flash_attn_varlen_func, None, utils._pad_input, utils._unpad_input
        return flash_attn_func, flash_attn_varlen_func, utils._pad_input, utils._unpad_input

    monkeypatch.setattr(utils, "_lazy_imports", lazy_imports)
    _without_the_sink_bug(monkeypatch)
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_pad_fn", "_unpad_fn",
                 "_process_flash_kwargs_fn", "_flash_with_kvcache_fn"):  # fmt: skip
        if hasattr(utils, name):
            monkeypatch.setattr(utils, name, None)


class _NoSink:
    """What transformers 5.6.0's ``s_aux.to(dtype)`` needs to hand on ``None`` (huggingface/transformers#45588)."""

    def to(self, *args, **kwargs) -> None:
        return None


def _without_the_sink_bug(monkeypatch) -> None:
    """Under transformers 5.6.0, the model's own flash path (the reference here) passes a no-sink placeholder; the
    plugin refuses `flash_attn: fa2` there (``check_flash_attention``), so only the tests need this."""
    import transformers
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if transformers.__version__ != "5.6.0":
        return
    original = ALL_ATTENTION_FUNCTIONS["flash_attention_2"]

    def flash_attention_forward(*args, **kwargs):
        if kwargs.get("s_aux") is None:
            kwargs["s_aux"] = _NoSink()
        return original(*args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", flash_attention_forward)
