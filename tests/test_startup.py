"""The `.pth` startup hook: cheap, lazy, idempotent, opt-out, and never breaks the interpreter."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simpo_plugin import _startup


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


STARTUP_BUDGET_US = 5000


def run_python(*args: str, unset: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """This interpreter with the plugin enabled, minus the variables in ``unset``, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("SIMPO_PLUGIN_DISABLE", *unset)}
    full_env.update(env)
    return subprocess.run([sys.executable, *args], env=full_env, capture_output=True, text=True, timeout=300)


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    return run_python("-c", code, **env)


def plugin_import_us(stderr: str) -> int:
    """Sum of self-times (us) of every simpo_plugin module in `-X importtime` output."""
    total = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "simpo_plugin" in line:
            total += int(line.split("|")[0].split(":")[1])
    return total


def test_startup_is_cheap_and_imports_nothing_heavy() -> None:
    probe = python(
        "import sys; print(sorted(m for m in ('torch', 'wrapt', 'llamafactory', 'transformers') if m in sys.modules))"
    )
    assert probe.stdout.strip() == "[]"
    costs = []
    for _ in range(5):  # wall time: another process on the cores only adds, so the least of a few is the cost
        timed = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
        assert "simpo_plugin._startup" in timed.stderr, "the .pth line did not run"
        costs.append(plugin_import_us(timed.stderr))
    assert min(costs) < STARTUP_BUDGET_US, f"startup hook costs {min(costs)} us (runs: {costs})"


def test_host_import_installs_hooks() -> None:
    out = python("import llamafactory.train.tuner as t; print(hasattr(t.get_train_args, '__simpo_original__'))")
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr


def test_opt_out_removes_every_trace() -> None:
    code = (
        "import sys, llamafactory.train.tuner as t\n"
        "from llamafactory.hparams import FinetuningArguments as F\n"
        "print(sorted(m for m in sys.modules if m.startswith('simpo_plugin')), "
        "hasattr(t.get_train_args, '__simpo_original__'), 'simpo' in str(F.__annotations__['stage']))"
    )
    out = python(code, SIMPO_PLUGIN_DISABLE="1")
    assert out.stdout.strip().splitlines()[-1] == "[] False False", out.stderr


def test_install_is_idempotent() -> None:
    assert _startup.install() is False  # already armed or handed over in this interpreter
    assert sum(isinstance(f, _startup.HostImportWatcher) for f in sys.meta_path) <= 1


def test_missing_host_imports_fail_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_startup, "HOST_PACKAGE", "no_such_host_package_xyz")
    watcher = _startup.HostImportWatcher()
    monkeypatch.setattr(sys, "meta_path", [watcher, *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="no_such_host_package_xyz"):
        __import__("no_such_host_package_xyz")
    assert watcher not in sys.meta_path


def _fake_host(root: Path, init: str = "", finetuning_args: str = "") -> Path:
    package = root / "llamafactory"
    (package / "hparams").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(init))
    (package / "hparams" / "__init__.py").write_text("")
    (package / "hparams" / "finetuning_args.py").write_text(textwrap.dedent(finetuning_args))
    return root


def test_broken_host_import_is_the_hosts_error(tmp_path: Path) -> None:
    root = _fake_host(tmp_path, init="raise RuntimeError('host is broken')")
    assert python("pass", PYTHONPATH=str(root)).returncode == 0
    out = python("import llamafactory", PYTHONPATH=str(root))
    assert out.returncode != 0 and "host is broken" in out.stderr and "simpo-plugin" not in out.stderr


def test_incompatible_host_gives_one_warning_and_works(tmp_path: Path) -> None:
    root = _fake_host(tmp_path, finetuning_args="VALUE = 1\n")  # no FinetuningArguments to patch
    out = python("import llamafactory.hparams.finetuning_args as m; print(m.VALUE)", PYTHONPATH=str(root))
    assert out.returncode == 0 and out.stdout.strip() == "1"
    warnings = [line for line in out.stderr.splitlines() if "simpo-plugin" in line]
    assert len(warnings) == 1 and "FinetuningArguments" in warnings[0] and "SIMPO_PLUGIN_DISABLE" in warnings[0]


def test_read_only_filesystem_changes_nothing(tmp_path: Path) -> None:
    """Bytecode caches and config dirs cannot be written: the hooks still go in and nothing is printed by us.

    The installed package is copied without its bytecode (first on the path, so the `.pth` line imports the copy):
    each of its modules tries to write its bytecode, as in an image whose packages were installed without it. The
    rest of the environment reads the bytecode pip compiled (a fresh PYTHONPYCACHEPREFIX for all of it took 44 s
    of recompiling torch and the host)."""
    import shutil

    import simpo_plugin

    writable = tmp_path / "tmp"
    writable.mkdir()
    package = tmp_path / "site" / "simpo_plugin"
    shutil.copytree(Path(simpo_plugin.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    script = Path(__file__).with_name("run_read_only.py")
    out = run_python("-S", str(script), unset=("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"),
                     TMPDIR=str(writable), PYTHONPATH=str(package.parent))  # fmt: skip
    assert out.returncode == 0, out.stderr
    status, *refused = out.stdout.strip().splitlines()
    assert status == "True simpo"
    for cache in (package / "__pycache__", package / "host" / "__pycache__"):  # the mkdir, or a write inside it
        assert any(path == str(cache) or path.startswith(f"{cache}{os.sep}") for path in refused), (cache, refused)
    assert "simpo-plugin" not in out.stderr


def test_the_suite_runs_on_the_install_it_names() -> None:
    """`make test` runs on an editable install; `make test-lowest` on the wheel built from the sdist, as users
    install it. Either way the `.pth` startup line sits in site-packages, and a new interpreter started where the
    suite runs imports the installed package and has the stage."""
    import importlib.metadata
    import json
    import sysconfig

    import simpo_plugin

    mode = os.environ.get("SIMPO_TEST_INSTALL", "editable")
    site = Path(sysconfig.get_paths()["purelib"])
    checkout = Path(__file__).resolve().parents[1]
    assert (site / "simpo_plugin.pth").read_text() == (checkout / "simpo_plugin.pth").read_text()
    distribution = importlib.metadata.distribution("simpo-plugin")
    direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
    editable = direct_url.get("dir_info", {}).get("editable", False)
    child = python("import simpo_plugin, llamafactory.extras.constants as c; print(simpo_plugin.__file__, "
                   "'simpo' in c.TRAINING_STAGES.values())")  # fmt: skip
    assert child.returncode == 0, child.stderr
    child_file, has_stage = child.stdout.split()
    assert has_stage == "True" and child_file == simpo_plugin.__file__
    if mode == "wheel":
        assert not editable and direct_url["url"].endswith(".whl"), direct_url
        assert Path(simpo_plugin.__file__).resolve().is_relative_to(site.resolve())
        built = sorted(path.suffix for path in (Path(sys.prefix) / "dist").iterdir())
        assert built == [".gz", ".whl"]  # the sdist, and the wheel built from it
        packaged = {str(path) for path in distribution.files}
        assert {"simpo_plugin.pth", "simpo_plugin/lean/attention.py", "simpo_plugin/pairs/build.py"} <= packaged
    else:
        assert editable and Path(simpo_plugin.__file__).resolve().is_relative_to(checkout)
