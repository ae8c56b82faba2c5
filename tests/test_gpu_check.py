"""The GPU check's dry run: `benchmarks/gpu_check.sh --cpu-dry-run` runs every part that can run on the CPU (tiny
shapes), through the same script and, where `make gpu-wheelhouse` filled .whl/ (CI does), from the wheelhouse
installed without a network: neither the script nor the wheel list can rot unseen between GPU sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import cli_env


ROOT = Path(__file__).resolve().parents[1]
CUDA_ONLY = {  # each row a CPU cannot run: SKIP, with its reason
    ("exact", "route under flash / mem-efficient / cuDNN SDPA only"),
    ("exact", "QLoRA (4-bit nf4 base, bf16 compute): default"),
    ("exact", "Liger (RMSNorm, RoPE, SwiGLU as under stage: simpo): default"),
    ("exact", "flash-attention 2: padding-free"),
    ("syncs", "host syncs per step"),
}


def test_the_dry_run_passes_every_part_that_runs_on_the_cpu(tmp_path) -> None:
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run", "--out",
                             str(tmp_path), "--deadline", "900"], cwd=ROOT, env=cli_env(), capture_output=True,
                            text=True, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    wheelhouse = sorted((ROOT / ".whl").glob("*.whl"))
    if wheelhouse:  # installed from it, offline, and what runs is what it holds
        assert "wheels from .whl/ without a network" in result.stdout
        assert (tmp_path / "venv" / "bin" / "llamafactory-cli").exists()
        # the wheelhouse's DeepSpeed is .venv's release: installed, then .venv's copy runs (its op compiled once)
        assert "the dry run runs .venv's copy of it" in result.stdout
    rows = json.loads((tmp_path / "results.json").read_text())
    verdicts = {(row["part"], row["check"]): row["verdict"] for row in rows}
    assert {part for part, _ in verdicts} == {"setup", "exact", "zero3", "syncs", "cli", "bench"}
    assert {key for key, verdict in verdicts.items() if verdict == "SKIP"} == CUDA_ONLY
    assert all(verdict == "PASS" for key, verdict in verdicts.items() if key not in CUDA_ONLY), verdicts
    # llama: 3 fast paths; autocast; LoRA; sliding window: 2 paths x sdpa/eager; and the 4 CUDA-only rows
    assert sum(part == "exact" for part, _ in verdicts) == 13
    # 5 DeepSpeed configurations and the probe gathered once vs partitioned
    assert sum(part == "zero3" for part, _ in verdicts) == 6
    assert any(check.startswith("probe:") for part, check in verdicts if part == "zero3")
    assert (tmp_path / "table.md").read_text().startswith("| part | check | verdict | numbers |")


def test_the_cli_part_fails_where_torchrun_runs_another_environment(tmp_path, monkeypatch) -> None:
    """The host's launcher runs `torchrun` from PATH: one of the image's, whose interpreter does not see the check's
    venv, would train with other packages than the ones installed (gpu_check.sh puts a torchrun in the venv)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    torchrun = tmp_path / "torchrun"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for interpreter, runs_here in ((sys._base_executable, False), (sys.executable, True)):
        torchrun.write_text(f"#!{interpreter}\nimport sys\n")
        torchrun.chmod(0o755)
        reason = gpu_check.torchrun_elsewhere()
        assert (reason == "") is runs_here, reason
        assert runs_here or f"does not run in {sys.prefix}" in reason
