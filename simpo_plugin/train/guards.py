"""Stop a run at the first non-finite gradient, before any checkpoint or the final model can hold what it wrote.

A NaN or Inf loss yields non-finite gradients, so checking the gradients' norm before ``optimizer.step()`` catches
both. The check costs the step no wait for the device: the norm is the one the host's gradient clipping has just
computed (else one fused norm over the gradients), and its verdict is copied to the host without blocking and read
at the next optimizer step (:class:`~simpo_plugin.ranks.Later`). It is read at once whenever the host is about to
save, evaluate, log or stop, so the exception ends the run before anything is written from non-finite weights:
every checkpoint on disk predates the failure and stays loadable.
"""

from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from ..ranks import Later


class NonFiniteError(RuntimeError):
    """A gradient was NaN or Inf; raised before anything is saved from the weights it reached."""


class NonFiniteGuard(TrainerCallback):
    """Raises :class:`NonFiniteError` naming the step whose gradients were NaN or Inf.

    Args:
        grad_norm: returns (and forgets) the total gradient norm the clipping computed at this step, or None.
    """

    def __init__(self, grad_norm: Callable[[], torch.Tensor | None] | None = None) -> None:
        self.grad_norm = grad_norm or (lambda: None)
        self.pending: tuple[int, Later] | None = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.check(model)  # the previous step's verdict, copied to the host long ago
        norm = self.grad_norm()
        if norm is None:
            grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
            if not grads:  # e.g. DeepSpeed keeps gradients in its own buffers (and checks overflow itself)
                return
            norm = torch.stack(torch._foreach_norm(grads))
        self.pending = (state.global_step + 1, Later(torch.isfinite(norm).all()))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if control.should_save or control.should_evaluate or control.should_log or control.should_training_stop:
            self.check(model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.check(model)

    def check(self, model: Any = None) -> None:
        """Raise if the pending verdict says non-finite (waiting for its copy if it is not done yet)."""
        if self.pending is None:
            return
        (step, finite), self.pending = self.pending, None
        if finite.value():
            return
        names = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()] if model is not None else []
        where = f" (it made {len(names)} weight tensors non-finite, first `{names[0]}`)" if names else ""
        raise NonFiniteError(
            f"simpo-plugin: non-finite gradient at step {step}{where}; the run stopped before any checkpoint or "
            "the final model could hold non-finite weights. Lower `learning_rate`, check the data at this step, or "
            "prefer bf16 over fp16."
        )
