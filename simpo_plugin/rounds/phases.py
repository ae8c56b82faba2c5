"""One function per phase of a round; each is the single command it stands for, called with the round's keys.

- :func:`make_pairs`: ``simpo-plugin pairs`` (in this process) on round r's policy and round r's slice of the
  prompts, into ``round_<r>/pairs`` (resumes from its parts);
- :func:`train`: ``llamafactory-cli train`` (a child process, in this environment: ``FORCE_TORCHRUN``,
  ``NNODES``, DeepSpeed configs work as they do for the command) on those pairs, into ``round_<r>/train``
  (resumes from its last checkpoint); LoRA rounds are then merged by the host's ``llamafactory-cli export``
  into ``round_<r>/merged``, the next round's policy, or (``adapters: stack``) round r trains a new adapter
  (``create_new_adapter``) on the start with rounds 1..r-1's adapters merged in memory, and the next policy is the
  start with rounds 1..r's adapters;
- :func:`evaluate`: ``simpo-plugin eval`` of the new policy against the start (``round_<r>/eval``) and, from round 2
  on, against the previous round (``round_<r>/eval_previous``), sharing ``output_dir/answers`` so each policy's
  answers are generated once.

A policy is the host keys that load it: ``model_name_or_path`` and, for stacked adapters, ``adapter_name_or_path``.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import EmptyOutput, RunStopped
from ..evaluation import evaluate_models
from ..pairs import build_pairs
from .config import RoundsConfig


def cli_program() -> str:
    """The host's ``llamafactory-cli`` of this environment."""
    found = Path(sys.executable).with_name("llamafactory-cli")
    return str(found) if found.exists() else (shutil.which("llamafactory-cli") or "llamafactory-cli")


def run_child(command: list[str], log: Path) -> None:
    """Run ``command`` with this process's environment, its output to the console and ``log``.

    On Ctrl-C or SIGTERM the child gets SIGTERM and is waited for (the stage saves a checkpoint and stops), then
    the interruption goes on up. A failing child raises :class:`RunStopped` naming its log.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for line in iter(child.stdout.readline, b""):
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                sink.write(line)
            code = child.wait()
        except BaseException:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=600)
                except subprocess.TimeoutExpired:
                    child.kill()
            raise
    if code != 0:
        raise RunStopped(f"`{' '.join(command[:2])} {command[-1]}` exited with {code}; its output is in {log}")


def slice_of(config: RoundsConfig, r: int) -> str:
    """Round r's ``prompt_slice``: its ``prompts_per_round`` prompts, or the r-th of ``rounds`` equal parts."""
    if config.prompts_per_round:
        start = (r - 1) * config.prompts_per_round
        return f"{start}:{start + config.prompts_per_round}"
    return f"{r}/{config.rounds}"


def make_pairs(config: RoundsConfig, r: int, policy: dict[str, str], folder: Path) -> dict[str, Any]:
    """Round r's pairs; what training needs of them (dataset, folder) and how many were kept."""
    keys = {**config.pairs, **policy, "template": config.template,
            "output_dir": str(folder), "prompt_slice": slice_of(config, r)}  # fmt: skip
    started = time.monotonic()
    try:
        stats = build_pairs(keys)
    except EmptyOutput as exc:
        raise EmptyOutput(f"round {r}: {exc} Change the `pairs:` block and run again.") from exc
    kept = int(getattr(stats, "kept", 0) or 0)
    return {"dataset": config.pairs.get("dataset_name", "onpolicy"), "dataset_dir": str(folder), "kept": kept,
            "prompt_slice": keys["prompt_slice"], "seconds": time.monotonic() - started}  # fmt: skip


def warnings_logged(train_dir: Path) -> list[str]:
    """The collapse warnings (``warning/*`` marks) the run logged, as ``name@step``."""
    state = train_dir / "trainer_state.json"
    if not state.exists():
        return []
    history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
    return [f"{key.removeprefix('warning/')}@{entry.get('step')}" for entry in history for key in entry
            if key.startswith("warning/")]  # fmt: skip


def train(config: RoundsConfig, r: int, policy: dict[str, str], pairs: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Round r's training (and merge); the next policy (``path``, shown in the report, and ``model``, its host keys)
    and the warnings the run logged."""
    out = folder / "train"
    if out.exists() and not any(out.glob("checkpoint-*")):
        shutil.rmtree(out)  # stopped before its first checkpoint: nothing to resume from
    keys = {**config.train, "stage": "simpo", "do_train": True, **policy,
            "template": config.template, "dataset": pairs["dataset"], "dataset_dir": pairs["dataset_dir"],
            "output_dir": str(out)}  # fmt: skip
    if config.adapters == "stack":
        keys["create_new_adapter"] = True
    (folder / "train.yaml").write_text(yaml.safe_dump(keys, sort_keys=False), encoding="utf-8")
    started = time.monotonic()
    run_child([cli_program(), "train", str(folder / "train.yaml")], folder / "train.log")
    model = {"model_name_or_path": str(out)}
    if config.lora and config.adapters == "stack":
        stacked = [a for a in policy.get("adapter_name_or_path", "").split(",") if a] + [str(out)]
        model = {"model_name_or_path": policy["model_name_or_path"], "adapter_name_or_path": ",".join(stacked)}
    elif config.lora:
        merged = folder / "merged"
        export = {**policy, "adapter_name_or_path": str(out), "template": config.template,
                  "finetuning_type": "lora", "export_dir": str(merged)}  # fmt: skip
        if "trust_remote_code" in config.train:
            export["trust_remote_code"] = config.train["trust_remote_code"]
        (folder / "export.yaml").write_text(yaml.safe_dump(export, sort_keys=False), encoding="utf-8")
        run_child([cli_program(), "export", str(folder / "export.yaml")], folder / "export.log")
        model = {"model_name_or_path": str(merged)}
    path = model.get("adapter_name_or_path", model["model_name_or_path"]).split(",")[-1]
    return {"policy": path, "model": model, "warnings": warnings_logged(out), "seconds": time.monotonic() - started}


def entry(name: str, policy: dict[str, str]) -> dict[str, str]:
    """An eval ``models`` entry for a policy (its adapters ride on the base: ``adapter_name_or_path``)."""
    found = {"name": name, "path": policy["model_name_or_path"]}
    if policy.get("adapter_name_or_path"):
        found["adapter_name_or_path"] = policy["adapter_name_or_path"]
    return found


def compare(config: RoundsConfig, models: list[dict[str, str]], folder: Path) -> dict[str, Any]:
    """``simpo-plugin eval`` of ``models`` (the first is the baseline) into ``folder``; the last model's row."""
    keys = {**config.eval, "models": models, "baseline": models[0]["name"], "template": config.template,
            "output_dir": str(folder), "answers_cache": str(Path(config.output_dir) / "answers")}  # fmt: skip
    results = evaluate_models(keys)
    return results[models[-1]["name"]]


def evaluate(
    config: RoundsConfig, r: int, start: dict[str, str], previous: dict[str, str], new: dict[str, str], folder: Path
) -> dict[str, Any]:
    """The new policy against the start and, from round 2 on, against the previous round's policy."""
    started = time.monotonic()
    vs_start = compare(config, [entry("start", start), entry(f"round_{r}", new)], folder / "eval")
    vs_previous = vs_start
    if r > 1:
        vs_previous = compare(config, [entry(f"round_{r - 1}", previous), entry(f"round_{r}", new)],
                              folder / "eval_previous")  # fmt: skip
    return {"vs_start": vs_start, "vs_previous": vs_previous, "seconds": time.monotonic() - started}
