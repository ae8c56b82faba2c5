"""What building one micro-batch's layout costs on the host CPU, per attention implementation and layout.

Each row but one times the layout built from the batch, as the step built it before it came from the collator
(on a GPU that also waits for the device: the ids are read from its copy of the batch); the row "in the step,
built by the collator" times what the step pays now.

A SimPO step first turns the collator's 2B padded rows into the layout the model computes (simpo_plugin/lean/
layout.py). This times that step alone, side by side in one run, for a batch shaped like a cutoff-2048 run: the
dense-mask layouts build (L x L) masks on the CPU (sdpa/eager without the route, and, before issue 30,
flash-attention with ``simpo_padding_free``), the block route and the flash-attention layouts build none.

    .venv/bin/python benchmarks/layout_cost.py                      # 8 pairs, prompts 256, responses 384 tokens
    .venv/bin/python benchmarks/layout_cost.py --pairs 4 --repeats 5

Prints one row per layout: the median seconds, the row length L, the largest tensor the layout allocated, and the
time relative to the block route.
"""

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simpo_plugin.lean import LeanConfig, SequenceLogps
from simpo_plugin.lean.layout import packed_layout


class LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return out


def collated(pairs: int, prompt: int, response: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """2B right-padded rows, chosen first, responses of 0.5-1.5 x ``response`` tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(pairs):
        p = torch.randint(3, 1000, (prompt,), generator=g).tolist()
        for _side in range(2):
            n = int(response * (0.5 + torch.rand(1, generator=g).item()))
            rows.append((p, torch.randint(3, 1000, (n,), generator=g).tolist()))
    rows = rows[0::2] + rows[1::2]
    width = max(len(p) + len(r) for p, r in rows)
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, : len(p) + len(r)] = 1
        labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def before_issue_30_flash(batch: dict[str, torch.Tensor]):
    """What ``flash_attn: fa2`` + ``simpo_padding_free`` built before issue 30: the dense mask, then thrown away."""
    layout = packed_layout(**batch, share_prompt=False, one_row=True)
    layout.attention_mask = None
    return layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens")
    parser.add_argument("--response", type=int, default=384, help="mean response tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batch = collated(args.pairs, args.prompt, args.response)

    def layout_of(attn: str, config: LeanConfig):
        model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=attn))  # the layout needs only this
        return lambda: SequenceLogps(config).layout(batch, attn, model)

    def in_step_with_collator(attn: str, config: LeanConfig):
        """What the step pays once the collator built the layout (train/collate.py): the plan and a comparison."""
        model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=attn))
        forward = SequenceLogps(config)
        prepared = forward.plan(attn, model).build(**batch)  # in the DataLoader, off the step
        return lambda: forward.layout(batch, attn, model, prepared)

    cases = {
        "sdpa/eager, block route (default)": layout_of("sdpa", LeanConfig()),
        "  the same, in the step, built by the collator": in_step_with_collator("sdpa", LeanConfig()),
        "flash-attention, block route (default)": layout_of("flash_attention_2", LeanConfig()),
        "flash-attention, packed, no route": layout_of(
            "flash_attention_2", LeanConfig(padding_free=True, attention_route=False)
        ),
        "flash-attention, padding-free, before issue 30": lambda: before_issue_30_flash(batch),
        "sdpa/eager, shared rows, dense masks": layout_of("sdpa", LeanConfig(attention_route=False)),
        "sdpa/eager, padding-free, dense mask": layout_of(
            "sdpa", LeanConfig(padding_free=True, attention_route=False)
        ),
    }
    results = {}
    for name, build in cases.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            layout = build()
            times.append(time.perf_counter() - start)
        with LargestTensor() as probe:
            build()
        results[name] = (statistics.median(times), tuple(layout.input_ids.shape), probe.numel)
    base = results["sdpa/eager, block route (default)"][0]
    print(f"{args.pairs} pairs, prompts {args.prompt} tokens, responses ~{args.response}; median of {args.repeats}")
    print(f"{'layout':50} {'ms':>9} {'rows x L':>12} {'largest tensor':>15} {'vs route':>9}")
    for name, (seconds, shape, numel) in results.items():
        print(f"{name:50} {seconds * 1e3:9.2f} {f'{shape[0]} x {shape[1]}':>12} {numel:15,} {seconds / base:8.1f}x")


if __name__ == "__main__":
    main()
