"""Where a model of ``simpo-plugin pairs`` / ``eval`` lives: whole, on this process's device.

The host's inference arguments set ``device_map: auto`` (``llamafactory.hparams.get_infer_args``), which on a node
with several GPUs splits one model over all of them, layer after layer: each token crosses every GPU in turn and
no two of them work at once. Sampling, scoring and judging are data parallel instead: one process per GPU, each
with the whole model (``CUDA_VISIBLE_DEVICES`` and ``num_shards`` / ``shard_index``, docs/onpolicy.md).
"""

from typing import Any


def one_device(model_args: Any) -> None:
    """Point ``model_args.device_map`` at this process's accelerator (the host's ``get_current_device``: the GPU
    of ``LOCAL_RANK``, else the first visible one); on a machine without one, the host's map stays."""
    from llamafactory.extras.misc import get_current_device

    device = get_current_device()
    if device.type != "cpu":
        model_args.device_map = {"": device}
