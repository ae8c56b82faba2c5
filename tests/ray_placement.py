"""Run by test_launchers: `llamafactory-cli train` with the Ray placement of hiyouga/LlamaFactory#10349.

LLaMA-Factory 0.9.5 reserves a placement group of one `{"CPU": 10}` bundle per device of the whole Ray cluster,
and each worker asks for 10 CPUs (hiyouga/LlamaFactory#10348, open): on a machine without GPUs the devices are the
CPUs, so the group can never be placed and the launch waits forever. This script gives the host's launch the
placement the fix proposes (one bundle of 1 CPU per worker, `ray_num_workers` bundles) and changes nothing else:
the driver, its Ray workers and the training in them are the host's `llamafactory-cli train`.
"""

import sys
from typing import Any


def main() -> None:
    import llamafactory.train.tuner as tuner
    from ray.util.placement_group import placement_group

    original_config = tuner.get_ray_remote_config_for_worker

    def get_placement_group(num_devices: int) -> tuple[Any, dict[str, int]]:
        bundle = {"CPU": 1}
        return placement_group([bundle] * num_devices, strategy="PACK"), bundle

    def get_ray_remote_config_for_worker(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**original_config(*args, **kwargs), "num_cpus": 1}

    tuner.get_placement_group = get_placement_group
    tuner.get_ray_remote_config_for_worker = get_ray_remote_config_for_worker

    from llamafactory.cli import main as cli_main

    sys.argv = ["llamafactory-cli", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
