"""What the generation probes cost: the same SimPO run with probes off and at their defaults, side by side.

Both runs go through the real ``llamafactory-cli train`` on the step benchmark's model and data
(``bench_setup.build_assets``: a randomly initialised Llama of the ``tiny`` shape, synthetic pairs, cutoff 1024,
4 pairs per step), or on SmolLM2-135M-Instruct (``--smollm2 DIR``), and the script prints each run's
``train_runtime``, the number of probes and the probes' share of the run. A random model never stops, so every
probe answer runs to ``simpo_probe_max_new_tokens``: the worst case for the probes.

Run ``python benchmarks/probe_cost.py`` (CPU: about 5 minutes on 2 cores); ``--steps`` sets the run length.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


sys.path.insert(0, str(Path(__file__).parent))
from bench_setup import DATASET, build_assets  # noqa: E402

from simpo_plugin.train.hparams import DEFAULT_PROBE_STEPS  # noqa: E402


def run(config: dict, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("llamafactory-cli")
    result = subprocess.run([str(cli), "train", str(workdir / "config.yaml")], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    history = json.loads((Path(config["output_dir"]) / "trainer_state.json").read_text())["log_history"]
    probes = [entry for entry in history if "probe/length" in entry]
    runtime = json.loads((Path(config["output_dir"]) / "train_results.json").read_text())["train_runtime"]
    return {"runtime": runtime, "probes": len(probes), "length": probes[-1]["probe/length"] if probes else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--smollm2", default=None, help="a SmolLM2 checkpoint (python -m simpo_plugin.testing)")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="probe_cost_"))
    assets = build_assets(root / "assets", [32000], "tiny", num_pairs=args.steps * args.batch_size, dtype="fp32")
    model = args.smollm2 or assets["models"][32000]
    base = {
        "model_name_or_path": model, "stage": "simpo", "do_train": True, "finetuning_type": "full",
        "dataset": DATASET, "dataset_dir": assets["dataset_dir"],
        "template": "smollm2" if args.smollm2 else "default", "cutoff_len": args.cutoff_len,
        "per_device_train_batch_size": args.batch_size, "max_steps": args.steps, "learning_rate": 1e-6,
        "logging_steps": 10, "save_strategy": "no", "report_to": "none", "gradient_checkpointing": True,
        "overwrite_output_dir": True, "seed": 42,
    }  # fmt: skip
    results = {}
    for name, probe_steps in (("probes off", 0), (f"probes every {DEFAULT_PROBE_STEPS} (default)", None)):
        config = {**base, "output_dir": str(root / name.split()[1])}
        if probe_steps is not None:
            config["simpo_probe_steps"] = probe_steps
        results[name] = run(config, root / "runs" / name.split()[1])
    off, on = results.values()
    share = (on["runtime"] - off["runtime"]) / on["runtime"]
    per_probe = (on["runtime"] - off["runtime"]) / max(on["probes"], 1)
    print(f"model: {model}; {args.steps} steps of {args.batch_size} pairs at cutoff {args.cutoff_len}")
    print(f"{'run':<32} {'train_runtime (s)':>18} {'probes':>7}")
    for name, result in results.items():
        print(f"{name:<32} {result['runtime']:>18.1f} {result['probes']:>7}")
    step = off["runtime"] / args.steps
    print(f"probe cost: {share:.1%} of the run ({per_probe:.1f} s per probe, {step:.2f} s per training step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
