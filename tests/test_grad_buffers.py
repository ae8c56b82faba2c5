"""Gradient buffers: the same gradients as torch's default, kept in memory allocated once before the first step."""

import torch

from simpo_plugin.train.grad_buffers import GradientBuffers


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.second = torch.nn.Linear(8, 1)
        self.unused = torch.nn.Linear(2, 2)  # gets no gradient: must keep `grad None`, as under torch's default
        self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x))) * self.frozen.sum()


def twin_models() -> tuple[TwoLayers, TwoLayers]:
    torch.manual_seed(0)
    plain = TwoLayers()
    torch.manual_seed(0)
    return plain, TwoLayers()


def test_gradients_match_the_default_and_live_in_the_buffers() -> None:
    plain, buffered = twin_models()
    callback = GradientBuffers()
    callback.on_train_begin(None, None, None, model=buffered)
    addresses = {buffer.data_ptr() for buffer in callback.buffers}
    assert len(callback.buffers) == 6  # the trainable tensors (`unused` included), not `frozen`
    optimizers = [torch.optim.AdamW(model.parameters(), lr=0.1) for model in (plain, buffered)]
    for step in range(3):
        for model, optimizer in zip((plain, buffered), optimizers, strict=True):
            for micro_batch in range(2):  # gradient accumulation adds into the buffer
                x = torch.randn(4, 8, generator=torch.Generator().manual_seed(10 * step + micro_batch))
                model(x).pow(2).sum().backward()
            optimizer.step()
            if model is buffered:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                assert len(grads) == 4 and {grad.data_ptr() for grad in grads} < addresses
            model.zero_grad()  # set_to_none=True: the parameter lets go, the buffer keeps its memory
        for (name, a), b in zip(plain.named_parameters(), buffered.parameters(), strict=True):
            assert torch.equal(a, b), (step, name)
        assert buffered.unused.weight.grad is None and buffered.frozen.grad is None

    callback.on_train_end(None, None, None)
    buffered(torch.ones(1, 8)).sum().backward()  # hooks removed: the fresh gradient stays where backward put it
    assert buffered.first.weight.grad.data_ptr() not in addresses


def test_tensors_over_the_limit_keep_their_own_gradient() -> None:
    """Over glibc's mmap threshold a gradient is mapped and unmapped whole: a buffer would only hold its memory."""
    plain, buffered = twin_models()
    callback = GradientBuffers(max_bytes=255)  # `first.weight` (8x8 float32, 256 bytes) is over the limit
    callback.on_train_begin(None, None, None, model=buffered)
    assert callback.unbuffered == 1 and len(callback.buffers) == 5
    addresses = {buffer.data_ptr() for buffer in callback.buffers}
    optimizers = [torch.optim.AdamW(model.parameters(), lr=0.1) for model in (plain, buffered)]
    for step in range(2):
        for model, optimizer in zip((plain, buffered), optimizers, strict=True):
            model(torch.randn(4, 8, generator=torch.Generator().manual_seed(step))).pow(2).sum().backward()
            optimizer.step()
            if model is buffered:
                assert model.first.weight.grad.data_ptr() not in addresses
                assert model.first.bias.grad.data_ptr() in addresses
            model.zero_grad()
        for a, b in zip(plain.parameters(), buffered.parameters(), strict=True):
            assert torch.equal(a, b), step
    callback.on_train_end(None, None, None)
    assert callback.unbuffered == 0 and not callback.buffers
