"""Sampling throughput of `simpo-plugin pairs`, side by side: the HF backend, one vLLM server, two vLLM servers.

The same prompts and settings in every row (SmolLM2-135M-Instruct, the on-policy example's 48 prompts, 4 samples
each, temperature 0.8, at most 64 new tokens, seed 42), each through the real `simpo-plugin pairs` command; the
rate is the command's own "Sampled ..." measurement (sampling only: model loading and server start-up are shown
apart). The servers run vLLM's OpenAI API server from a separate environment (`make vllm-env`), started by the
plugin's `server_command` machinery; on N servers each gets cores / N OpenMP threads, so every row uses the same
cores. The script also checks that one server and two give the same pairs.json.

    python benchmarks/bench_sampling.py --smollm2 models/smollm2-135m-instruct [--vllm-python .venv-vllm/bin/python]

About 10 minutes on 2 cores.
"""

import argparse
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
    "--model {{model}} --host 127.0.0.1 --port {{port}} --dtype bfloat16 --max-model-len 1024 --max-num-seqs 32"
)
RATE = re.compile(r"Sampling in this run: (\d+) samples in ([\d.]+) s \(([\d.]+) samples/s, ([\d.]+) tokens/s\)")


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


def start_servers(stack: ExitStack, count: int, args: argparse.Namespace, logs: Path) -> tuple[list[str], float]:
    import httpx

    from simpo_plugin.generation.serving import ManagedServer

    threads = max(1, (os.cpu_count() or 2) // count)
    command = SERVE.format(threads=threads, python=args.vllm_python)
    servers = [stack.enter_context(ManagedServer(command, str(args.smollm2), logs / f"server{count}-{i}.log"))
               for i in range(count)]  # fmt: skip
    start = time.perf_counter()
    for server in servers:
        while True:
            server.check_alive()
            try:
                if httpx.get(server.url.removesuffix("/v1") + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
    return [server.url for server in servers], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2", type=Path, required=True, help="SmolLM2 dir (python -m simpo_plugin.testing)")
    parser.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python")
    parser.add_argument("--max-samples", type=int, default=48)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-concurrency", type=int, default=8, help="requests in flight per server")
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
    outputs = {}
    for count in (1, 2):
        print(f"{count} vLLM server(s) ...", flush=True)
        with ExitStack() as stack:
            urls, started = start_servers(stack, count, args, workdir)
            out = workdir / f"server{count}"
            result = pairs({**base, "backend": "server", "server_urls": urls, "batch_size": 32,
                            "max_concurrency": args.max_concurrency, "output_dir": str(out)}, out)  # fmt: skip
        rows.append((f"{count} vLLM CPU server{'s' if count > 1 else ''}", f"{started:.0f} s", *result))
        outputs[count] = (out / "pairs.json").read_bytes()

    print(f"\n{args.max_samples} prompts x {args.num_samples} samples, <= {args.max_new_tokens} new tokens, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| backend | server start | command wall time | sampling | samples/s | tokens/s | vs HF |")
    print("|---|---|---|---|---|---|---|")
    for name, started, wall, seconds, samples, tokens in rows:
        print(f"| {name} | {started} | {wall:.0f} s | {seconds:.1f} s | {samples:.2f} | {tokens:.1f} | "
              f"{tokens / rows[0][5]:.2f}x |")  # fmt: skip
    print(f"\npairs.json, one server vs two: {'identical' if outputs[1] == outputs[2] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
