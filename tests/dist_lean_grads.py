"""Run by test_lean_forward under torchrun: DDP + lean path, compare gradients across ranks and to one process."""

import sys

import torch
import torch.distributed as dist
from lean_cases import collated_batch, tiny_model
from torch.nn.parallel import DistributedDataParallel

from simpo_plugin.lean import LeanConfig, SequenceLogps


DEFAULT = LeanConfig(logps_chunk_size=5)  # the block attention route, shared prompts
PLAIN = LeanConfig(lean_logps=False, prefix_sharing=False, attention_route=False)


def loss_of(model, unwrapped, batch, config: LeanConfig = DEFAULT) -> torch.Tensor:
    sums, lengths = SequenceLogps(config)(model, unwrapped, batch)
    return (sums / lengths).sum()


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_model("llama", seed=0)
    ddp = DistributedDataParallel(model)
    loss_of(ddp, model, collated_batch(num_pairs=2, seed=100 + rank)).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(grads) for _ in range(2)]
    dist.all_gather(gathered, grads)

    reference = tiny_model("llama", seed=0)
    for seed in (100, 101):  # DDP averages the two ranks' gradients
        (loss_of(reference, reference, collated_batch(num_pairs=2, seed=seed), PLAIN) / 2).backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()])
    if rank == 0:
        across = (gathered[0] - gathered[1]).abs().max().item()
        vs_ref = (gathered[0] - expected).abs().max().item()
        with open(out_path, "w") as f:
            f.write(f"{across} {vs_ref}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
