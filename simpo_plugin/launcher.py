"""Stop signals reach the training workers, whoever receives them: the launcher passes them on to torchrun.

``llamafactory-cli train`` starts torchrun as a child process (FORCE_TORCHRUN, several GPUs, DeepSpeed) and does
not pass signals on: in a container whose PID 1 is ``llamafactory-cli`` (``docker stop``, Kubernetes), SIGTERM
never reaches the workers, and they are killed without a checkpoint at the end of the grace period.

For a plugin stage, the launcher's ``subprocess.run`` of torchrun is replaced by :func:`run_forwarding`:

- torchrun runs in a process group of its own, so a signal sent to the launcher's group (Ctrl-C in a terminal,
  ``kill -TERM -<pgid>``, Slurm) reaches it exactly once, from the launcher: torchrun abandons its graceful
  shutdown when a second signal arrives during it;
- SIGTERM and SIGINT received by the launcher go to torchrun's group (torchrun and its workers; a worker treats the
  agent's forwarded copy as the same request, see :mod:`simpo_plugin.preemption`);
- torchrun is started through :mod:`simpo_plugin._child`, which asks the kernel to send it SIGTERM if the launcher
  dies, so a launcher killed outright (SIGKILL) still lets the workers checkpoint instead of leaving them behind;
- the launcher exits with the workers' code: 128 + the signal after a preemption stop (written by local rank 0 to
  the file named by :data:`EXIT_FILE_ENV`), else torchrun's own, without the ``CalledProcessError`` traceback.

Other stages keep the host's launcher as it is.
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from ._child import PARENT_ENV
from .registry import REGISTRY, StageRegistry


EXIT_FILE_ENV = "SIMPO_PLUGIN_EXIT_FILE"
FORWARDED = (signal.SIGTERM, signal.SIGINT)


def record_exit_code(code: int) -> None:
    """Called by a worker (local rank 0) that ends the run itself: tell the launcher the exit code to use."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(path).write_text(str(code), encoding="ascii")
        except OSError:
            pass  # the launcher then reports torchrun's own code


def run_forwarding(
    command: list[str], *, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess:
    """``subprocess.run(command)`` for the launcher's torchrun, with signals passed on (see the module docstring).

    Returns:
        A CompletedProcess whose return code is the workers' (never raises ``CalledProcessError``: the host's
        launcher then exits with that code).
    """
    kwargs.pop("check", None)
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="simpo-launch-") as folder:
        exit_file = Path(folder) / "exit_code"
        env[EXIT_FILE_ENV] = str(exit_file)
        env[PARENT_ENV] = str(os.getpid())
        child = [sys.executable, "-m", "simpo_plugin._child", *command]
        process = subprocess.Popen(child, env=env, process_group=0, **kwargs)

        def forward(signum: int, frame: FrameType | None) -> None:
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                pass

        previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
        try:
            returncode = process.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        recorded = exit_file.read_text(encoding="ascii").strip() if exit_file.is_file() else ""
    return subprocess.CompletedProcess(command, int(recorded) if recorded.isdigit() else returncode)


def _plugin_stage_requested(registry: StageRegistry) -> bool:
    from llamafactory.hparams import read_args

    from .dispatch import requested_stage

    try:
        return requested_stage(read_args()) in registry
    except Exception:  # noqa: BLE001 - an unreadable config is the workers' to report, with the host's message
        return False


class LauncherSubprocess:
    """Stands in for the ``subprocess`` module inside the host's launcher: ``run`` forwards signals for plugin
    stages; everything else is the real module's."""

    def __init__(self, real: ModuleType, registry: StageRegistry = REGISTRY) -> None:
        self.__simpo_original__ = real
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__simpo_original__, name)

    def run(self, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess:
        if args and isinstance(args[0], list) and _plugin_stage_requested(self._registry):
            return run_forwarding(*args, **kwargs)
        return self.__simpo_original__.run(*args, **kwargs)
