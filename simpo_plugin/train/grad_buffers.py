"""Gradient buffers for CPU training: each step's gradients end up in memory allocated once, before the first step.

Why: under torch's ``zero_grad(set_to_none=True)`` a step's gradients are the tensors its backward allocated,
alive until the step ends, in the middle of the heap among that step's activations. Freed, they leave holes that
the next step's differently sized tensors only partly reuse, and glibc keeps its heap's freed memory, so peak RSS
grows from step to step (docs/performance.md). Copied into a fixed buffer, a fresh gradient is freed at once,
like any activation. Values are unchanged, and a parameter that gets no gradient still has ``grad None``.
Tensors over glibc's largest mmap threshold (32 MiB on 64-bit) get no buffer: their memory is mapped and unmapped
whole, so they cannot fragment the heap, and a buffer would only hold their size through the whole step.
"""

from functools import partial
from typing import Any

import torch
from llamafactory.extras import logging
from transformers import TrainerCallback


logger = logging.get_logger("llamafactory.simpo")

MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger blocks are always mmapped


def _move_into(buffer: torch.Tensor, param: torch.Tensor) -> None:
    """Post-accumulate hook: the parameter's gradient now lives in ``buffer`` (a later micro-batch adds to it)."""
    grad = param.grad
    if grad is None or grad is buffer or grad.layout != torch.strided:  # sparse gradients keep their own tensor
        return
    if grad.shape != buffer.shape or grad.dtype != buffer.dtype:
        return
    buffer.copy_(grad)
    param.grad = buffer


class GradientBuffers(TrainerCallback):
    """Allocates one buffer per trainable parameter at train begin and routes its gradient there each step."""

    def __init__(self, max_bytes: int = MMAP_THRESHOLD_MAX) -> None:
        self.max_bytes = max_bytes
        self.buffers: list[torch.Tensor] = []
        self.unbuffered = 0  # trainable tensors over ``max_bytes``
        self._handles: list[Any] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None or self._handles:
            return
        for param in model.parameters():
            if not param.requires_grad or param.layout != torch.strided:
                continue
            if param.numel() * param.element_size() > self.max_bytes:
                self.unbuffered += 1
                continue
            buffer = torch.empty_like(param, requires_grad=False)
            self.buffers.append(buffer)
            self._handles.append(param.register_post_accumulate_grad_hook(partial(_move_into, buffer)))
        size = sum(buffer.numel() * buffer.element_size() for buffer in self.buffers)
        large = f"; {self.unbuffered} over {self.max_bytes / 2**20:.0f} MiB keep their own" if self.unbuffered else ""
        logger.info_rank0(
            f"CPU training: gradients of {len(self.buffers)} tensors kept in buffers allocated once "
            f"({size / 2**20:.0f} MiB{large}), so freed gradients do not fragment the heap "
            "(simpo_cpu_gradient_buffers)."
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.buffers.clear()
        self.unbuffered = 0
