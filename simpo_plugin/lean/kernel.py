"""Per-token label log-probabilities from final hidden states without materializing the full logits.

SimPO only needs ``log p(label_i | hidden_i)`` for the N kept response tokens, but the naive path
``log_softmax(lm_head(hidden).float()).gather(labels)`` builds (N, V) logits in the input dtype, an (N, V) fp32
copy and autograd keeps (N, V) buffers alive until backward. With V up to 256k that dominates activation memory.

Memory model (N tokens, H hidden size, V vocabulary, C = ``chunk_size``):

- saved for backward: hidden (N, H), weight (V, H), bias (V,), labels (N,) and the logsumexp (N,) fp32; the first
  three are the caller's own tensors (no copies), so the extra memory kept between passes is O(N);
- forward temporaries: a few (C, V) fp32 buffers per chunk, freed before the next chunk;
- backward temporaries: the same (C, V) buffers, plus the fp32 (V, H) grad_weight accumulator (cast to the weight's
  dtype at the end) and, for non-fp32 inputs, one (V, H) product per chunk in the input dtype, because a
  mixed-dtype in-place ``addmm_`` does not exist on every backend.

Mental model::

    forward:  for each chunk of C rows: logits = fp32(h_c @ W.T + b) -> softcap -> lse_c = logsumexp(logits)
                                        logp_c = logits[label] - lse_c        keep logp (N,), lse (N,)
    backward: for each chunk of C rows: recompute logits (same ops, same lse) -> p = exp(logits - lse_c)
                                        g = grad_out * (onehot(label) - p) * (1 - tanh^2 if softcap)
                                        grad_h[c] = g @ W;  grad_W += g.T @ h_c;  grad_b += g.sum(0)

The logits are recomputed in backward (activation checkpointing of one matmul) instead of being stored: storing
them would bring back the (N, V) buffer this module exists to avoid, and the recomputation costs one extra
(C, H) x (H, V) matmul per chunk, about a third more FLOPs than the naive forward + backward.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = ["chunked_label_logps", "naive_label_logps"]


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None):
    """fp32 logits of one chunk as ``nn.Linear`` + ``.float()`` + soft-capping would give them.

    Returns:
        ``(logits, tanh)`` where ``tanh`` is the (C, V) ``tanh(z / softcap)`` that backward needs for the
        soft-capping derivative, or None without soft-capping.
    """
    logits = F.linear(hidden, weight, bias).float()  # matmul in the input dtype, upcast after, like the naive path
    if softcap is None:
        return logits, None
    tanh = (logits / softcap).tanh_()
    return tanh * softcap, tanh


def _forward(
    hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None, softcap: float | None, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """Label log-probs and logsumexp, one (C, V) chunk at a time.

    Returns:
        ``(logps, lse)``, both (N,) fp32; ``lse`` is what backward needs to rebuild the softmax of a chunk.
    """
    n = hidden.shape[0]
    logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
    lse = torch.empty_like(logps)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        logits, _ = _chunk_logits(hidden[start:end], weight, bias, softcap)
        lse[start:end] = torch.logsumexp(logits, dim=-1)
        logps[start:end] = logits.gather(1, labels[start:end, None]).squeeze(1) - lse[start:end]
    return logps, lse


def _backward(
    grad_out: Tensor,
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Tensor | None,
    lse: Tensor,
    softcap: float | None,
    chunk_size: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. hidden, weight and bias, recomputing each chunk's logits.

    ``d logp_i / d logits_i = onehot(label_i) - softmax(logits_i)``; soft-capping multiplies by ``1 - tanh^2``. The
    chunk's gradient is formed in fp32, then cast to the input dtype, which is where the naive path's ``.float()``
    backward would cast it too, so both feed the same values to the matmuls.

    Args:
        needs: whether hidden, weight and bias need a gradient; the others are neither computed nor allocated
            (a frozen LM head under LoRA costs no (V, H) buffer).
    """
    need_hidden, need_weight, need_bias = needs
    grad_out = grad_out.float()
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    # fp32 accumulators: summing N / C per-chunk products in bf16 would lose precision with every chunk.
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
    for start in range(0, hidden.shape[0], chunk_size):
        end = min(start + chunk_size, hidden.shape[0])
        h = hidden[start:end]
        logits, tanh = _chunk_logits(h, weight, bias, softcap)
        grad = logits.sub_(lse[start:end, None]).exp_().neg_()  # -softmax, in place: no second (C, V) buffer
        grad[torch.arange(end - start, device=grad.device), labels[start:end]] += 1.0
        grad.mul_(grad_out[start:end, None])
        if tanh is not None:
            grad.mul_(tanh.square_().neg_().add_(1.0))
        g = grad.to(hidden.dtype)
        del logits, grad, tanh
        if need_hidden:
            grad_hidden[start:end] = g @ weight
        if need_weight:
            if g.dtype == torch.float32:
                grad_weight.addmm_(g.t(), h)
            else:
                grad_weight.add_(g.t() @ h)
        if need_bias:
            grad_bias.add_(g.sum(0, dtype=torch.float32))
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias


class _ChunkedLabelLogps(torch.autograd.Function):
    """Autograd glue only: the math lives in ``_forward`` / ``_backward``."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, bias, softcap, chunk_size, gather):
        # Autocast off in both passes: backward must recompute exactly the logits whose lse forward saved.
        with torch.autocast(hidden.device.type, enabled=False):
            logps, lse = _forward(hidden, weight, labels, bias, softcap, chunk_size)
        if gather is None:
            ctx.save_for_backward(hidden, weight, labels, bias, lse)
        else:  # partitioned parameters: their storage is released after forward and gathered again in backward
            ctx.save_for_backward(hidden, labels, lse)
            ctx.weight, ctx.bias = weight, bias
        ctx.softcap, ctx.chunk_size, ctx.gather = softcap, chunk_size, gather
        return logps

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.gather is None:
            hidden, weight, labels, bias, lse = ctx.saved_tensors
            gathered = nullcontext()
        else:
            (hidden, labels, lse), weight, bias = ctx.saved_tensors, ctx.weight, ctx.bias
            gathered = ctx.gather()
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3])
        with gathered, torch.autocast(hidden.device.type, enabled=False):
            grads = _backward(grad_out, hidden, weight, labels, bias, lse, ctx.softcap, ctx.chunk_size, needs)
        grad_hidden, grad_weight, grad_bias = grads
        return grad_hidden, grad_weight, None, grad_bias, None, None, None


def chunked_label_logps(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 256,
    gather: Callable[[], AbstractContextManager] | None = None,
) -> Tensor:
    """``log p(labels_i | hidden_i)`` under the LM head, with (C, V) instead of (N, V) temporary memory.

    Values and gradients equal ``naive_label_logps`` up to matmul reduction order, under autocast too: there the
    inputs are cast to the autocast dtype first (differentiably), as ``nn.Linear`` would cast them. Labels must be
    valid vocabulary ids (drop ignored positions such as -100 before calling), as they are not checked to avoid a
    device sync.

    Args:
        hidden: (N, H) final hidden states of the kept tokens, any float dtype.
        weight: (V, H) LM-head weight in the dtype of ``hidden``; may be tied to the input embedding.
        labels: (N,) int64 token ids in ``[0, V)``.
        bias: optional (V,) LM-head bias.
        softcap: Gemma-2 final-logit soft-capping ``softcap * tanh(logits / softcap)``, applied in fp32.
        chunk_size: tokens per chunk C; the peak temporary is a few (C, V) fp32 buffers.
        gather: for a weight whose storage a framework releases between forward and backward (DeepSpeed ZeRO-3
            partitions it), a function returning a context manager under which ``weight`` and ``bias`` are whole
            again. Backward then runs inside it; the caller passes them whole to this call. Without it, backward
            uses the tensors saved by forward.

    Returns:
        (N,) fp32 log-probabilities, differentiable w.r.t. hidden, weight and bias.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # as nn.Linear under autocast: the matmul runs in the autocast dtype
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"Need (N, H) hidden and (V, H) weight, got {tuple(hidden.shape)}, {tuple(weight.shape)}.")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"Expected labels of shape ({hidden.shape[0]},), got {tuple(labels.shape)}.")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype, as in nn.Linear.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    return _ChunkedLabelLogps.apply(hidden, weight, labels, bias, softcap, chunk_size, gather)


def naive_label_logps(
    hidden: Tensor, weight: Tensor, labels: Tensor, *, bias: Tensor | None = None, softcap: float | None = None
) -> Tensor:
    """Reference: full (N, V) logits, fp32 ``log_softmax`` and a gather, differentiated by plain autograd.

    Returns:
        (N,) fp32 log-probabilities, the baseline ``chunked_label_logps`` is tested and benchmarked against.
    """
    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits, dim=-1).gather(1, labels[:, None]).squeeze(1)
