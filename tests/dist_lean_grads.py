"""Run by test_lean_forward under torchrun: DDP + lean path, compare gradients across ranks and to one process;
then the one-time lean check failing on rank 1 only: both ranks must fall back together, without a hang."""

import sys
from datetime import timedelta

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
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a mismatch fails, not hangs
    rank = dist.get_rank()
    model = tiny_model("llama", seed=0)
    ddp = DistributedDataParallel(model, find_unused_parameters=True)  # HF Trainer's choice without checkpointing
    loss_of(ddp, model, collated_batch(num_pairs=2, seed=100 + rank)).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(grads) for _ in range(2)]
    dist.all_gather(gathered, grads)

    reference = tiny_model("llama", seed=0)
    for seed in (100, 101):  # DDP averages the two ranks' gradients
        (loss_of(reference, reference, collated_batch(num_pairs=2, seed=seed), PLAIN) / 2).backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()])
    verdicts = check_failing_on_rank_1(ddp, model, rank)
    if rank == 0:
        across = (gathered[0] - gathered[1]).abs().max().item()
        vs_ref = (gathered[0] - expected).abs().max().item()
        with open(out_path, "w") as f:
            f.write(f"{across} {vs_ref} {verdicts}")
    dist.destroy_process_group()


def check_failing_on_rank_1(ddp, model, rank: int) -> str:
    """Rank 1's lean values are off (a head the lean path would not model there alone); each rank's ``lean``
    after two DDP steps, as ``0,0`` when both fell back."""
    from simpo_plugin.lean import sequence

    if rank == 1:
        original = sequence.lean_token_logps

        def shifted(*args, **kwargs):
            token_logps, checked = original(*args, **kwargs)
            return token_logps + 0.05, checked

        sequence.lean_token_logps = shifted
    computer = SequenceLogps(DEFAULT)
    for step in range(2):
        ddp.zero_grad()
        sums, lengths = computer(ddp, model, collated_batch(num_pairs=2, seed=200 + 2 * step + rank))
        (sums / lengths).sum().backward()
    lean = torch.tensor([int(computer.lean)])
    gathered = [torch.zeros_like(lean) for _ in range(2)]
    dist.all_gather(gathered, lean)
    return ",".join(str(int(t)) for t in gathered)


if __name__ == "__main__":
    main(sys.argv[1])
