"""The block attention route: packed, prefix-shared pairs attend exactly, with no padding and no dense mask.

A packed row holds, per pair, ``[prompt][chosen][rejected]`` (or unshared ``[prompt][response]`` blocks). Its
attention is a handful of small, independent problems, one per *segment* of queries:

- ``[prompt][chosen]``: plain causal self-attention;
- ``[rejected]``: queries attend to the prompt's keys and to their own, causally: the keys are
  ``[prompt; rejected]`` and the mask is causal aligned to the bottom right (the keys' position ids run
  contiguously and end where the queries' end).

Computing each segment alone replaces one (L x L) masked attention over the whole row, which materializes the
scores of every query against every key, by the sum of the segments' own (q x k) problems. Per implementation:

- ``sdpa``: one SDPA call per segment, ``is_causal`` or torch's lower-right ``CausalBias`` (both have CUDA's flash
  and memory-efficient kernels; no bool mask), GQA through ``enable_gqa``;
- ``eager``: the model's own eager computation per segment (Gemma-2's soft-capped scores);
- ``flash_attention_2`` / ``_3``: one ``flash_attn_varlen_func`` call per layer for the whole row, the keys
  gathered per segment; flash-attn's causal mask is aligned to the bottom right (>= 2.1), each segment's mask.

How the model's own forward reaches it: the route is registered in transformers' ``AttentionInterface`` (and
``AttentionMaskInterface``) as ``simpo_<implementation>``, and the model's config is switched to that name once
(:func:`install_route`; it is not saved with the model). Called with a :class:`Segments` keyword argument, which
:class:`~simpo_plugin.lean.sequence.SequenceLogps` passes through ``model(**inputs)``, the route computes the
segments; called without one (evaluation, generation, the plain path) it hands over to the original
implementation, unchanged. Because the segments travel as a forward argument, gradient checkpointing recomputes
the same attention, and DDP, DeepSpeed and PEFT wrappers pass it through. The row's attention mask is a
(1, 1, 1, 1) placeholder that transformers hands over as is, so no (L x L) mask is ever built.

A layer's sliding window (the ``sliding_window`` its attention receives: Mistral, Qwen2, Gemma-2/3, Phi-3) is
applied on position ids, ``q - k < window``: as a (q x k) mask for an SDPA segment the window cuts into (the
others keep their mask-free call), in the eager mask, and as flash-attention's ``window_size``.
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right


FLASH_BASES = ("flash_attention_2", "flash_attention_3")
ROUTES = {"sdpa": "simpo_sdpa", "eager": "simpo_eager"} | {base: f"simpo_{base}" for base in FLASH_BASES}
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)
_registered = False


@dataclass
class Segment:
    """Queries ``[start, end)`` of the row attend to the keys of ``key_ranges``, concatenated.

    The keys' position ids run contiguously and end where the queries' end, so the attention is causal aligned to
    the bottom right: query ``i`` of ``q`` sees the first ``k - q + i + 1`` keys (plain causal when ``k == q``).
    No mask is stored; one is built, on the queries' device, only where a sliding window cuts into the segment
    (or for eager attention).
    """

    start: int
    end: int
    key_ranges: tuple[tuple[int, int], ...]
    _allowed: dict[tuple[int | None, torch.device], Tensor] = field(default_factory=dict, init=False, repr=False)

    @property
    def num_queries(self) -> int:
        return self.end - self.start

    @property
    def num_keys(self) -> int:
        return sum(b - a for a, b in self.key_ranges)

    @property
    def causal_square(self) -> bool:
        """The keys are the queries themselves: plain (top-left) causal."""
        return self.num_keys == self.num_queries

    @property
    def reach(self) -> int:
        """The largest query-to-key distance in position ids: a window of at least ``reach + 1`` changes nothing."""
        return self.num_keys - 1

    def allowed(self, window: int | None, device: torch.device) -> Tensor:
        """(q, k) bool "may attend": bottom-right causal, and ``q - k < window`` in position ids when a window is
        given (transformers' ``sliding_window_overlay``). Built once per window and device, from ``arange``s."""
        if (window, device) not in self._allowed:
            queries = torch.arange(self.num_keys - self.num_queries, self.num_keys, device=device)
            distance = queries[:, None] - torch.arange(self.num_keys, device=device)[None, :]
            allowed = distance >= 0
            if window is not None:
                allowed &= distance < window
            self._allowed[window, device] = allowed
        return self._allowed[window, device]


@dataclass(frozen=True)
class VarlenIndex:
    """A packed row's segments as one varlen attention problem (flash-attention's ``flash_attn_varlen_func``).

    ``cu_seqlens_q`` / ``cu_seqlens_k``: (S + 1,) int32 offsets of each segment's queries in the row and of its keys
    in the gathered keys; ``max_seqlen_q`` / ``max_seqlen_k``: the longest of each, as Python ints (no host sync in
    the kernel call); ``key_index``: (K,) row positions of the gathered keys, None when every segment's keys are its
    own queries (the row itself).
    """

    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    key_index: Tensor | None


@dataclass
class Segments:
    """The segments of one packed row, in row order (they tile the row)."""

    items: list[Segment]
    calls: int = 0  # attention layers that computed them: fewer than the model's layers means a layer bypassed it
    _varlen: dict[torch.device, VarlenIndex] = field(default_factory=dict, init=False, repr=False)

    def moved(self, move: Callable[[Tensor], Tensor]) -> "Segments":
        """The same segments with each varlen index built so far passed through ``move`` (a copy to a device)."""
        moved = Segments(self.items)
        for index in self._varlen.values():
            key_index = move(index.key_index) if index.key_index is not None else None
            index = replace(index, cu_seqlens_q=move(index.cu_seqlens_q), cu_seqlens_k=move(index.cu_seqlens_k),
                            key_index=key_index)  # fmt: skip
            moved._varlen[index.cu_seqlens_q.device] = index
        return moved

    def varlen(self, device: torch.device) -> VarlenIndex:
        """The segments as one varlen problem on ``device``, built once per batch (one host-to-device copy)."""
        if device not in self._varlen:
            queries, keys, index = [0], [0], []
            for seg in self.items:
                queries.append(queries[-1] + seg.num_queries)
                keys.append(keys[-1] + seg.num_keys)
                index += [j for a, b in seg.key_ranges for j in range(a, b)]
            shared = any(not seg.causal_square for seg in self.items)
            packed = torch.tensor(queries + keys + (index if shared else []), dtype=torch.int64).to(device)
            count = len(queries)
            self._varlen[device] = VarlenIndex(
                cu_seqlens_q=packed[:count].to(torch.int32),
                cu_seqlens_k=packed[count : 2 * count].to(torch.int32),
                max_seqlen_q=max(seg.num_queries for seg in self.items),
                max_seqlen_k=max(seg.num_keys for seg in self.items),
                key_index=packed[2 * count :] if shared else None,
            )
        return self._varlen[device]


def _keys(tensor: Tensor, ranges: tuple[tuple[int, int], ...]) -> Tensor:
    parts = [tensor[:, :, a:b] for a, b in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _sdpa_segment(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, seg: Segment, dropout: float, scaling, window: int | None
) -> Tensor:
    """One segment on SDPA without a mask: ``is_causal`` when square, else torch's lower-right ``CausalBias``
    (which CUDA's flash and memory-efficient kernels take as is). Only a window that cuts into the segment needs
    an explicit mask."""
    groups = getattr(module, "num_key_value_groups", 1)
    if window is not None and seg.reach >= window:  # the window cuts into this segment: an explicit mask
        if groups > 1:  # with a mask, CUDA's only GQA kernel is math: copy K/V per head, keep memory-efficient
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        mask = seg.allowed(window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
    gqa = {}
    if groups > 1:  # grouped-query attention without copying K/V per head
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if seg.causal_square:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, **gqa)
    mask = causal_lower_right(seg.num_queries, seg.num_keys)
    if torch.is_autocast_enabled(q.device.type):  # the bias dispatches before autocast would cast q, k, v alike
        q, k, v = (t.to(torch.get_autocast_dtype(q.device.type)) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, **gqa)


def _eager_segment(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, seg: Segment, dropout: float, scaling, softcap, window
) -> Tensor:
    """The model's eager attention on one segment: scaled scores, soft-cap, mask (+ window), fp32 softmax."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * (scaling if scaling is not None else module.head_dim**-0.5)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~seg.allowed(window, q.device), torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, v)


def _flash_functions(base: str) -> tuple[Any, Any]:
    """transformers' varlen kernel for ``base`` (flash-attn 2, 3, or a hub kernel) and its kwargs builder."""
    from transformers.modeling_flash_attention_utils import lazy_import_flash_attention

    functions, process_kwargs = lazy_import_flash_attention(base)
    return functions[1], process_kwargs


def _flash_dtype(module: nn.Module, *tensors: Tensor) -> torch.dtype | None:
    """The one 16-bit dtype flash-attention must get q, k and v in, or None when they already share one.

    fp32 states (RoPE's fp32 ``cos`` under autocast, PEFT's fp32 norms) go to autocast's dtype, else the dtype the
    model was quantized from, else its first Linear's (transformers' ``get_target_dtype`` order); states that merely
    differ go to the query's dtype.
    """
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and tensors[0].dtype != torch.float32:
        return None
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    if torch.float32 in dtypes and tensors[0].dtype == torch.float32:
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False) or hasattr(config, "_pre_quantization_dtype"):
            return getattr(config, "_pre_quantization_dtype", None) or config.dtype
        linear = next((layer for layer in module.modules() if isinstance(layer, nn.Linear)), None)
        target = linear.weight.dtype if linear is not None else tensors[0].dtype
        return None if len(dtypes) == 1 and target == torch.float32 else target
    return tensors[0].dtype


def _flash_segments(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, segments: Segments, base: str,
                    kwargs: dict) -> Tensor:  # fmt: skip
    """All segments of the row in one varlen call: queries are the row itself, keys are gathered per segment, and
    the kernel's causal mask is aligned to the bottom right (flash-attn >= 2.1), which is each segment's mask."""
    index = segments.varlen(query.device)
    varlen_fn, process_kwargs = _flash_functions(base)
    q = query[0].transpose(0, 1)  # (L, H, D)
    k, v = key[0], value[0]  # (H_kv, L, D)
    if index.key_index is not None:
        k, v = k.index_select(1, index.key_index), v.index_select(1, index.key_index)
    k, v = k.transpose(0, 1), v.transpose(0, 1)  # (K, H_kv, D): GQA stays ungrouped, the kernel takes it
    target = _flash_dtype(module, q, k, v)
    if target is not None:
        q, k, v = q.to(target), k.to(target), v.to(target)
    flash_kwargs = process_kwargs(
        query_length=index.max_seqlen_q,
        key_length=index.max_seqlen_k,
        is_causal=True,
        dropout=kwargs.get("dropout", 0.0),
        softmax_scale=kwargs.get("scaling"),
        sliding_window=kwargs.get("sliding_window"),
        use_top_left_mask=False,
        softcap=kwargs.get("softcap"),
    )
    out = varlen_fn(
        q, k, v, cu_seqlens_q=index.cu_seqlens_q, cu_seqlens_k=index.cu_seqlens_k,
        max_seqlen_q=index.max_seqlen_q, max_seqlen_k=index.max_seqlen_k, **flash_kwargs,
    )  # fmt: skip
    return (out[0] if isinstance(out, tuple) else out)[None]


def _route(base: str):
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
        segments = kwargs.pop("simpo_segments", None)
        if segments is None:
            if base not in FLASH_BASES:
                return _base_attention(module, base)(module, query, key, value, attention_mask, **kwargs)
            with _named(module.config, base):
                return _base_attention(module, base)(module, query, key, value, attention_mask, **kwargs)
        if query.shape[0] != 1 or kwargs.get("s_aux") is not None:
            raise NotImplementedError("the block route takes one packed row and no attention sinks")
        segments.calls += 1
        if base in FLASH_BASES:
            return _flash_segments(module, query, key, value, segments, base, kwargs), None
        dropout, scaling = kwargs.get("dropout", 0.0), kwargs.get("scaling")
        window = kwargs.get("sliding_window")  # this layer's (None on full-attention layers)
        outputs = []
        for seg in segments.items:
            q = query[:, :, seg.start : seg.end]
            k, v = _keys(key, seg.key_ranges), _keys(value, seg.key_ranges)
            if base == "sdpa":
                outputs.append(_sdpa_segment(module, q, k, v, seg, dropout, scaling, window))
            else:
                outputs.append(_eager_segment(module, q, k, v, seg, dropout, scaling, kwargs.get("softcap"), window))
        return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None

    attention.__name__ = f"simpo_{base}_attention"
    return attention


@contextmanager
def _named(config: Any, base: str) -> Iterator[None]:
    """Under flash-attention, the base implementation looks its kernel up by ``config._attn_implementation``: it
    must read the base name while it runs (generation, evaluation), then the route's again."""
    routed = config._attn_implementation
    config._attn_implementation = base
    try:
        yield
    finally:
        config._attn_implementation = routed


def _base_attention(module: nn.Module, base: str):
    if base == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward  # the model's own (soft-capping) eager
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[base]


def register_routes() -> None:
    """Register the routes with transformers' attention and mask interfaces (idempotent); each route's masks are
    its base implementation's."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for base, name in ROUTES.items():
        AttentionInterface.register(name, _route(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    _registered = True


def install_route(model: nn.Module) -> bool:
    """Point ``model`` (the unwrapped one) at the route of its attention implementation; False if it has none
    (another implementation, or flash-attn < 2.1, whose causal mask is aligned top-left)."""
    if not route_available(model):
        return False
    current = getattr(model.config, "_attn_implementation", None)
    if current in ROUTES:  # not routed yet
        register_routes()
        model.config._attn_implementation = ROUTES[current]
    return True


def route_available(model: nn.Module) -> bool:
    """Whether :func:`install_route` would point ``model`` at a route (or has already)."""
    current = getattr(model.config, "_attn_implementation", None)
    if current in ROUTES.values():
        return True
    return current in ROUTES and not (current in FLASH_BASES and _flash_causal_top_left())


def _flash_causal_top_left() -> bool:
    from transformers.modeling_flash_attention_utils import flash_attn_supports_top_left_mask

    return bool(flash_attn_supports_top_left_mask())


def placeholder_mask(device: torch.device) -> Tensor:
    """The (1, 1, 1, 1) mask a routed forward gets: transformers passes a 4D mask on untouched."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)
