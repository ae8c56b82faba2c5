"""Graceful stop on SIGTERM/SIGINT: finish the optimizer step, checkpoint on every rank, exit non-zero.

Clusters stop jobs with SIGTERM (Slurm, Kubernetes, spot reclaims) and people press Ctrl-C; without this, the
steps since the last checkpoint are lost. Launchers forward the signal they receive (torchrun sends it on to
every worker, a terminal sends Ctrl-C to the whole process group), so a worker often sees one request twice
within milliseconds: a repeat within ``REPEAT_WINDOW_S`` is the same request, a later one stops at once.
"""

import functools
import os
import re
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import torch
from transformers import TrainerCallback

from ..ranks import Later, agreed_later, alone


HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 2.0


class StopRequest:
    """Signal handlers that turn the first SIGTERM/SIGINT into a request and a later repeat into a hard stop."""

    def __init__(self, repeat_window_s: float = REPEAT_WINDOW_S) -> None:
        self.repeat_window_s = repeat_window_s
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Install the handlers; only the main thread can (a trainer driven from another thread keeps defaults)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return False
        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            if os.environ.get("LOCAL_RANK", "0") == "0":
                sys.stderr.write(
                    f"simpo-plugin: {signal.Signals(signum).name} received: finishing the current optimizer step, "
                    "then saving a checkpoint (send it again to stop at once)\n"
                )
                sys.stderr.flush()
            return
        if now - self._first_at < self.repeat_window_s:
            return  # the same request, forwarded by a launcher
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


class PreemptionGuard(TrainerCallback):
    """Turns a stop request into ``should_save`` + ``should_training_stop`` at the next optimizer-step end.

    The host's trainer then saves the checkpoint (model, optimizer, scheduler, RNG and trainer state; every rank
    writes its own part under DeepSpeed) and leaves its loop; :attr:`stopped` holds ``(step, signal number)``.
    """

    def __init__(self, request: StopRequest | None = None) -> None:
        self.request = request or StopRequest()
        self.stopped: tuple[int, int] | None = None
        self._pending: Later | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.request.install()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Over several ranks, post the request as the step starts: the all-reduce is done long before the step
        ends, where it is read, so the agreement costs no wait for the device."""
        self._pending = None if alone() else agreed_later(self.request.signum or 0, args.device, op="max")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Stop after this step if a rank asked: one process reads its request now; several ranks read what they
        agreed when the step began (a request that comes during a step is agreed as the next one begins)."""
        if self._pending is None:
            signum = (self.request.signum or 0) if alone() else 0
        else:
            signum, self._pending = self._pending.value(), None
        if signum and self.stopped is None:
            self.stopped = (state.global_step, signum)
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pending is not None:  # every rank posted it: every rank completes it
            self._pending.value()
            self._pending = None
        self.request.uninstall()


_CPU_RANK_LOCATION = re.compile(r"cpu:\d+")


def _no_tag(storage: Any) -> None:
    return None


def _restore_cpu_rank(storage: Any, location: str) -> Any:
    return storage if _CPU_RANK_LOCATION.fullmatch(location) else None


@functools.cache
def load_cpu_rank_locations() -> None:
    """Let ``torch.load`` map storages to ``cpu:N``, the device ``TrainingArguments`` gives CPU ranks.

    Resuming a multi-process CPU run maps the optimizer state to ``args.device``; torch knows only ``cpu`` and
    raises "don't know how to restore data location ... (tagged with cpu:0)", so a stopped CPU run could not
    resume. Registered once per process; it changes no other location.
    """
    torch.serialization.register_package(100, _no_tag, _restore_cpu_rank)


class SimPOPreempted(SystemExit):
    """Raised after the checkpoint is written; exits with 128 + the signal number, as a shell reports a signal."""

    def __init__(self, step: int, signum: int, checkpoint: str) -> None:
        self.line = (
            f"simpo-plugin: stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved to "
            f"{checkpoint}. Resume with `resume_from_checkpoint: {checkpoint}` in the same config (or "
            f"`resume_from_checkpoint={checkpoint}` on the command line)."
        )
        super().__init__(128 + signum)
