"""Chunked label log-probs against the naive full-logits path: values, gradients, tying, freezing and memory.

Low-precision cases compare against the naive path run on the same low-precision inputs, so the tolerance only
has to cover matmul reduction order and the fp32 (chunked) vs input-dtype (naive) accumulation of grad_weight.
"""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from simpo_plugin.lean.kernel import chunked_label_logps, naive_label_logps


# (N, H, V, chunk_size): odd sizes with a ragged last chunk, an exact multiple, chunk >= N and chunk of one token.
SHAPES = ((37, 24, 101, 8), (64, 32, 257, 16), (20, 16, 50, 64), (9, 8, 33, 1))
# dtype -> (value tolerance, gradient tolerance) as dicts of atol / rtol.
TOLERANCES = {
    torch.float32: (dict(atol=1e-5, rtol=1e-5), dict(atol=1e-5, rtol=1e-5)),
    torch.bfloat16: (dict(atol=1e-2, rtol=1.6e-2), dict(atol=1e-2, rtol=1.6e-2)),
    torch.float16: (dict(atol=1e-3, rtol=1e-3), dict(atol=2e-3, rtol=2e-3)),
}
SOFTCAPS = (None, 30.0, 5.0)  # 5.0: logits of a few units, so tanh is far from the identity


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, bias: bool, seed: int = 0):
    """Leaf tensors with logits of a few units (std ~3) and a random upstream gradient."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * 3 / h**0.5).to(dtype).requires_grad_()
    b = torch.randn(v, generator=gen).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    grad_out = torch.randn(n, generator=gen)
    return hidden, weight, b, labels, grad_out


def grads_of(out: torch.Tensor, grad_out: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, tensors, grad_out))


class MaxOutputNumel(TorchDispatchMode):
    """Records the largest tensor any op produces: a probe for (N, V) buffers that is immune to allocator noise."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0
        self.matmuls: list[tuple[int, ...]] = []  # output shapes of matrix products

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.max_numel = max(self.max_numel, tensor.numel())
                if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                    self.matmuls.append(tuple(tensor.shape))
        return out


@pytest.mark.parametrize("softcap", SOFTCAPS)
@pytest.mark.parametrize("bias", (False, True))
@pytest.mark.parametrize("dtype", tuple(TOLERANCES), ids=str)
@pytest.mark.parametrize("n, h, v, chunk_size", SHAPES)
def test_matches_naive(n, h, v, chunk_size, dtype, bias, softcap):
    hidden, weight, b, labels, grad_out = make_inputs(n, h, v, dtype, bias)
    leaves = [hidden, weight] + ([b] if bias else [])

    out = chunked_label_logps(hidden, weight, labels, bias=b, softcap=softcap, chunk_size=chunk_size)
    ref = naive_label_logps(hidden, weight, labels, bias=b, softcap=softcap)
    value_tol, grad_tol = TOLERANCES[dtype]
    assert out.dtype == torch.float32 and out.shape == (n,)
    torch.testing.assert_close(out, ref, **value_tol)

    for got, want, leaf in zip(grads_of(out, grad_out, leaves), grads_of(ref, grad_out, leaves), leaves, strict=True):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape
        torch.testing.assert_close(got, want, **grad_tol)


@pytest.mark.parametrize("bias", (False, True))
def test_fp32_weights_under_bf16_autocast_match_the_naive_path(bias):
    """Mixed precision with fp32 master weights: the head matmul runs in bf16 in both paths, grads reach fp32."""
    hidden, weight, b, labels, grad_out = make_inputs(40, 24, 101, torch.float32, bias)
    leaves = [hidden, weight] + ([b] if bias else [])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_label_logps(hidden, weight, labels, bias=b, chunk_size=16)
        ref = naive_label_logps(hidden, weight, labels, bias=b)
    plain_fp32 = naive_label_logps(hidden, weight, labels, bias=b)
    value_tol, grad_tol = TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(out, ref, **value_tol)
    assert (out - ref).abs().max() < (ref - plain_fp32).abs().max()  # bf16 rounding shared, not fp32 vs bf16
    for got, want, leaf in zip(grads_of(out, grad_out, leaves), grads_of(ref, grad_out, leaves), leaves, strict=True):
        assert got.dtype == torch.float32 and got.shape == leaf.shape
        torch.testing.assert_close(got, want, **grad_tol)


def test_tied_embedding_and_head():
    """One Parameter as embedding and head: autograd must sum both uses, as in the naive path."""
    v, h, n = 53, 16, 29
    torch.manual_seed(0)
    embed = nn.Embedding(v, h)
    mixer = nn.Linear(h, h)
    ids, labels, grad_out = torch.randint(0, v, (n,)), torch.randint(0, v, (n,)), torch.randn(n)

    def param_grads(fn) -> list[torch.Tensor]:
        for p in (*embed.parameters(), *mixer.parameters()):
            p.grad = None
        hidden = torch.tanh(mixer(embed(ids)))
        fn(hidden, embed.weight, labels).backward(grad_out)
        return [p.grad.clone() for p in (*embed.parameters(), *mixer.parameters())]

    got = param_grads(lambda hd, w, lb: chunked_label_logps(hd, w, lb, softcap=5.0, chunk_size=7))
    want = param_grads(lambda hd, w, lb: naive_label_logps(hd, w, lb, softcap=5.0))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trainable", ("hidden", "weight", "bias", "hidden+bias"))
def test_frozen_inputs_get_no_gradient_work(trainable):
    """A frozen head (LoRA) gets no grad and no (V, H) work; frozen hidden gets no (C, H) rows either."""
    n, h, v, chunk = 24, 8, 97, 5
    hidden, weight, b, labels, grad_out = make_inputs(n, h, v, torch.float32, bias=True)
    for name, leaf in (("hidden", hidden), ("weight", weight), ("bias", b)):
        leaf.requires_grad_(name in trainable.split("+"))
    leaves = [leaf for leaf in (hidden, weight, b) if leaf.requires_grad]

    out = chunked_label_logps(hidden, weight, labels, bias=b, chunk_size=chunk)
    with MaxOutputNumel() as probe:
        got = grads_of(out, grad_out, leaves)
    want = grads_of(naive_label_logps(hidden, weight, labels, bias=b), grad_out, leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert ((v, h) in probe.matmuls) == weight.requires_grad
    assert ((chunk, h) in probe.matmuls) == hidden.requires_grad


def test_boundary_labels_and_large_logits():
    """Labels 0 and V-1, and logits in the hundreds: the chunked logsumexp must stay finite and exact."""
    n, h, v = 12, 16, 64
    hidden, weight, b, _, grad_out = make_inputs(n, h, v, torch.float32, bias=True, seed=3)
    with torch.no_grad():
        weight.mul_(40.0)
    labels = torch.tensor([0, v - 1] * (n // 2))
    leaves = [hidden, weight, b]
    out = chunked_label_logps(hidden, weight, labels, bias=b, chunk_size=5)
    ref = naive_label_logps(hidden, weight, labels, bias=b)
    assert torch.isfinite(out).all() and out.abs().max() > 100
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    for g, w in zip(grads_of(out, grad_out, leaves), grads_of(ref, grad_out, leaves), strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)  # gradients of tens: fp32 rounding is ~1e-5 here


def test_memory_is_bounded_by_chunk():
    """No (N, V) tensor is saved or even produced, in forward or backward; the naive path shows the probe works."""
    n, h, v, chunk = 512, 16, 32768, 64
    hidden, weight, _, labels, grad_out = make_inputs(n, h, v, torch.float32, bias=False)

    with MaxOutputNumel() as probe:
        out = chunked_label_logps(hidden, weight, labels, softcap=30.0, chunk_size=chunk)
        saved = out.grad_fn.saved_tensors
        out.backward(grad_out)
    assert saved[0] is hidden and saved[1] is weight  # the caller's tensors, not copies
    # hidden, weight, (no bias), labels, lse: the only O(N) addition is the (N,) logsumexp, nothing (N, V)
    assert saved[3] is None and sum(t.numel() for t in saved if t is not None) == n * h + v * h + n + n
    assert probe.max_numel <= max(chunk * v, v * h) < n * v

    with MaxOutputNumel() as naive_probe:
        naive_label_logps(hidden, weight, labels, softcap=30.0)
    assert naive_probe.max_numel == n * v


def test_no_grad_and_empty_input():
    hidden, weight, _, labels, _ = make_inputs(6, 4, 11, torch.float32, bias=False)
    with torch.no_grad():
        out = chunked_label_logps(hidden, weight, labels, chunk_size=4)
    assert out.grad_fn is None
    torch.testing.assert_close(out, naive_label_logps(hidden, weight, labels).detach())

    empty = chunked_label_logps(hidden[:0], weight, labels[:0])
    empty.sum().backward()
    assert empty.shape == (0,) and hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "hidden_shape, weight_shape, labels_shape, dtype, chunk_size",
    (((4, 8), (10, 7), (4,), torch.float32, 2), ((4, 8), (10, 8), (3,), torch.float32, 2),
     ((4, 8), (10, 8), (4,), torch.bfloat16, 2), ((4, 8), (10, 8), (4,), torch.float32, 0)),
)  # fmt: skip
def test_rejects_bad_arguments(hidden_shape, weight_shape, labels_shape, dtype, chunk_size):
    hidden, weight = torch.randn(hidden_shape), torch.randn(weight_shape, dtype=dtype)
    with pytest.raises(ValueError):
        chunked_label_logps(hidden, weight, torch.zeros(labels_shape, dtype=torch.long), chunk_size=chunk_size)
