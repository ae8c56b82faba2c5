"""The GPU check: is the plugin's GPU path exact, free of host syncs, and how fast is it, in one table.

Run by ``benchmarks/gpu_check.sh`` (which installs the wheelhouse offline first); ``--cpu-dry-run`` runs every part
that can run on the CPU, on tiny shapes, so CI proves the script does not rot. Parts, in order of value, each
skipped (and listed as such) when the global deadline no longer leaves its budget:

- ``setup``: versions, the device, the ``simpo`` stage registered with the host.
- ``exact`` (``gpu_exact.py``): one batch through the plain path in fp32 (the reference) and, in the run's dtype
  (bf16 on a GPU), through the plain path and each fast path: every layout, fp32 weights under bf16 autocast,
  LoRA, QLoRA, Liger, a sliding-window Mistral on sdpa and eager, flash-attention 2 where it imports, the route
  under SDPA's fused kernels only. The error of each sequence's mean log-prob and of the gradients.
- ``zero3`` (``gpu_zero3.py`` under ``torchrun``, one process): the default path on a ZeRO-3-partitioned model,
  per DeepSpeed configuration (``overlap_comm`` and prefetch, reuse distance 0, ``offload_param``, LoRA) against
  no ZeRO; the head released after each backward; a probe's answers gathered once vs partitioned, and their time.
- ``syncs``: three steps of the default path with the layout built on the CPU as the collator builds it, under
  ``torch.cuda.set_sync_debug_mode("warn")``: host syncs per step (CUDA only; ``tests/test_syncs.py`` counts them
  on the CPU), and what the layout costs on the CPU against the step.
- ``cli``: a real ``llamafactory-cli train`` under DeepSpeed ZeRO-3 (one process) with generation probes scored by
  a reward model and judged by an LLM judge, bf16 and Liger where they exist: exit 0, probes at every step, no
  warning from the plugin.
- ``bench``: ``bench_step.py`` against the host's built-in SimPO (Llama-3.2-1B's shape, cutoff 2048, 8 pairs,
  bf16, gradient checkpointing on a GPU; the tiny shape in the dry run): tokens/s and their ratio, MFU (6 N
  tokens/s over the GPU's dense bf16 peak), ``max_memory_allocated`` and ``max_memory_reserved``, host syncs in
  one step.

Writes ``OUT/results.json`` and ``OUT/table.md``; prints the table. Exit 1 if a part FAILs.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from gpu_exact import batch_for, device_and_dtype, model_for, part_exact


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUDGETS = {"setup": 30, "exact": 70, "zero3": 60, "syncs": 30, "cli": 90, "bench": 170}  # seconds each part may take
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, per GPU


@dataclass
class Row:
    part: str
    check: str
    verdict: str  # PASS, FAIL, FINDING, SKIP
    numbers: str = ""


class Check:
    def __init__(self, out: Path, dry_run: bool, deadline: float) -> None:
        self.out, self.dry_run, self.deadline = out, dry_run, deadline
        self.start = time.monotonic()
        self.rows: list[Row] = []

    def add(self, part: str, check: str, verdict: str, numbers: str = "") -> None:
        self.rows.append(Row(part, check, verdict, numbers))
        print(f"[{part}] {verdict:7} {check}: {numbers}", flush=True)

    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.start)

    def table(self) -> str:
        lines = ["| part | check | verdict | numbers |", "|---|---|---|---|"]
        lines += [f"| {r.part} | {r.check} | {r.verdict} | {r.numbers} |" for r in self.rows]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Parts
# ----------------------------------------------------------------------------------------------------------------


def part_setup(check: Check) -> None:
    import importlib.metadata as metadata

    import torch

    names = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "deepspeed", "llamafactory",
             "liger-kernel", "flash-attn", "bitsandbytes", "simpo-plugin")  # fmt: skip
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    check.add("setup", "versions", "PASS", f"{device}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    from llamafactory.train import tuner  # noqa: F401  (registers the plugin's stage through the host)

    from simpo_plugin.host import REGISTRY

    check.add("setup", "stage `simpo` registered", "PASS" if "simpo" in REGISTRY else "FAIL")


def part_zero3(check: Check) -> None:
    out = check.out / "zero3.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(HERE / "gpu_zero3.py"), str(out)]  # fmt: skip
    command += ["--dry-run"] if check.dry_run else []
    result = subprocess.run(command, cwd=HERE, capture_output=True, text=True, timeout=max(60, int(check.left())),
                            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))  # fmt: skip
    (check.out / "zero3.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0 or not out.exists():
        check.add("zero3", "(whole part)", "FAIL", f"exit {result.returncode}: {result.stderr[-300:]}")
        return
    for row in json.loads(out.read_text()):
        check.add(**row)


def part_syncs(check: Check) -> None:
    import warnings

    import torch

    from simpo_plugin.lean import LeanConfig, SequenceLogps

    device, dtype = device_and_dtype(check.dry_run)
    model = model_for(check.dry_run, device, dtype)
    batch = batch_for(check.dry_run, model.config.vocab_size)
    forward = SequenceLogps(LeanConfig())
    plan = forward.plan_for(model)
    started = time.perf_counter()
    prepared = plan.build(**batch)  # what the collator does, on the CPU
    layout_s = time.perf_counter() - started
    if device.type == "cuda":
        prepared = prepared.pin_memory()

    def step() -> None:
        moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        sums, lengths = forward(model, model, moved, prepared)
        (sums / lengths).sum().backward()

    step()  # step 1: the one-time lean check
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    if device.type != "cuda":
        for _ in range(3):
            step()
        step_s = (time.perf_counter() - started) / 3
        check.add("syncs", "host syncs per step", "SKIP", "CUDA only (tests/test_syncs.py counts them on the CPU)")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(3):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        step_s = (time.perf_counter() - started) / 3
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        verdict = "PASS" if not syncs else "FINDING"
        check.add("syncs", "host syncs per step (default path, layout from the CPU)", verdict,
                  f"{len(syncs) / 3:.1f} per step" + (f"; first: {syncs[0][:120]}" if syncs else ""))  # fmt: skip
    check.add("syncs", "layout on the CPU vs one forward + backward", "PASS",
              f"layout {layout_s * 1e3:.1f} ms, step {step_s * 1e3:.1f} ms ({layout_s / step_s:.2f}x)")  # fmt: skip


def torchrun_elsewhere() -> str:
    """Why the `torchrun` on PATH, which the host's launcher runs, would not run in this interpreter's environment
    ('' when it does): its workers would import other packages than the ones this check installed."""
    import shutil

    found = shutil.which("torchrun")
    if found is None:
        return "no `torchrun` on PATH"
    if Path(found).parent == Path(sys.executable).parent:
        return ""
    first = Path(found).read_bytes()[:512].split(b"\n", 1)[0].decode(errors="replace")
    named = first[2:].split() if first.startswith("#!") else []
    program = shutil.which(named[-1]) if named and named[0].endswith("/env") else (named[0] if named else None)
    if program:
        prefix = subprocess.run([program, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
        if prefix.stdout.strip() == sys.prefix:
            return ""
    return f"`torchrun` on PATH ({found}, {first!r}) does not run in {sys.prefix}"


def part_cli(check: Check) -> None:
    import importlib.util

    import torch
    from transformers import AutoTokenizer

    from simpo_plugin.testing import build_demo_assets, build_tiny_reward_model

    work = check.out / "cli"
    assets = build_demo_assets(work / "assets")
    build_tiny_reward_model(work / "rm", AutoTokenizer.from_pretrained(assets["model"]), seed=3)
    gpu = torch.cuda.is_available() and not check.dry_run
    liger = importlib.util.find_spec("liger_kernel") is not None
    config = {
        "model_name_or_path": str(assets["model"]), "stage": "simpo", "do_train": True, "finetuning_type": "full",
        "dataset": "simpo_synthetic", "dataset_dir": str(assets["dataset_dir"]), "template": "default",
        "cutoff_len": 128, "output_dir": str(work / "out"), "overwrite_output_dir": True, "max_steps": 2,
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "deepspeed": str(ROOT / "examples" / "deepspeed" / "ds_z3_config.json"),
        "simpo_probe_steps": 1, "simpo_probe_prompts": 4, "simpo_probe_max_new_tokens": 8,
        "simpo_probe_reward_model": str(work / "rm"), "simpo_probe_judge": str(assets["model"]),
        "bf16": gpu, "enable_liger_kernel": liger and gpu,
    }  # fmt: skip
    import yaml

    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, FORCE_TORCHRUN="1", NPROC_PER_NODE="1")
    cli = Path(sys.executable).with_name("llamafactory-cli")
    runs_elsewhere = torchrun_elsewhere()
    if runs_elsewhere:
        check.add("cli", "ZeRO-3 + probes (reward model, judge)", "FAIL", runs_elsewhere)
        return
    started = time.monotonic()
    result = subprocess.run([str(cli), "train", str(work / "config.yaml")], env=env, capture_output=True, text=True,
                            timeout=max(60, int(check.left())))  # fmt: skip
    (work / "log.txt").write_text(result.stdout + result.stderr)
    seconds = time.monotonic() - started
    label = (
        "ZeRO-3 + probes (reward model, judge)" + (" + bf16" if gpu else "") + (" + Liger" if liger and gpu else "")
    )
    if result.returncode != 0:
        check.add("cli", label, "FAIL", f"exit {result.returncode}: {(result.stderr or result.stdout)[-300:]}")
        return
    history = json.loads((work / "out" / "trainer_state.json").read_text())["log_history"]
    probes = [e for e in history if "probe/length" in e]
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "simpo-plugin:" in line and not any(f"simpo-plugin: {kind}" in line for kind in ("hint:", "recap"))
    ]
    # fmt: skip (the recap restates lines already checked here)
    scored = all("probe/reward" in e and "probe/judge_win_rate" in e for e in probes)
    ok = [e["step"] for e in probes] == [0, 1, 2] and scored and not lines
    check.add("cli", label, "PASS" if ok else "FAIL",
              f"{seconds:.0f} s; probes at {[e['step'] for e in probes]}, scored and judged: {scored}"
              + (f"; {lines[0][:200]}" if lines else ""))  # fmt: skip


def part_bench(check: Check) -> None:
    work = check.out / "bench"
    work.mkdir(parents=True, exist_ok=True)
    if check.dry_run:
        # the script end to end, not its numbers: one warm-up step and one timed step per implementation
        args = ["--quick", "--no-profile", "--idle-wait", "0", "--retries", "0", "--batches", "1", "--repeats", "1",
                "--cutoff-len", "256"]  # fmt: skip
    else:
        args = ["--model-shape", "1b", "--dtype", "bf16", "--lengths", "real", "--cutoff-len", "2048",
                "--batch-size", "8", "--warmup-steps", "2", "--batches", "3", "--repeats", "1"]  # fmt: skip
    command = [sys.executable, str(HERE / "bench_step.py"), *args, "--impls", "plugin", "host",
               "--workdir", str(work), "--json", str(work / "bench.json")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=max(60, int(check.left())))
    (work / "log.txt").write_text(result.stdout + result.stderr)
    if not (work / "bench.json").exists():
        check.add("bench", "plugin vs host's SimPO", "FAIL", f"exit {result.returncode}: {result.stderr[-300:]}")
        return
    results = json.loads((work / "bench.json").read_text())["results"]
    for vocab in sorted({r["vocab"] for r in results}):
        rows = {r["impl"]: r for r in results if r["vocab"] == vocab}
        plugin, host = rows.get("plugin"), rows.get("host")
        if not (plugin and host):
            check.add("bench", f"vocab {vocab}", "FAIL", "a row is missing")
            continue
        speed = plugin["tps_best"] / host["tps_best"]
        gib = 2**30
        numbers = (
            f"{plugin['tps_best']:.0f} vs {host['tps_best']:.0f} tok/s ({speed:.2f}x), peak "
            f"{plugin['peak'] / gib:.2f} vs {host['peak'] / gib:.2f} GiB ({plugin['peak'] / host['peak']:.2f}x, "
            f"{plugin['memory_kind']}); loss@1 {plugin['loss1']:.6f} vs {host['loss1']:.6f}"
        )
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in plugin["device"]), None)
        if peak and plugin.get("params"):
            mfu = [6 * r["params"] * r["tps_best"] / peak for r in (plugin, host)]
            numbers += f"; MFU {mfu[0]:.1%} vs {mfu[1]:.1%}"
        if plugin.get("reserved"):
            numbers += f"; reserved {plugin['reserved'] / gib:.2f} vs {host['reserved'] / gib:.2f} GiB"
        if plugin.get("syncs", -1) >= 0:
            numbers += f"; host syncs in a step {plugin['syncs']} vs {host['syncs']}"
        check.add("bench", f"plugin vs host's SimPO, vocab {vocab}", "PASS" if result.returncode == 0 else "FAIL",
                  numbers)  # fmt: skip


PARTS = {
    "setup": part_setup,
    "exact": part_exact,
    "zero3": part_zero3,
    "syncs": part_syncs,
    "cli": part_cli,
    "bench": part_bench,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check-out", help="everything the check writes goes here")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the parts that run on the CPU, tiny shapes")
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds for all parts (default 8 min)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of: {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.cpu_dry_run, args.deadline)
    wanted = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    for name in wanted:
        if check.left() < BUDGETS[name]:
            check.add(
                name, "(whole part)", "SKIP", f"{check.left():.0f} s left of the deadline, needs ~{BUDGETS[name]} s"
            )
            continue
        started = time.monotonic()
        try:
            PARTS[name](check)
        except Exception as exc:  # a part that crashes is a FAIL with its cause; the next part still runs
            (out / f"{name}.traceback.txt").write_text(traceback.format_exc())
            check.add(name, "(whole part)", "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
        print(f"[{name}] {time.monotonic() - started:.0f} s", flush=True)
    table = check.table()
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps([asdict(r) for r in check.rows], indent=1))
    print("\n" + table)
    return 1 if any(r.verdict == "FAIL" for r in check.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
