"""Stop a run at the first non-finite gradient, before the optimizer step can write it into the weights.

A NaN or Inf loss yields non-finite gradients, so checking gradients right before ``optimizer.step()`` catches
both. Because the check runs before the step, the weights never become non-finite, and the exception ends the
run before the workflow saves anything: every checkpoint on disk predates the failure and stays loadable.
"""

from typing import Any

import torch
from transformers import TrainerCallback


class NonFiniteError(RuntimeError):
    """A gradient was NaN or Inf; raised before the optimizer step."""


class NonFiniteGuard(TrainerCallback):
    """Raises :class:`NonFiniteError` naming the step when any gradient is NaN or Inf."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if not grads:  # e.g. DeepSpeed keeps gradients in its own buffers (and checks overflow itself)
            return
        norms = torch._foreach_norm(grads)
        if bool(torch.isfinite(torch.stack(norms)).all()):
            return
        names = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        raise NonFiniteError(
            f"simpo-plugin: non-finite gradient at step {state.global_step + 1} (in {len(names)} tensors, first "
            f"`{names[0] if names else '?'}`); stopped before the optimizer step, so no checkpoint holds non-finite "
            "weights. Lower `learning_rate`, check the data at this step, or prefer bf16 over fp16."
        )
