"""One SimPO training step, three implementations: speed, peak memory, loss and token efficiency.

Compares, on the same locally built model, the same data, optimizer, batch and precision:

- ``plugin``:      this package's ``stage: simpo`` (lean step: one packed row per batch, prompts shared, attention
  routed per block, response-only chunked head);
- ``plugin-rows``: the same with ``simpo_attention_route: false`` (padding-free rows under a dense mask);
- ``host``:      LLaMA-Factory's built-in ``stage: dpo`` + ``pref_loss: simpo``;
- ``trl``:       TRL's ``CPOTrainer`` with ``loss_type="simpo"``, ``cpo_alpha=0``, fed the host's token ids.

The plugin and the host run through the host's real pipeline (``llamafactory.train.tuner.run_exp``). Every
(implementation, vocabulary) pair runs in its own worker process so that peak memory is isolated. One setup feeds
both measurements (``bench_setup.py``: shapes, data, each implementation's arguments): the same steps are timed
(after burn-in, synchronized) and watched for peak memory; this file launches, times, watches and prints.

Run ``python benchmarks/bench_step.py`` (CPU: 5-8 min on 2 cores) or ``--quick`` (~1 min); see benchmarks/README.md.
"""

import argparse
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_setup import (
    BETA,
    GAMMA,
    IMPLS,
    LEARNING_RATE,
    SEED,
    SHAPES,
    WorkerSpec,
    batch_accounting,
    build_assets,
    cuda_available,
    host_args,
    host_pairs,
)


LOSS_RTOL = {"fp32": 1e-4, "bf16": 1e-2}  # step-1 loss agreement; bf16 rounds differently per layout
MIN_CPU_USE = 0.8  # a CPU worker below this share of its threads' time was slowed by other processes

# ----------------------------------------------------------------------------------------------------------------
# Worker process: one implementation on one model; timing and memory through a TrainerCallback.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What a worker records: per-step wall time, memory peaks, the batches it saw and their losses."""

    device: str
    warmup_steps: int
    step_times: list[float] = field(default_factory=list)
    step_cpu: list[float] = field(default_factory=list)  # process CPU seconds per step (contention check on CPU)
    peak_warmup: int = 0  # bytes, peak from train begin to the end of the warm-up steps (step 1 included)
    peak_timed: int = 0  # bytes, peak over the timed steps
    start_memory: int = 0  # bytes at train begin (CPU: RSS, model loaded; GPU: allocated)
    batches: list[dict[str, Any]] = field(default_factory=list)
    losses: list[Any] = field(default_factory=list)
    attn: str = "unknown"  # the model's attention implementation, as seen in the first step
    profile_step: int = -1  # the step profiled (after the timed ones)
    vocab_size: int = 0
    shares: dict[str, float] = field(default_factory=dict)  # attention / body / head share of the profiled step
    before_profile: Any = None  # called once before the profiled step: saves the timings in case it runs out of memory
    params: int = 0  # the model's parameters (MFU's N)
    reserved: int = 0  # bytes, CUDA max_memory_reserved over all steps (what the caching allocator held)
    syncs: int = -1  # CUDA host syncs in the profiled step (torch.cuda.set_sync_debug_mode), -1: not counted


class Memory:
    """Peak memory of this process: CUDA allocator peak on GPU, resettable peak RSS (Linux VmHWM) on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.resettable = device != "cpu" or self._clear_refs()

    @staticmethod
    def _clear_refs() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elif self.resettable:
            self._clear_refs()

    def current(self) -> int:
        import torch

        if self.device == "cuda":
            return torch.cuda.memory_allocated()
        return self._status("VmRSS:") if self.resettable else 0

    def peak(self) -> int:
        import resource

        import torch

        if self.device == "cuda":
            return torch.cuda.max_memory_allocated()
        if self.resettable:
            return self._status("VmHWM:")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not resettable: includes loading


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def make_callback(probe: Probe) -> Any:
    """A TrainerCallback that times each optimizer step and splits peak memory into warm-up and timed steps."""
    from transformers import TrainerCallback

    memory = Memory(probe.device)

    class StepProbe(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synchronize(probe.device)
            model = kwargs.get("model")
            probe.params = sum(p.numel() for p in model.parameters()) if model is not None else 0
            probe.start_memory = memory.current()
            memory.reset()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synchronize(probe.device)
            if state.global_step == probe.warmup_steps:  # burn-in done: its peak (step 1's included) is kept apart
                probe.peak_warmup = memory.peak()
                memory.reset()
            self._profiler = None
            if state.global_step == probe.profile_step:
                if probe.before_profile is not None:
                    probe.before_profile()
                self._profiler = start_profiler(probe.device)
                self._syncs = SyncCount(probe.device)
            self._start, self._cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synchronize(probe.device)
            if self._profiler is not None:  # the profiled step counts neither for time nor for memory
                self._profiler.stop()
                probe.syncs = self._syncs.stop()
                probe.shares = time_shares(self._profiler, probe.vocab_size, probe.device)
                return
            probe.step_times.append(time.perf_counter() - self._start)
            probe.step_cpu.append(time.process_time() - self._cpu)
            if probe.device == "cuda":
                import torch

                probe.reserved = max(probe.reserved, torch.cuda.max_memory_reserved())
            if state.global_step <= probe.warmup_steps:
                probe.peak_warmup = max(probe.peak_warmup, memory.peak())
            else:
                probe.peak_timed = max(probe.peak_timed, memory.peak())

    return StepProbe()


class SyncCount:
    """Counts CUDA host syncs from construction to :meth:`stop` (``torch.cuda.set_sync_debug_mode("warn")``)."""

    def __init__(self, device: str) -> None:
        import warnings

        self.device = device
        if device != "cuda":
            return
        import torch

        self._caught = warnings.catch_warnings(record=True)
        self._records = self._caught.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> int:
        """The syncs counted (-1 off CUDA, where the debug mode does not exist)."""
        if self.device != "cuda":
            return -1
        import torch

        torch.cuda.set_sync_debug_mode("default")
        self._caught.__exit__(None, None, None)
        return sum("synchroniz" in str(w.message) for w in self._records)


ATTENTION_OPS = ("scaled_dot_product", "flash_attention", "efficient_attention", "flex_attention")


def start_profiler(device: str) -> Any:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    profiler = profile(activities=activities, record_shapes=True)
    profiler.start()
    return profiler


def time_shares(profiler: Any, vocab_size: int, device: str) -> dict[str, float]:
    """Self time of one step's ops split into attention (SDPA/flash kernels, forward and backward), head (ops with
    a vocabulary-sized dimension: LM head, log-softmax, embedding) and body (everything else, optimizer included)."""
    totals = {"attention": 0.0, "head": 0.0, "body": 0.0}
    for event in profiler.key_averages(group_by_input_shape=True):
        spent = event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
        name = event.key.lower()
        if any(op in name for op in ATTENTION_OPS):
            totals["attention"] += spent
        elif vocab_size and any(vocab_size in shape for shape in event.input_shapes or [] if shape):
            totals["head"] += spent
        else:
            totals["body"] += spent
    total = sum(totals.values()) or 1.0
    return {key: value / total for key, value in totals.items()}


def record_training_steps(probe: Probe) -> None:
    """Wrap ``Trainer.training_step`` (no trainer here overrides it) to keep each batch's ids and its loss.

    Also skips the final ``save_model`` of the host's workflows: it runs after training and would write a full
    checkpoint per worker (16 GB for the 8B shape).
    """
    from transformers import Trainer

    original = Trainer.training_step

    def training_step(self: Any, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not probe.batches:
            probe.attn = str(getattr(getattr(model, "config", None), "_attn_implementation", None))
        keys = [k for k in inputs if k.endswith(("input_ids", "attention_mask", "labels"))]
        probe.batches.append({k: inputs[k] for k in keys})  # references only; read after training
        loss = original(self, model, inputs, *args, **kwargs)
        probe.losses.append(loss)
        return loss

    Trainer.training_step = training_step
    Trainer.save_model = lambda self, *args, **kwargs: None  # run_dpo/run_simpo save after training; not measured


def run_llamafactory(spec: WorkerSpec, probe: Probe) -> None:
    """Train the host or the plugin through the host's own entry point, as `llamafactory-cli train` does."""
    from llamafactory.train.tuner import run_exp

    run_exp(host_args(spec), callbacks=[make_callback(probe)])


def run_trl(spec: WorkerSpec, probe: Probe) -> None:
    """TRL's CPOTrainer (SimPO loss) on exactly the host's token ids."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import CPOConfig, CPOTrainer

    class PretokenizedCPOTrainer(CPOTrainer):
        """CPOTrainer whose rows are already tokenized (the host's ids, prompt labels masked with -100)."""

        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            return feature

    dataset, tokenizer = host_pairs(spec)
    config = CPOConfig(
        output_dir=spec.output_dir,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        max_steps=spec.max_steps,
        logging_steps=spec.max_steps,
        save_strategy="no",
        report_to="none",
        train_sampling_strategy="sequential",  # the host's `disable_shuffling`
        seed=SEED,
        loss_type="simpo",
        beta=BETA,
        simpo_gamma=GAMMA,
        cpo_alpha=0.0,
        max_length=spec.cutoff_len,
        max_prompt_length=spec.cutoff_len - 1,
        remove_unused_columns=False,
        gradient_checkpointing=spec.gradient_checkpointing,
        bf16=spec.dtype == "bf16",
        use_cpu=not cuda_available(),
        deepspeed=spec.deepspeed,
    )
    # As the host: weights in fp32 (bf16 = autocast) unless ZeRO-3 keeps them in bf16.
    dtype = torch.bfloat16 if spec.dtype == "bf16" and spec.deepspeed else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=dtype)
    model.warnings_issued = {}  # transformers 5 dropped the attribute CPOTrainer writes to
    trainer = PretokenizedCPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[make_callback(probe)],
    )
    trainer.train()


def worker(spec_path: str) -> None:
    """Run one implementation and write its measurements as JSON (rank 0 only under torchrun)."""
    import torch

    spec = WorkerSpec(**json.loads(Path(spec_path).read_text()))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = Probe(device=device, warmup_steps=spec.warmup_steps, profile_step=spec.timed_end if spec.profile else -1,
                  vocab_size=spec.vocab_size)  # fmt: skip
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        probe.before_profile = lambda: write_result(spec, probe, device)
    record_training_steps(probe)
    if spec.impl == "trl":
        run_trl(spec, probe)
    else:
        run_llamafactory(spec, probe)
    if rank0:
        write_result(spec, probe, device)


def batch_key(batch: dict[str, Any]) -> str:
    """A digest of a batch's token ids (TRL's batches name them ``chosen_input_ids`` etc.)."""
    digest = hashlib.sha1()
    for name in sorted(k for k in batch if k.endswith("input_ids")):
        digest.update(batch[name].cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def best_throughput(tokens: list[int], times: list[float], keys: list[Any], start: int, end: int) -> float:
    """Tokens/s over the distinct batches of steps ``[start, end)``, each at the best time it was trained in.

    ``keys`` identifies a step's batch (a digest of its ids), so a batch that comes round again in a later epoch
    counts once, at its fastest step, with its own token count.
    """
    best: dict[Any, tuple[float, int]] = {}
    for g in range(start, end):
        if keys[g] not in best or times[g] < best[keys[g]][0]:
            best[keys[g]] = (times[g], tokens[g])
    return sum(n for _, n in best.values()) / sum(t for t, _ in best.values())


def write_result(spec: WorkerSpec, probe: Probe, device: str) -> None:
    """Write the timed steps' measurements (and the profile's split once there is one) to the result file."""
    import torch

    batches = probe.batches[: spec.timed_end]
    steps = [batch_accounting(spec.impl, {k: v.cpu() for k, v in b.items()}, probe.attn) for b in batches]
    tokens = [s[0] for s in steps]
    keys = [batch_key(b) for b in batches]
    timed_tokens = sum(tokens[spec.warmup_steps :])
    timed_wall = sum(probe.step_times[spec.warmup_steps : spec.timed_end])
    result = {
        "impl": spec.impl,
        "vocab": spec.vocab,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "attn": probe.attn,
        "loss1": float(probe.losses[0]),
        "tokens_per_step": tokens,
        "unique_per_step": [s[1] for s in steps],
        "computed_per_step": [s[2] for s in steps],
        "step_times": probe.step_times[: spec.timed_end],
        "shares": probe.shares,
        "profile": "done" if probe.shares else ("failed" if spec.profile else "off"),
        "batch_keys": keys,
        "tps_best": best_throughput(tokens, probe.step_times, keys, spec.warmup_steps, spec.timed_end),
        "tps_mean": timed_tokens / timed_wall,
        # CPU seconds / (wall seconds x threads) over the timed steps: well below 1 means other processes competed
        "cpu_util": sum(probe.step_cpu[spec.warmup_steps : spec.timed_end]) / (timed_wall * torch.get_num_threads()),
        "peak_warmup": probe.peak_warmup,
        "peak_timed": probe.peak_timed,
        "peak": max(probe.peak_warmup, probe.peak_timed),
        "start_memory": probe.start_memory,
        "memory_kind": "cuda max_memory_allocated" if device == "cuda" else "peak RSS (VmHWM)",
        "reserved": probe.reserved,
        "params": probe.params,
        "syncs": probe.syncs,
        "efficiency": sum(s[2] for s in steps) / sum(s[1] for s in steps),
    }
    Path(spec.result_path).write_text(json.dumps(result, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# Parent: launch the workers one after another, check the losses agree, print the table.
# ----------------------------------------------------------------------------------------------------------------


def wait_for_idle_cpu(timeout: float, min_idle: float = 0.9, sample: float = 3.0) -> float:
    """Wait until the machine's CPUs are at least ``min_idle`` idle over ``sample`` seconds; returns the idle share.

    Linux only (``/proc/stat``); elsewhere it returns at once. Gives up after ``timeout`` seconds.
    """

    def times() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    if not Path("/proc/stat").exists():
        return 1.0
    deadline = time.monotonic() + timeout
    while True:
        idle0, total0 = times()
        time.sleep(sample)
        idle1, total1 = times()
        idle = (idle1 - idle0) / max(total1 - total0, 1)
        if idle >= min_idle or time.monotonic() > deadline:
            return idle


def launch(spec: WorkerSpec, workdir: Path, nproc: int) -> dict[str, Any]:
    """Run one worker in a fresh interpreter (torchrun for DeepSpeed / several GPUs); returns its result."""
    name = f"{spec.impl}-v{spec.vocab}"
    spec_path = workdir / f"{name}.spec.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    if spec.deepspeed or nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command[1:1] = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        DISABLE_VERSION_CHECK="1",
        TRL_EXPERIMENTAL_SILENCE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=str(workdir / "hf_datasets"),
    )
    env.pop("SIMPO_PLUGIN_DISABLE", None)
    log_path = workdir / f"{name}.log"
    Path(spec.result_path).unlink(missing_ok=True)  # a result from an earlier run must not pass for this one
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    profile_lost = proc.returncode != 0 and spec.profile and Path(spec.result_path).exists()
    if profile_lost:  # killed in the profiled extra step (the profiler's events can exhaust RAM): timings stand
        print(f"  {name}: the profiled extra step failed (exit {proc.returncode}); its timings stand, no split")
    elif proc.returncode != 0 or not Path(spec.result_path).exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{tail}\nworker {name} failed (exit {proc.returncode}); full log: {log_path}")
    shutil.rmtree(spec.output_dir, ignore_errors=True)  # logs and trainer state only; the model is not saved
    result = json.loads(Path(spec.result_path).read_text())
    result["wall_s"] = time.perf_counter() - start
    print(
        f"  {name:<18} loss@1 {result['loss1']:.6f}  {result['tps_best']:7.0f} tok/s  "
        f"CPU use {result['cpu_util']:4.0%}  ({result['wall_s']:.0f} s)"
    )
    return result


def metrics(r: dict[str, Any]) -> tuple[float, float, float]:
    """(best tokens/s, peak memory, peak memory above train begin) of one result."""
    return r["tps_best"], r["peak"], r["peak"] - r["start_memory"]


def print_table(results: list[dict[str, Any]]) -> None:
    """One row per (implementation, vocabulary), with the plugin's ratios to the host and to TRL."""
    gib = 2**30
    print(
        f"{'impl':<11} {'vocab':>6} {'tok/s':>7} {'CPU':>4} {'peak':>6} {'dpeak':>6} {'loss@1':>9} {'tok':>5} "
        f"{'attn/body/head':>14} | {'tok/s ratio':>11} | {'peak ratio':>11} | {'dpeak ratio':>11}"
    )
    print(
        f"{'':<11} {'':>6} {'':>7} {'use':>4} {'GiB':>6} {'GiB':>6} {'':>9} {'eff':>5} {'% of step':>14} | "
        + " | ".join(f"{'/host':>5} {'/TRL':>5}" for _ in range(3))
    )
    print("-" * 119)
    by_key = {(r["impl"], r["vocab"]): r for r in results}
    for r in results:
        refs = [by_key.get((impl, r["vocab"])) for impl in ("host", "trl")]
        cells = []
        for i, value in enumerate(metrics(r)):
            pair = [
                f"{value / metrics(ref)[i]:.2f}x" if ref and r["impl"].startswith("plugin") else "-" for ref in refs
            ]
            cells.append(f"{pair[0]:>5} {pair[1]:>5}")
        tps, peak, dpeak = metrics(r)
        use = f"{r['cpu_util']:.0%}" if r["device"] == "cpu" else "-"
        shares = r.get("shares") or {}
        split = "/".join(f"{100 * shares.get(k, 0):.0f}" for k in ("attention", "body", "head")) if shares else "-"
        print(
            f"{r['impl']:<11} {r['vocab']:>6} {tps:>7.0f} {use:>4} {peak / gib:>6.2f} {dpeak / gib:>6.2f} "
            f"{r['loss1']:>9.6f} {r['efficiency']:>5.2f} {split:>14} | " + " | ".join(cells)
        )


def check_losses(results: list[dict[str, Any]], dtype: str) -> bool:
    """The step-1 loss (initial weights, same batch) must agree across implementations to ``LOSS_RTOL``."""
    ok, tolerance = True, LOSS_RTOL[dtype]
    for vocab in sorted({r["vocab"] for r in results}):
        losses = {r["impl"]: r["loss1"] for r in results if r["vocab"] == vocab}
        ref = losses.get("host", next(iter(losses.values())))
        worst = max(abs(v - ref) / abs(ref) for v in losses.values())
        ok &= worst <= tolerance
        print(
            f"loss@1 vocab {vocab}: "
            + ", ".join(f"{k} {v:.7f}" for k, v in losses.items())
            + f"; max relative difference {worst:.1e} ({'OK' if worst <= tolerance else 'MISMATCH'}, "
            f"tolerance {tolerance:g})"
        )
    return ok


def print_saved(paths: list[str]) -> int:
    """The table and loss check of results saved with ``--json``; tokens/s recomputed from the saved steps."""
    results, dtypes = [], set()
    for path in paths:
        saved = json.loads(Path(path).read_text())
        run = saved["args"]
        dtypes.add(run["dtype"])
        start, end = run["warmup_steps"], run["warmup_steps"] + run["batches"] * run["repeats"]
        for r in saved["results"]:
            keys = r.get("batch_keys") or r["tokens_per_step"]  # older files: a batch's token count identifies it
            r["tps_best"] = best_throughput(r["tokens_per_step"], r["step_times"], keys, start, end)
            results.append(r)
    print_table(results)
    print()
    return 0 if check_losses(results, dtypes.pop() if len(dtypes) == 1 else "bf16") else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="vocab 32000 only; 1 warm-up step, 2 batches x 2")
    parser.add_argument("--vocabs", type=int, nargs="+", default=None, help="default: 32000 128000 (8b: 128256)")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--batch-size", type=int, default=4, help="preference pairs per step and device")
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--warmup-steps", type=int, default=None, help="burn-in steps, not timed (default 2)")
    parser.add_argument("--batches", type=int, default=None, help="distinct timed batches (default 4)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed steps = batches x repeats; a batch seen twice counts at its best"
    )
    parser.add_argument("--rounds", type=int, default=1, help="run every worker this often; keep the fastest")
    parser.add_argument(
        "--retries", type=int, default=2, help="CPU: rerun a worker whose CPU use was below 80%% (default 2)"
    )
    parser.add_argument(
        "--idle-wait", type=float, default=120.0, help="CPU: before a worker, wait up to this many s for idle cores"
    )
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false",
        help="skip the extra profiled step (the attention / body / head split)",
    )  # fmt: skip
    parser.add_argument("--model-shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: fp32 (tiny), bf16 (8b)")
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed JSON for every impl (launches torchrun)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="GPUs per worker (launches torchrun)")
    parser.add_argument(
        "--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
        help="for every impl (on by default, as in LLaMA-Factory)",
    )  # fmt: skip
    parser.add_argument(
        "--lengths", choices=["uniform", "real"], default="uniform",
        help="uniform: 20-120 word prompts, 10-150 word responses; real: the demo sets' lengths (medians "
        "180/320/340, long tails)",
    )  # fmt: skip
    parser.add_argument(
        "--plugin-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra YAML key for the plugin rows, e.g. simpo_logps_chunk_size=256 (repeatable)",
    )
    parser.add_argument("--workdir", default=None, help="assets, logs and results; reuses models (default: temp)")
    parser.add_argument("--json", default=None, help="also write all results to this file")
    parser.add_argument(
        "--table", nargs="+", default=None, metavar="JSON",
        help="print the table of earlier --json files (rows of several runs on one workdir) and exit",
    )  # fmt: skip
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default_vocabs = {"1b": [128256], "8b": [128256], "smollm2": [49152]}.get(args.model_shape, [32000, 128000])
    args.vocabs = args.vocabs or ([32000] if args.quick and args.model_shape == "tiny" else default_vocabs)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if args.quick else 2)
    args.batches = args.batches or (2 if args.quick else 4)
    args.dtype = args.dtype or ("bf16" if args.model_shape in ("1b", "8b") else "fp32")
    import yaml

    args.plugin_options = {}
    for option in args.plugin_option:
        key, sep, value = option.partition("=")
        if not sep:
            parser.error(f"--plugin-option needs KEY=VALUE, got {option!r}")
        args.plugin_options[key] = yaml.safe_load(value)  # typed as in a YAML config: 256, true, 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.table:
        return print_saved(args.table)

    import torch

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="simpo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(
        f"SimPO step benchmark: {args.model_shape} Llama, vocab {args.vocabs}, {args.batch_size} pairs/step, "
        f"cutoff {args.cutoff_len}, {args.lengths} lengths, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, {args.dtype}, AdamW; {args.warmup_steps} warm-up steps, "
        f"then {args.batches} "
        f"batches x {args.repeats} timed; {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"workdir {workdir}"
    )
    assets = build_assets(
        workdir, args.vocabs, args.model_shape, args.batch_size * (args.batches + 1), args.dtype, args.lengths
    )

    spec_device = "cuda" if torch.cuda.is_available() else "cpu"
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for _, vocab, impl in itertools.product(range(args.rounds), args.vocabs, args.impls):
        spec = WorkerSpec(
            impl=impl,
            vocab=vocab,
            model=assets["models"][vocab],
            dataset_dir=assets["dataset_dir"],
            output_dir=str(workdir / f"out-{impl}-v{vocab}"),
            result_path=str(workdir / f"{impl}-v{vocab}.result.json"),
            batch_size=args.batch_size,
            cutoff_len=args.cutoff_len,
            warmup_steps=args.warmup_steps,
            batches=args.batches,
            repeats=args.repeats,
            dtype=args.dtype,
            deepspeed=str(Path(args.deepspeed).resolve()) if args.deepspeed else None,
            gradient_checkpointing=args.gradient_checkpointing,
            plugin_options=args.plugin_options,
            vocab_size=vocab,
            profile=args.profile,
        )
        for attempt in range(1 + args.retries):
            if spec_device == "cpu":  # a worker's timings are only as good as the machine is quiet
                wait_for_idle_cpu(args.idle_wait)
            result = launch(spec, workdir, args.nproc_per_node)
            if (impl, vocab) not in best or result["tps_best"] > best[impl, vocab]["tps_best"]:
                best[impl, vocab] = result
            if result["device"] != "cpu" or result["cpu_util"] >= MIN_CPU_USE or attempt == args.retries:
                break
            print(f"    CPU use below {MIN_CPU_USE:.0%}: other processes competed for the cores; running it again")
    results = list(best.values())

    if len({tuple(r["tokens_per_step"]) for r in results}) != 1:
        print("WARNING: the implementations saw different batches (tokens per step differ); see the JSON results")
    print()
    print_table(results)
    print()
    ok = check_losses(results, args.dtype)
    legend = [
        "tok/s: unpadded prompt+chosen and prompt+rejected tokens per second of optimizer step (forward, backward,",
        f"  AdamW) over the timed steps' distinct batches, each at its fastest step; best of {args.rounds} round(s)",
        "CPU use: CPU time / (wall time x threads) over the timed steps; well below 100%: other processes competed",
        f"peak: {results[0]['memory_kind']} over all training steps; dpeak: peak minus memory at train begin",
        "tok eff: tokens the model computes / unique tokens (each prompt once + both responses, unpadded)",
        "attn/body/head: self time of one profiled extra step: SDPA/flash kernels (forward+backward) / the rest /",
        "  ops with a vocabulary-sized dimension (LM head, log-softmax, embedding)",
        "ratios: plugin rows divided by the host's and TRL's rows of the same vocabulary",
    ]
    print("\n".join(legend))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if not args.workdir:  # a temporary workdir only holds rebuildable models and logs; --workdir keeps them
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
