"""Generation on a ZeRO-3-partitioned policy: the whole model gathered once per probe, not per module per token.

Under DeepSpeed ZeRO-3 each module call gathers the module's parameters and releases them after (DeepSpeed's module
hooks). A greedy answer of T tokens calls every module T times, so the whole model is all-gathered T times, and the
hooks' bookkeeping runs on every call: on a 2-layer LoRA model on CPU, 7.6 s of a 13 s run. Gathering every
parameter once (``deepspeed.zero.GatheredParameters``) and lifting the hooks while the probe generates costs one
all-gather, and holds the whole model on each rank for the probe's duration; it is done only when the model takes
at most half of the device memory that is free (TRL gathers the same way for its online trainers:
``unwrap_model_for_generation`` in trl/models/utils.py). Otherwise the probe generates on the partitioned model, as
before, and says so once.

Models a probe loads while training (a reward model, an LLM judge) are built by :func:`outside_zero3`: whole on each
rank, not partitioned by the ``deepspeed.zero.Init`` that transformers opens for every model built during a ZeRO-3
run (they have no engine to gather them, and would not run).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..lean import partitioned
from ..ranks import agreed


FIT_SHARE = 0.5  # the whole model may take at most this share of the free memory (the answers' caches need room)


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device`` in bytes: the CUDA allocator's view on GPUs, available RAM elsewhere."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _offload(engine: Any) -> Any:
    """DeepSpeed's ``DeepSpeedZeRoOffload`` of a ZeRO-3 engine (it owns the module hooks), or None."""
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None)
    needed = ("forward_hooks", "backward_hooks", "_register_deepspeed_module", "module")
    return offload if offload is not None and all(hasattr(offload, name) for name in needed) else None


@contextmanager
def whole_for_generation(model: nn.Module, engine: Any, device: torch.device) -> Iterator[str | None]:
    """Hold ``model`` whole while the body generates with it, when it is ZeRO-3-partitioned and fits.

    Args:
        model: the policy (the trainer's ``model``, whose parameters DeepSpeed partitions).
        engine: the DeepSpeed engine that wraps it (the trainer's ``model_wrapped``), or anything else.
        device: where the gathered parameters would live.

    Yields:
        None when the model is whole for the body (gathered here, or never partitioned), else the reason it stays
        partitioned. Every rank must enter together: the gather is a collective, and every rank decides the same
        way only if their free memory agrees on the fit, so the decision is agreed over ranks first.
    """
    params = partitioned(model)
    if not params:
        yield None
        return
    offload = _offload(engine)
    whole = sum(param.ds_numel * param.element_size() for param in params)
    reason = None
    if offload is None:
        reason = "this DeepSpeed version's module hooks are not where the plugin looks for them"
    elif whole > FIT_SHARE * free_bytes(device):
        reason = f"the whole model ({whole / 2**20:,.0f} MiB) does not fit in half of the free memory"
    if not agreed(reason is None, device):
        yield reason or "it does not fit on another rank"
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield None
        finally:
            offload._register_deepspeed_module(offload.module)


@contextmanager
def outside_zero3() -> Iterator[None]:
    """Models built in the body are whole, not partitioned by ``deepspeed.zero.Init``.

    During a ZeRO-3 run, transformers' ``from_pretrained`` builds every model inside ``deepspeed.zero.Init``
    (``is_deepspeed_zero3_enabled()``, true while the run's ``HfDeepSpeedConfig`` lives). A model built that way
    and never wrapped in an engine keeps empty parameters: its first forward fails ("'weight' must be 2-D"). The body
    runs with transformers' reference to the run's DeepSpeed config lifted, and it is put back after, also when the
    body raises. Outside ZeRO-3 (or with a transformers that keeps the reference elsewhere) it does nothing.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)
