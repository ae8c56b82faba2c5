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

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return int(local)
    if torch.distributed.get_world_size() == 1:
        return int(local)
    flag = torch.tensor([int(local)], dtype=torch.int64, device=device)
    reduce = {"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}[op]
    torch.distributed.all_reduce(flag, op=reduce)
    return int(flag.item())
