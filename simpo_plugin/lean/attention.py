"""The block attention route: packed, prefix-shared pairs attend exactly, with no padding and no dense mask.

A packed row holds, per pair, ``[prompt][chosen][rejected]`` (or unshared ``[prompt][response]`` blocks). Its
attention is a handful of small, independent problems, one per *segment* of queries:

- ``[prompt][chosen]``: plain causal self-attention (SDPA ``is_causal``);
- ``[rejected]``: queries attend to the prompt's keys and to their own, causally: the keys are
  ``[prompt; rejected]`` and the mask is bottom-right causal, which a position rule gives directly:
  a query may see a key whose position id is not larger than its own.

Computing each segment alone replaces one (L x L) masked attention over the whole row, which materializes the
scores of every query against every key, by the sum of the segments' own (q x k) problems.

How the model's own forward reaches it: the route is registered in transformers' ``AttentionInterface`` (and
``AttentionMaskInterface``) under ``simpo_sdpa`` / ``simpo_eager``, and the model's config is switched to that
name once (:func:`install_route`; it is not saved with the model). Called with a :class:`Segments` keyword
argument, which :class:`~simpo_plugin.lean.sequence.SequenceLogps` passes through ``model(**inputs)``, the route
computes the segments; called without one (evaluation, generation, the plain path) it hands over to the
original implementation, unchanged. Because the segments travel as a forward argument, gradient checkpointing
recomputes the same attention, and DDP, DeepSpeed and PEFT wrappers pass it through. The row's attention mask is
a (1, 1, 1, 1) placeholder that transformers hands over as is, so no (L x L) mask is ever built.

Eager attention (Gemma-2's soft-capped scores) is computed the way the model's own eager function computes it,
per segment. A layer's sliding window (the ``sliding_window`` its attention receives: Mistral, Qwen2, Gemma-2/3,
Phi-3) is applied on position ids, ``q - k < window``, in both routes; an SDPA segment that the window does not
cut into keeps its mask-free causal call.
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right


ROUTES = {"sdpa": "simpo_sdpa", "eager": "simpo_eager"}
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


@dataclass
class Segments:
    """The segments of one packed row, in row order (they tile the row)."""

    items: list[Segment]
    calls: int = 0  # how many attention layers computed them: 0 after a forward means the route was bypassed


def _keys(tensor: Tensor, ranges: tuple[tuple[int, int], ...]) -> Tensor:
    parts = [tensor[:, :, a:b] for a, b in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _sdpa_segment(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, seg: Segment, dropout: float, scaling, window: int | None
) -> Tensor:
    """One segment on SDPA without a mask: ``is_causal`` when square, else torch's lower-right ``CausalBias``
    (which CUDA's flash and memory-efficient kernels take as is). Only a window that cuts into the segment needs
    an explicit mask."""
    gqa = {}
    if getattr(module, "num_key_value_groups", 1) > 1:  # grouped-query attention without copying K/V per head
        if _SDPA_GQA:
            gqa = {"enable_gqa": True}
        else:
            k, v = (t.repeat_interleave(module.num_key_value_groups, dim=1) for t in (k, v))
    if window is not None and seg.reach >= window:  # the window cuts into this segment
        mask = seg.allowed(window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, **gqa)
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


def _route(base: str):
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
        segments = kwargs.pop("simpo_segments", None)
        if segments is None:
            return _base_attention(module, base)(module, query, key, value, attention_mask, **kwargs)
        if query.shape[0] != 1 or kwargs.get("s_aux") is not None:
            raise NotImplementedError("the block route takes one packed row and no attention sinks")
        segments.calls += 1
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


def _base_attention(module: nn.Module, base: str):
    if base == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    return sys.modules[type(module).__module__].eager_attention_forward  # the model's own (soft-capping) eager


def register_routes() -> None:
    """Register ``simpo_sdpa`` / ``simpo_eager`` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    for base, name in ROUTES.items():
        AttentionInterface.register(name, _route(base))
        AttentionMaskInterface.register(name, sdpa_mask if base == "sdpa" else eager_mask)
    _registered = True


def install_route(model: nn.Module) -> bool:
    """Point ``model`` (the unwrapped one) at the route of its attention implementation; False if it has none."""
    config = model.config
    current = getattr(config, "_attn_implementation", None)
    if current in ROUTES.values():
        return True
    if current not in ROUTES:
        return False
    register_routes()
    config._attn_implementation = ROUTES[current]
    return True


def placeholder_mask(device: torch.device) -> Tensor:
    """The (1, 1, 1, 1) mask a routed forward gets: transformers passes a 4D mask on untouched."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)
