"""Per-sequence response log-probs: the lean path (response positions only, chunked head) and the plain path.

Lean path, for a model that splits into body + LM head::

    model(**layout)                      the wrapped model's own forward (DDP/DeepSpeed hooks, LoRA, checkpointing)
      body -> hidden (R, L, H)
      head pre-hook: hidden.view(R*L, H)[predictors] -> (N, H), only the states that predict a response token
                     -> chunked label log-probs (N,) fp32, largest temporary (chunk, V)
                     then hand the head an empty (R, 0, H) slice, so no (R, L, V) logits exist
    index_add by sequence id             (2B,) sums; lengths = tokens per sequence

The chunked head is :func:`simpo_plugin.lean.kernel.chunked_label_logps` on the head's weight when the head is a
plain ``nn.Linear``, run inside the head's own forward call, where the weight is whole even when DeepSpeed ZeRO-3
partitions it (the kernel's backward gathers it again; see :mod:`simpo_plugin.lean.holding`). Any other head (LoRA
on the head, a quantized layer) is called as a module on the kept states, chunk by chunk under activation
checkpointing, so the framework's own hooks still run.
"""

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .holding import partitioned, zero3_gather
from .kernel import chunked_label_logps
from .layout import PairLayout, additive_mask


class HeadNotCalledError(RuntimeError):
    """The model's forward did not call its output embedding exactly once, so it cannot be split."""


def model_inputs(layout: PairLayout, attn_implementation: str | None, dtype: torch.dtype) -> dict[str, Tensor]:
    """The forward's keyword arguments; ``attn_implementation`` is the base one (``eager`` wants additive masks)."""
    inputs = {"input_ids": layout.input_ids}
    mask = layout.attention_mask
    if layout.segments is not None:
        inputs["simpo_segments"] = layout.segments  # the route reads these; the mask is a placeholder
    elif isinstance(mask, dict) and attn_implementation == "eager":  # one per layer type
        mask = {kind: additive_mask(m, dtype) for kind, m in mask.items()}
    elif mask is not None and not isinstance(mask, dict) and mask.dim() == 4 and attn_implementation == "eager":
        mask = additive_mask(mask, dtype)
    if mask is not None:
        inputs["attention_mask"] = mask
    if layout.position_ids is not None:
        inputs["position_ids"] = layout.position_ids
    if layout.varlen_kwargs is not None:
        inputs |= layout.varlen_kwargs
    return inputs


def _label_logps_from_logits(logits: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
    logits = logits.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def _is_kernel_head(head: nn.Module) -> bool:
    """A plain ``nn.Linear`` (possibly ZeRO-3-partitioned, possibly frozen): the chunked kernel computes it."""
    return type(head) is nn.Linear


def _kernel_logps(head: nn.Linear, hidden: Tensor, targets: Tensor, softcap: float | None, chunk_size: int) -> Tensor:
    """The chunked kernel on the head's weight; called while the weight is whole (inside the head's forward)."""
    params = partitioned(head)
    gather = zero3_gather(params) if params else None
    return chunked_label_logps(
        hidden, head.weight, targets, bias=head.bias, softcap=softcap, chunk_size=chunk_size, gather=gather
    )


def _module_logps(head: nn.Module, hidden: Tensor, targets: Tensor, softcap: float | None, chunk_size: int) -> Tensor:
    """A head that is not a plain Linear (LoRA on the head, a quantized layer): the module itself, per chunk.

    Each chunk runs under activation checkpointing, so only (chunk, V) logits exist at a time. Partitioned (ZeRO-3)
    parameters cannot be recomputed that way (they are released between forward and backward), so such a head is
    called once on all N states and autograd keeps its (N, V) logits: still only the response positions.
    """

    def chunk_logps(h: Tensor, y: Tensor) -> Tensor:
        return _label_logps_from_logits(head(h), y, softcap)

    if partitioned(head):
        return chunk_logps(hidden, targets)
    pieces = [
        checkpoint(chunk_logps, hidden[i : i + chunk_size], targets[i : i + chunk_size], use_reentrant=False)
        for i in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def lean_token_logps(
    model: nn.Module,
    head: nn.Module,
    inputs: dict[str, Tensor],
    layout: PairLayout,
    softcap: float | None,
    chunk_size: int,
    check: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(N,) fp32 log-probs of the response tokens, computing the head only where a response token is predicted.

    A plain Linear head is computed inside its own forward call, where every framework holds its weight whole; any
    other head is called on the kept states after the forward. Either way the states are taken as the forward hands
    them to the head, before any framework's pre-hook wraps them: DeepSpeed ZeRO-3 ties its per-module backward
    bookkeeping to the wrapped input, and the head's own (empty) output never sees a backward.

    ``check`` (K,) indexes response tokens to verify in the same forward: the head is handed their K hidden states
    instead of an empty slice, so the model's own logits for them come back through everything its
    forward does after the head (a logit scale, soft-capping), computed from the very states the lean values used:
    dropout and NEFTune noise are the same on both sides. The second value is their (K,) fp32 log-probs, or None
    when the forward reshaped the head's output.
    """
    received: list[Tensor] = []
    computed: list[Tensor] = []
    in_forward = _is_kernel_head(head)

    def receive(module: nn.Module, args: tuple) -> None:
        received.append(args[0])

    def compute(module: nn.Module, args: tuple) -> tuple:
        hidden = received[-1]
        states = hidden.reshape(-1, hidden.shape[-1])[layout.predictors]
        computed.append(_kernel_logps(module, states, layout.targets, softcap, chunk_size) if in_forward else states)
        if check is not None:
            # not detached: DDP's find_unused_parameters traces used parameters back from the outputs
            return (args[0].reshape(-1, args[0].shape[-1])[layout.predictors[check]][None], *args[1:])
        return (args[0][..., :0, :], *args[1:])

    handles = [head.register_forward_pre_hook(receive, prepend=True), head.register_forward_pre_hook(compute)]
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    if len(computed) != 1:
        raise HeadNotCalledError(f"the output embedding was called {len(computed)} times in one forward")
    checked = None
    if check is not None and logits.shape[:-1] == (1, check.numel()):
        with torch.no_grad():
            checked = _label_logps_from_logits(logits[0].detach(), layout.targets[check], softcap=None)
    del logits
    if in_forward:
        return computed[0], checked
    return _module_logps(head, computed[0], layout.targets, softcap, chunk_size), checked


def plain_token_logps(model: nn.Module, inputs: dict[str, Tensor], layout: PairLayout) -> Tensor:
    """(N,) fp32 log-probs from the model's full logits, the way every other implementation computes them."""
    logits = model(**inputs, use_cache=False).logits
    return _label_logps_from_logits(logits.reshape(-1, logits.shape[-1])[layout.predictors], layout.targets, None)


def sequence_sums(token_logps: Tensor, layout: PairLayout) -> tuple[Tensor, Tensor]:
    """(2B,) summed log-probs and (2B,) lengths, chosen sequences first."""
    sums = token_logps.new_zeros(2 * layout.num_pairs).index_add(0, layout.sequence_ids, token_logps)
    return sums, layout.lengths()
