"""Peak memory of the plugin's first training step (which runs the one-time lean check) vs a later step.

Each measurement runs in its own process, so a process peak is one step's peak: V = 128k, hidden 256, 2 layers,
4 pairs of 300 prompt + 300 response tokens, fp32 on CPU (peak RSS) or the GPU (max_memory_allocated).

    .venv/bin/python benchmarks/first_step_memory.py
"""

import argparse
import resource
import subprocess
import sys

import torch
from bench_setup import SHAPES
from transformers import LlamaConfig, LlamaForCausalLM

from simpo_plugin.lean import LeanConfig, SequenceLogps


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def one_step(checked_before: bool, vocab: int, prompt: int, response: int, pairs: int) -> float:
    """Forward + backward of the lean path on a fresh model; returns this process's peak in GiB."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **SHAPES["tiny"])).to(device)  # bench_step's CPU shape
    model.config._attn_implementation = "sdpa"
    ids = torch.randint(1, vocab, (2 * pairs, prompt + response), device=device)
    ids[pairs:, :prompt] = ids[:pairs, :prompt]  # chosen and rejected share their prompt
    labels = ids.clone()
    labels[:, :prompt] = -100
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    computer = SequenceLogps(LeanConfig())
    computer._lean_checked = checked_before  # a later step: the one-time check is behind us
    sums, _ = computer(model, model, batch)
    sums.sum().backward()
    assert computer.lean, "the one-time check fell back to the plain path"
    return peak_gib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128_000)
    parser.add_argument("--prompt", type=int, default=300)
    parser.add_argument("--response", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--worker", choices=["first", "later"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [str(v) for v in (args.vocab, args.prompt, args.response, args.pairs)]
    if args.worker:
        print(one_step(args.worker == "later", *map(int, sizes)))
        return

    peaks = {}
    for step in ("first", "later"):
        flags = ["--vocab", sizes[0], "--prompt", sizes[1], "--response", sizes[2], "--pairs", sizes[3]]
        out = subprocess.run([sys.executable, __file__, "--worker", step, *flags], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr[-2000:])
        peaks[step] = float(out.stdout.strip().splitlines()[-1])
    print(f"peak memory, first step (with the one-time check): {peaks['first']:.2f} GiB")
    print(f"peak memory, a later step:                          {peaks['later']:.2f} GiB")
    print(f"first / later: {peaks['first'] / peaks['later']:.2f}x")


if __name__ == "__main__":
    main()
