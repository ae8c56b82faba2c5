"""Stop signals reach the training workers, whoever receives them: the launcher passes them on to torchrun.

``llamafactory-cli train`` starts torchrun as a child process (FORCE_TORCHRUN, several GPUs, DeepSpeed) and does
not pass signals on: in a container whose PID 1 is ``llamafactory-cli`` (``docker stop``, Kubernetes), SIGTERM
never reaches the workers, and they are killed without a checkpoint at the end of the grace period.

For a plugin stage, the launcher's ``subprocess.run`` of torchrun is replaced by :func:`run_forwarding`:

- torchrun runs in a process group of its own, so a signal sent to the launcher's group (Ctrl-C in a terminal,
  ``kill -TERM -<pgid>``, Slurm) reaches it exactly once, from the launcher: torchrun abandons its graceful
  shutdown when a second signal arrives during it;
- SIGTERM and SIGINT received by the launcher go to torchrun's group (torchrun and its workers; a worker treats the
  agent's forwarded copy as the same request, see :mod:`simpo_plugin.train.preemption`);
- torchrun is started through :mod:`simpo_plugin.host._child`, which asks the kernel to send it SIGTERM if the launcher
  dies, so a launcher killed outright (SIGKILL) still lets the workers checkpoint instead of leaving them behind;
- the launcher exits with the workers' code: 128 + the signal after a preemption stop (recorded by local rank 0,
  :mod:`simpo_plugin.exits`), else torchrun's own, without the ``CalledProcessError`` traceback.

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

from ..exits import EXIT_FILE_ENV, recorded_exit_code
from ._child import PARENT_ENV
from .registry import REGISTRY, StageRegistry


FORWARDED = (signal.SIGTERM, signal.SIGINT)


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
        child = [sys.executable, "-m", "simpo_plugin.host._child", *command]
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
        recorded = recorded_exit_code(exit_file)
    return subprocess.CompletedProcess(command, returncode if recorded is None else recorded)


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
