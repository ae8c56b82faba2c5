"""Sampling throughput of `simpo-plugin pairs`, side by side: the HF backend, one vLLM server, two vLLM servers.

The same prompts and settings in every row (SmolLM2-135M-Instruct, the on-policy example's 48 prompts, 4 samples
each, temperature 0.8, at most 64 new tokens, seed 42), each through the real `simpo-plugin pairs` command; the
rate is the command's own "Sampled ..." measurement (sampling only: model loading and server start-up are shown
apart). The servers run vLLM's OpenAI API server from a separate environment (`make vllm-env`), started by the
plugin's `server_command` machinery, every one the same way: `--threads` OpenMP threads each (default half the
cores), since a server's numerics depend on its thread count. Each server layout runs twice: with
`--max-concurrency` requests in flight per server (continuous batching), and batch-invariant (every server
computes one sequence at a time, `--max-num-seqs 1`, with prefix caching off), the setting under which vLLM on
CPU gives the same samples whatever the endpoints. The script counts the samples that differ between one server
and two in each mode.

    python benchmarks/bench_sampling.py --smollm2 models/smollm2-135m-instruct [--vllm-python .venv-vllm/bin/python]

About 25 minutes on 2 cores.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml


REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onpolicy"
SERVE = (
    "VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS={threads} {python} -m vllm.entrypoints.openai.api_server "
    "--model {{model}} --host 127.0.0.1 --port {{port}} --dtype bfloat16 --max-model-len 1024 --max-num-seqs {seqs}"
)
INVARIANT = " --no-enable-prefix-caching"  # with --max-num-seqs 1
RATE = re.compile(r"Sampling in this run: (\d+) samples in ([\d.]+) s \(([\d.]+) samples/s, ([\d.]+) tokens/s[;)]")


def pairs(config: dict, workdir: Path) -> tuple[float, float, float, float]:
    """Run `simpo-plugin pairs`; (wall seconds, sampling seconds, samples/s, tokens/s)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pairs.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}
    start = time.perf_counter()
    command = [str(Path(sys.executable).with_name("simpo-plugin")), "pairs", str(workdir / "pairs.yaml")]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    match = RATE.search((Path(config["output_dir"]) / "pairs_report.md").read_text())
    _, seconds, samples_per_s, tokens_per_s = match.groups()
    return wall, float(seconds), float(samples_per_s), float(tokens_per_s)


def start_servers(stack: ExitStack, count: int, args: argparse.Namespace, logs: Path,
                  invariant: bool) -> tuple[list[str], float]:  # fmt: skip
    from simpo_plugin.sampling.managed import ManagedServer
    from simpo_plugin.sampling.server import wait_for_servers

    seqs = 1 if invariant else 32
    command = SERVE.format(threads=args.threads, python=args.vllm_python, seqs=seqs) + (INVARIANT if invariant else "")
    tag = "invariant" if invariant else "batched"
    servers = [stack.enter_context(ManagedServer(command, str(args.smollm2), logs / f"server{count}-{tag}-{i}.log"))
               for i in range(count)]  # fmt: skip
    start = time.perf_counter()

    def alive() -> None:
        for server in servers:
            server.check_alive()

    wait_for_servers([server.url for server in servers], "EMPTY", 900, alive=alive)
    return [server.url for server in servers], time.perf_counter() - start


def samples(output_dir: Path) -> dict[int, list[str]]:
    lines = (output_dir / "parts" / "samples.all.jsonl").read_text().splitlines()
    return {r["index"]: [x["text"] for x in r["samples"]] for r in map(json.loads, lines)}


def differing(a: Path, b: Path) -> int:
    """Samples whose text differs between two runs of the same prompts."""
    left, right = samples(a), samples(b)
    return sum(x != y for index in left for x, y in zip(left[index], right[index], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2", type=Path, required=True, help="SmolLM2 dir (python -m simpo_plugin.testing)")
    parser.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python")
    parser.add_argument("--max-samples", type=int, default=48)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=8, help="requests in flight per server")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="per server")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    base = yaml.safe_load((EXAMPLE / "pairs.yaml").read_text())
    base.update(model_name_or_path=str(args.smollm2), dataset_dir=str(EXAMPLE / "data"), max_samples=args.max_samples,
                num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                reward_function=f"{EXAMPLE / 'rewards.py'}:concise_answer")  # fmt: skip

    rows = []
    print("HF backend ...", flush=True)
    hf = pairs({**base, "backend": "hf", "output_dir": str(workdir / "hf")}, workdir / "hf")
    rows.append(("HF `generate` (batch_size 8)", "-", *hf))
    runs = {}
    for invariant in (False, True):
        concurrency = 2 if invariant else args.max_concurrency
        for count in (1, 2):
            mode = "batch-invariant: one sequence at a time, no prefix caching" if invariant else (
                f"{concurrency} requests in flight")  # fmt: skip
            print(f"{count} vLLM server(s), {mode} ...", flush=True)
            with ExitStack() as stack:
                urls, started = start_servers(stack, count, args, workdir, invariant)
                out = workdir / f"server{count}-{'invariant' if invariant else 'batched'}"
                result = pairs({**base, "backend": "server", "server_urls": urls, "batch_size": 32,
                                "max_concurrency": concurrency, "output_dir": str(out)}, out)  # fmt: skip
            name = f"{count} vLLM CPU server{'s' if count > 1 else ''} ({args.threads} threads each), {mode}"
            rows.append((name, f"{started:.0f} s", *result))
            runs[invariant, count] = out

    print(f"\n{args.max_samples} prompts x {args.num_samples} samples, <= {args.max_new_tokens} new tokens, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| backend | server ready after | command wall time | sampling | samples/s | tokens/s | vs HF |")
    print("|---|---|---|---|---|---|---|")
    for name, started, wall, seconds, rate, tokens in rows:
        print(f"| {name} | {started} | {wall:.0f} s | {seconds:.1f} s | {rate:.2f} | {tokens:.1f} | "
              f"{tokens / rows[0][5]:.2f}x |")  # fmt: skip
    total = args.max_samples * args.num_samples
    for invariant in (False, True):
        one, two = runs[invariant, 1], runs[invariant, 2]
        same = (one / "pairs.json").read_bytes() == (two / "pairs.json").read_bytes()
        print(
            f"\n{'batch-invariant' if invariant else 'batched'}: one server vs two: {differing(one, two)} of {total} "
            f"samples differ; pairs.json {'identical' if same else 'different'}"
        )


if __name__ == "__main__":
    main()
