"""Started by the plugin's launcher in place of torchrun: ask the kernel for SIGTERM when the launcher dies, then
become torchrun (``exec``), so that a launcher killed outright still lets the workers checkpoint and stop.

Usage (by :func:`simpo_plugin.host.launcher.run_forwarding`): ``python -m simpo_plugin.host._child torchrun ARGS...``.
"""

import ctypes
import os
import signal
import sys


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_ENV = "SIMPO_PLUGIN_LAUNCHER_PID"


def main() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: no parent-death signal, the launcher still forwards signals
        pass
    launcher = os.environ.pop(PARENT_ENV, "")
    if launcher.isdigit() and os.getppid() != int(launcher):  # the launcher died before the request took effect
        sys.exit(128 + int(signal.SIGTERM))
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
