"""How the LM head's parameters are held, as far as the lean head is concerned.

- **Whole tensors** (one process, DDP, ZeRO-1/2, frozen or trainable, LoRA elsewhere in the model): the chunked
  kernel reads the weight directly.
- **DeepSpeed ZeRO-3 partitions** (also with parameter offload): a partitioned parameter is whole only between
  DeepSpeed's pre- and post-forward hooks of its module, and again when its module's backward hooks gather it.
  The lean head therefore runs the kernel inside the head's own forward call (DeepSpeed has gathered the weight),
  and the kernel's backward gathers it again itself (:func:`zero3_gather`). Activation checkpointing of a module
  call cannot be used there: the recomputation sees the weight released (a ``CheckpointError``).
- **FSDP shards** (FSDP1 flat parameters, FSDP2 ``DTensor``s): their unsharding follows the wrapped module's own
  forward and backward, which the lean head's separate backward is not part of; the plain path is used.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from torch import nn


FSDP_WRAPPERS = ("FullyShardedDataParallel",)


def partitioned(module: nn.Module) -> list[nn.Parameter]:
    """The ZeRO-3-partitioned parameters of ``module`` (DeepSpeed tags each with ``ds_id``)."""
    return [param for param in module.parameters() if hasattr(param, "ds_id")]


def zero3_gather(params: list[nn.Parameter]) -> Callable[[], AbstractContextManager]:
    """A factory of contexts under which ``params`` are whole; each gathers only what is released at its entry.

    Parameters DeepSpeed already holds gathered (prefetched, persistent) are left to DeepSpeed: the context
    neither gathers nor re-partitions them. Every rank runs the same modules, so every rank gathers the same list
    (the all-gather is a collective). A gathered parameter that takes a gradient stays whole until autograd has
    accumulated that gradient (its ``AccumulateGrad`` runs after the backward that produced it, and needs the
    parameter's full shape); it is partitioned again right after, when DeepSpeed's own hooks have reduced it.
    """

    @contextmanager
    def gathered() -> Iterator[None]:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        released = [param for param in params if param.ds_status == ZeroParamStatus.NOT_AVAILABLE]
        if released:
            released[0].all_gather(param_list=released)
        try:
            yield
        finally:
            now = [param for param in released if not param.requires_grad]
            if now:
                now[0].partition(param_list=now, has_been_updated=False)
            for param in released:
                if param.requires_grad:
                    _partition_after_accumulation(param)

    return gathered


def _partition_after_accumulation(param: nn.Parameter) -> None:
    """Partition ``param`` once, right after autograd has accumulated its next gradient.

    A parameter that a DeepSpeed submodule holds by then (a head tied to the input embedding, whose gradient is
    accumulated at the embedding's backward) is left to DeepSpeed, which releases it with that submodule.
    """

    def partition(param: nn.Parameter) -> None:
        handle.remove()
        if not param.ds_active_sub_modules:
            param.partition(param_list=[param], has_been_updated=False)

    handle = param.register_post_accumulate_grad_hook(partition)


def sharded_by_fsdp(model: nn.Module, head: nn.Module) -> bool:
    """Whether FSDP (1 or 2) holds the model's parameters, so the head's weight is only whole inside its forward."""
    if any(type(module).__name__ in FSDP_WRAPPERS for module in (model, getattr(model, "module", None))):
        return True
    return any(type(param).__name__ == "DTensor" for param in head.parameters())
