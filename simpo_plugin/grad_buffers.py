"""Gradient buffers for CPU training: each step's gradients end up in memory allocated once, before the first step.

Why: under torch's ``zero_grad(set_to_none=True)`` a step's gradients are the tensors its backward allocated,
alive until the step ends, in the middle of the heap among that step's activations. Freed, they leave holes that
the next step's differently sized tensors only partly reuse, and glibc keeps its heap's freed memory, so peak RSS
grows from step to step (docs/performance.md). Copied into a fixed buffer, a fresh gradient is freed at once,
like any activation. Values are unchanged, and a parameter that gets no gradient still has ``grad None``.
"""

from functools import partial
from typing import Any

import torch
from llamafactory.extras import logging
from transformers import TrainerCallback


logger = logging.get_logger("llamafactory.simpo")


def _move_into(buffer: torch.Tensor, param: torch.Tensor) -> None:
    """Post-accumulate hook: the parameter's gradient now lives in ``buffer`` (a later micro-batch adds to it)."""
    grad = param.grad
    if grad is None or grad is buffer or grad.shape != buffer.shape or grad.dtype != buffer.dtype:
        return
    if grad.layout != torch.strided:  # sparse gradients (e.g. sparse embeddings) keep their own tensor
        return
    buffer.copy_(grad)
    param.grad = buffer


class GradientBuffers(TrainerCallback):
    """Allocates one buffer per trainable parameter at train begin and routes its gradient there each step."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []
        self._handles: list[Any] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None or self._handles:
            return
        for param in model.parameters():
            if param.requires_grad and param.layout == torch.strided:
                buffer = torch.empty_like(param, requires_grad=False)
                self.buffers.append(buffer)
                self._handles.append(param.register_post_accumulate_grad_hook(partial(_move_into, buffer)))
        size = sum(buffer.numel() * buffer.element_size() for buffer in self.buffers)
        logger.info_rank0(
            f"CPU training: gradients of {len(self.buffers)} tensors kept in buffers allocated once "
            f"({size / 2**20:.0f} MiB), so freed gradients do not fragment the heap (simpo_cpu_gradient_buffers)."
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.buffers.clear()
