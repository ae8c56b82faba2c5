"""``server_command``: start an inference server for one run, wait until it answers, stop it at the end.

The command is a template with ``{model}`` (``model_name_or_path``) and ``{port}`` (a free local port), for example
``python -m vllm.entrypoints.openai.api_server --model {model} --port {port}``; leading ``NAME=value`` words set
environment variables, as in a shell. It runs without a shell, in its own session, with its output in
``output_dir/server.log``; the kernel sends it SIGTERM if this process dies without stopping it (Linux). The run
talks to it at ``http://127.0.0.1:{port}/v1``. See docs/onpolicy.md, "Inference servers".
"""

import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from ..errors import PairsConfigError


PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SECONDS = 30  # SIGTERM, then SIGKILL after this long
LOG_TAIL_LINES = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_command(template: str, model: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment of ``template`` filled with ``model`` and ``port``.

    Raises:
        PairsConfigError: the template lacks ``{port}``, names another placeholder, or is not a valid command line.
    """
    if "{port}" not in template:
        raise PairsConfigError("`server_command` must contain `{port}`: the run picks a free port and connects to it.")
    try:
        words = [word.format(model=model, port=port) for word in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as exc:
        raise PairsConfigError(
            f"`server_command` cannot be read ({exc}); it takes the placeholders {{model}} and {{port}} only."
        ) from exc
    env: dict[str, str] = {}
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if not words:
        raise PairsConfigError("`server_command` has no program to run.")
    return words, env


def check_command(template: str) -> str:
    """Why ``template`` cannot start a server, or "": checked when the config is read, before any model loads."""
    try:
        argv, env = split_command(template, "MODEL", 8000)
    except PairsConfigError as exc:
        return str(exc)
    program = argv[0]
    if "/" in program:
        path = Path(program)
        where = "" if path.is_absolute() else f" (a relative path is taken from the working directory, {Path.cwd()})"
        if not path.is_file():
            return f"`server_command`: `{program}` does not exist{where}."
        if not os.access(path, os.X_OK):
            return f"`server_command`: `{program}` is not executable{where}."
    elif shutil.which(program, path=env.get("PATH", os.environ.get("PATH"))) is None:
        return f"`server_command`: `{program}` is not on PATH; give its full path (e.g. /opt/vllm/bin/python)."
    return ""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass


def log_tail(path: Path) -> str:
    if not path.exists():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)


class ManagedServer:
    """Context manager: the server of ``server_command``; ``url`` is its base URL once entered."""

    def __init__(self, template: str, model: str, log_path: Path, log: Any = print) -> None:
        self.log = log
        self.port = free_port()
        self.argv, self.env = split_command(template, model, self.port)
        self.log_path = Path(log_path)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ManagedServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== simpo-plugin, {started}: {shlex.join(self.argv)} =====\n".encode())
            log.flush()
            try:
                self.process = subprocess.Popen(
                    self.argv, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
                )  # fmt: skip
            except OSError as exc:
                raise PairsConfigError(f"`server_command` could not start `{self.argv[0]}`: {exc}.") from exc
        return self

    def check_alive(self) -> None:
        """Raise when the server process has exited, quoting the end of its log."""
        if self.process is not None and self.process.poll() is not None:
            raise PairsConfigError(
                f"The server of `server_command` exited with status {self.process.returncode} before answering; "
                f"the end of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        self.log(f"Stopping the server of `server_command` (pid {process.pid}).")
        for sig, seconds in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=seconds)
                return
            except subprocess.TimeoutExpired:
                continue

    def __exit__(self, *exc: Any) -> None:
        self.stop()
