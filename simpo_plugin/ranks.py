"""One verdict for every rank: a local value reduced over the ranks of the default process group.

A decision one rank takes alone (stop after this step, fall back to another path, turn a probe off) makes that
rank run collectives the others do not, and a DDP or DeepSpeed job then hangs until its timeout. Every such
decision goes through :func:`agreed`, on the device the process group communicates on.
"""

from typing import Any


def agreed(local: int | bool, device: Any, op: str = "min") -> int:
    """``local`` reduced over the ranks with ``op`` (``"min"``: every rank agrees; ``"max"``: any rank asks).

    Returns ``int(local)`` when no process group is initialized or it has one rank. ``device`` must be one the
    group's backend takes (CUDA for NCCL). One small all-reduce and one host sync: call it once per decision, not
    per step.
    """
    import torch  # here: the CLI's light commands import this module's callers without torch

    if alone():
        return int(local)
    flag = torch.tensor([int(local)], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=_reduce_op(op))
    return int(flag.item())


def alone() -> bool:
    """Whether this process decides alone: no process group is initialized, or it has one rank."""
    import torch

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return not distributed or torch.distributed.get_world_size() == 1


def _reduce_op(op: str) -> Any:
    import torch

    return {"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}[op]


class Later:
    """A one-element device tensor, read on the host later without stalling the device.

    The copy to the host starts now (asynchronously, into pinned memory, with a CUDA event after it); :meth:`value`
    waits for that copy only, so the work queued since keeps the device busy. Read it a step after it was made and
    it is long done. On the CPU it is the tensor itself; on other accelerators the copy blocks. ``work``: the async
    all-reduce that produces ``tensor`` (NCCL: the stream waits for it, not the host; gloo: :meth:`value` waits).
    """

    def __init__(self, tensor: Any, work: Any = None) -> None:
        import torch

        self._work, self._event = None, None
        if tensor.device.type == "cpu":
            self._work, self._host = work, tensor
            return
        if work is not None:
            work.wait()
        if tensor.device.type == "cuda":
            self._host = tensor.to("cpu", non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.to("cpu")

    def value(self) -> int | float | bool:
        """The tensor's value as a Python number (a read of host memory once the copy is done)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy().reshape(-1)[0].item()


def agreed_later(local: int | bool, device: Any, op: str = "min") -> Later:
    """:func:`agreed`, without a host sync now: the all-reduce starts, and its result is read with
    :meth:`Later.value` (a step later). Every rank must read it, in the same order as it posted it."""
    import torch

    if alone():
        return Later(torch.tensor([int(local)], dtype=torch.int64))
    flag = torch.full((1,), int(local), dtype=torch.int64, device=device)
    return Later(flag, torch.distributed.all_reduce(flag, op=_reduce_op(op), async_op=True))
