"""`llamafactory-cli` runs for the tests without paying the imports each time: a fork server (tests only).

A `llamafactory-cli train` of the tiny model spends 10-20 s of its life importing torch, transformers, datasets,
peft and the host, and milliseconds training; a run on 2 ranks pays that three times (torchrun and two workers).
This process imports all of that once, as the CLI would (the plugin's `.pth` startup included), then forks one child
per request: a separate process with its own working directory, environment, argv, stdin/stdout/stderr and exit
status, whose interpreter exits as the command's does (`atexit` handlers, non-daemon threads joined). Nothing a run
changes reaches the next one.

Four kinds of process are forked:
- a script of this venv, asked for by `conftest.run_command` over this server's stdin/stdout: a console script
  (`llamafactory-cli`, `simpo-plugin`) or a test's Python script, run as `python SCRIPT ARGS` would run it;
- `torchrun`, when the host launches it: a forked CLI finds a relay named `torchrun` first on its PATH;
- torchrun's workers (`python -u launcher.py ...`): the forked CLI sets `PYTHON_EXEC`, torchrun's documented override
  of the workers' interpreter, to a relay named `python`;
- the `llamafactory-cli train` and `export` that a forked `simpo-plugin rounds` starts for each round: it finds the
  CLI through `rounds.phases.cli_program`, which a forked run points at a relay named `llamafactory-cli`.
A relay (`relay`) is a small process in the command's place: it hands its stdin/stdout/stderr to this server over a
Unix socket, forwards every signal it gets to the forked process (torchrun stops its workers by signalling their
process group, which is the relay's), and exits as that process did, by the same signal where one killed it. If the
relay dies first (SIGKILL), the server kills its process, so no worker outlives its launcher; when a CLI run ends,
any process it left behind is killed too.

What the fork cannot give is a fresh interpreter start, so a run is forked only when its environment equals this
server's apart from keys read when a command runs (`RUN_TIME_KEYS`, and for relays the keys torchrun and the
host's launcher set for workers, `WORKER_KEYS`); `conftest.run_cli` checks this for CLI runs, the server for relays,
which otherwise exec the real program. Every test of startup, signals or the launcher's own process starts real
processes itself (it calls `subprocess`).

Protocol, one JSON object per line. On stdin the test sends {"argv", "cwd", "env", "stdout", "stderr"}; the server
answers on stdout {"pid"} once the child exists, then {"status"} (a `subprocess` return code: negative for a signal)
when it ends. A relay sends {"mode", "argv", "cwd", "env"} with its fds 0-2 attached (SCM_RIGHTS) and gets
{"pid"} and {"status"}, or {"refused"} when the environment does not allow a fork.
"""

import contextlib
import gc
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading


# Keys a command reads when it runs, not when the interpreter starts.
RUN_TIME_KEYS = frozenset({"FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"})
# What torchrun (torch/distributed/elastic/agent/server/local_elastic_agent.py) and the host's launcher
# (llamafactory/launcher.py) add to a worker's environment, and what a forked CLI adds for its relays.
WORKER_KEYS = frozenset({
    "RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "GROUP_WORLD_SIZE",
    "ROLE_WORLD_SIZE", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PYTORCH_CUDA_ALLOC_CONF", "TORCH_NCCL_AVOID_RECORD_STREAMS",
    "SIMPO_PLUGIN_EXIT_FILE", "PATH", "PYTHON_EXEC", "SIMPO_FORK_SOCKET",
})  # fmt: skip
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def forkable(env: dict[str, str], base: dict[str, str], ignored: frozenset[str] = RUN_TIME_KEYS) -> bool:
    """Whether a command with environment `env` may be forked from a process started with `base`."""
    keys = {key for key in set(env) | set(base) if key not in ignored and not key.startswith("TORCHELASTIC_")}
    return all(env.get(key) == base.get(key) for key in keys)


def preload() -> None:
    """What `llamafactory-cli train` imports on its way to a tiny Llama's training step (no tokenizer is run
    and no thread is started: a fork after either would carry a broken thread pool into the child)."""
    import datasets  # noqa: F401
    import llamafactory.cli  # noqa: F401
    import llamafactory.launcher  # noqa: F401
    import llamafactory.train.dpo.trainer  # noqa: F401  (trl's DPO trainer and the openai client it imports: 1.3 s)
    import llamafactory.train.tuner  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import torch.distributed.run  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForSeq2SeqLM,
        AutoModelForTextToWaveform,
    )

    import simpo_plugin.rounds.phases  # noqa: F401
    import simpo_plugin.train.trainer  # noqa: F401
    import simpo_plugin.train.workflow  # noqa: F401

    # DeepSpeed's optimizer check imports its Muon optimizer, whose module calls torch.compile: inductor's imports,
    # 3.2 s per rank of every ZeRO run.
    with contextlib.suppress(ImportError):
        import deepspeed.runtime.zero.muon.muon_optimizer  # noqa: F401
    # The host's loader checks the config against these mappings, which imports every model's config class (1.6 s).
    for auto in (AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoModelForTextToWaveform, AutoModelForCausalLM):
        auto._model_mapping.keys()


def send(channel, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    if isinstance(channel, socket.socket):
        channel.sendall(data)
    else:
        os.write(channel, data)


def receive(connection: socket.socket) -> bytes:
    try:
        return connection.recv(1)
    except OSError:
        return b""


class Server:
    """The fork server's loop: requests from the test (stdin) and from relays (a Unix socket), one child each."""

    def __init__(self, reply: int, imported: dict[str, str]) -> None:
        self.reply = reply
        self.imported = imported  # what the imports set in os.environ (KMP_INIT_AT_FORK, ...)
        self.base_env = dict(os.environ)  # the environment a forked CLI hands its relays, apart from WORKER_KEYS
        self.folder = tempfile.mkdtemp(prefix="simpo-forkserver-")
        self.socket_path = os.path.join(self.folder, "socket")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(64)
        self.bin = os.path.join(self.folder, "bin")  # first on a forked CLI's PATH: `torchrun` alone
        os.mkdir(self.bin)
        self.python = os.path.join(self.folder, "python")  # the workers' PYTHON_EXEC, on no PATH
        torchrun = shutil.which("torchrun", path=os.environ.get("PATH")) or "torchrun"
        self.cli = os.path.join(self.folder, "llamafactory-cli")  # what a forked run starts by the CLI's path
        from simpo_plugin.rounds.phases import cli_program

        cli = cli_program()  # the CLI a fresh `simpo-plugin rounds` would start (before become() patches it)
        for mode, real, path in (("torchrun", torchrun, os.path.join(self.bin, "torchrun")),
                                 ("python", sys.executable, self.python), ("script", cli, self.cli)):  # fmt: skip
            with open(path, "w", encoding="utf-8") as file:
                file.write(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                           f"import forkserver\nforkserver.relay({mode!r}, {real!r})\n")  # fmt: skip
            os.chmod(path, 0o755)
        self.children: dict[int, object] = {}  # pid -> where its status goes: the reply fd or a relay's socket
        self.relays: dict[socket.socket, int] = {}  # relay connection -> its child's pid
        self.buffer = b""

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def fork(self, request: dict, channel, fds: list[int] = ()) -> dict | None:
        """Fork; in the child, return the request (with its fds); in the server, record the child and return None."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.listener.close()
            for connection in self.relays:
                connection.close()
            if isinstance(channel, socket.socket):
                channel.close()
            os.close(self.reply)
            relay_env = {"PATH": f"{self.bin}{os.pathsep}", "PYTHON_EXEC": self.python,
                         "SIMPO_FORK_SOCKET": self.socket_path}  # fmt: skip
            return request | {"fds": list(fds), "imported": self.imported, "relay_env": relay_env, "cli": self.cli}
        for fd in fds:
            os.close(fd)
        self.children[pid] = channel
        if isinstance(channel, socket.socket):
            self.relays[channel] = pid
        send(channel, {"pid": pid})
        return None

    def reap(self) -> None:
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            channel = self.children.pop(pid, None)
            if channel is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if isinstance(channel, socket.socket):
                self.relays.pop(channel, None)
                with contextlib.suppress(OSError):  # the relay is gone
                    send(channel, {"status": code})
                channel.close()
            else:
                self.kill_all()  # what the run left behind (a launcher killed before its workers)
                send(channel, {"status": code})

    def kill_all(self) -> None:
        for pid in list(self.children):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            channel = self.children.pop(pid)
            if isinstance(channel, socket.socket):
                self.relays.pop(channel, None)
                channel.close()

    def accept(self) -> dict | None:
        connection, _ = self.listener.accept()
        fds: list[int] = []
        try:
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            while not message.endswith(b"\n"):
                chunk = connection.recv(1 << 20)
                if not chunk:
                    break
                message += chunk
            request = json.loads(message)
        except (OSError, ValueError):  # a relay that died while asking
            request = {"env": None}
        env = request["env"]
        if len(fds) != 3 or not env or not forkable(env, self.base_env, RUN_TIME_KEYS | WORKER_KEYS):
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                send(connection, {"refused": True})
            connection.close()
            return None
        return self.fork(request, connection, fds)

    def serve(self) -> dict:
        """Answer requests until stdin closes; returns (in a forked child only) the request the child runs."""
        stdin_open = True
        while stdin_open or self.children:
            readers = [self.listener, *self.relays] + ([0] if stdin_open else [])
            ready = select.select(readers, [], [], 0.05)[0]
            for source in ready:
                if source == 0:
                    chunk = os.read(0, 1 << 20)
                    if not chunk:
                        stdin_open = False
                        continue
                    self.buffer += chunk
                    while b"\n" in self.buffer:
                        line, self.buffer = self.buffer.split(b"\n", 1)
                        child = self.fork(json.loads(line) | {"mode": "cli"}, self.reply)
                        if child is not None:
                            return child
                elif source is self.listener:
                    child = self.accept()
                    if child is not None:
                        return child
                elif source in self.relays and not receive(source):  # the relay died: so does its process
                    os.kill(self.relays.pop(source), signal.SIGKILL)
            self.reap()
        self.close()
        raise SystemExit(0)


def become(request: dict) -> None:
    """Turn the forked child into the requested command's process, then run it as that command would."""
    if request["mode"] in ("cli", "script"):
        # `simpo-plugin rounds` starts each round's `llamafactory-cli train` / `export` by the CLI's path
        # (rounds.phases.cli_program): in a forked run, that path is the relay, so those runs are forked too.
        import simpo_plugin.rounds.phases as phases

        phases.cli_program = lambda: request["cli"]
    if request["mode"] == "cli":
        null = os.open(os.devnull, os.O_RDONLY)
        fds = [null] + [os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                        for name in ("stdout", "stderr")]  # fmt: skip
    else:
        fds = request["fds"]
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = list(request["argv"])
    if request["mode"] in ("cli", "script"):
        for key, value in request["imported"].items():  # as the imports of a fresh interpreter would
            os.environ.setdefault(key, value)
        if "PYTHON_EXEC" not in os.environ:  # the host's torchrun and its workers are forked too, through relays
            relay_env = request["relay_env"]
            os.environ.update(relay_env, PATH=relay_env["PATH"] + os.environ.get("PATH", ""))
        import runpy

        sys.argv = argv
        sys.path[0] = os.path.dirname(argv[0])  # what a script's own run puts first, not this tests folder
        runpy.run_path(argv[0], run_name="__main__")  # a console script of this venv, or a test's Python script
    elif request["mode"] == "torchrun":
        from torch.distributed.run import main

        sys.argv = ["torchrun", *argv]
        sys.exit(main())
    else:  # python -u SCRIPT ARGS, as torchrun starts a worker
        import runpy

        sys.stdout.reconfigure(line_buffering=True, write_through=True)
        sys.stderr.reconfigure(line_buffering=True, write_through=True)
        sys.argv = argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))
        runpy.run_path(argv[1], run_name="__main__")


def relay(mode: str, real: str) -> None:
    """Stand in for `real` (torchrun, or the workers' python): have the fork server fork it, forward signals to it,
    exit as it exits. Runs the real program instead when no fork server answers or it refuses."""
    argv = sys.argv[1:]
    if mode == "python" and (len(argv) < 2 or argv[0] != "-u" or argv[1].startswith("-")):
        os.execv(real, [real, *argv])  # only `python -u SCRIPT ...` is forked
    pending: list[int] = []
    target: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if target:
            os.kill(target[0], signum)
        else:
            pending.append(signum)

    for signum in RELAYED_SIGNALS:
        signal.signal(signum, forward)
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(os.environ["SIMPO_FORK_SOCKET"])
        command = [real, *argv] if mode == "script" else argv  # run as that console script
        request = {"mode": mode, "argv": command, "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(connection, [(json.dumps(request) + "\n").encode()], [0, 1, 2])
        reader = connection.makefile("r", encoding="utf-8")
        reply = json.loads(reader.readline())
    except (OSError, KeyError, ValueError):
        reply = {"refused": True}
    if "refused" in reply:
        for signum in RELAYED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        os.execv(real, [real, *argv])
    target.append(reply["pid"])
    for signum in pending:
        os.kill(target[0], signum)
    line = reader.readline()
    code = json.loads(line)["status"] if line else -signal.SIGKILL
    if code < 0:
        for signum in RELAYED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    reply = os.dup(1)  # the protocol's channel; what imports print goes to stderr instead
    os.dup2(2, 1)
    started = dict(os.environ)
    preload()
    if threading.active_count() != 1:  # a thread would not survive the fork: the children's copy would hang
        raise RuntimeError(f"the preload started threads: {threading.enumerate()}")
    # What was imported is kept out of the children's garbage collections (the documented use of gc.freeze before
    # fork): a collection in a run then walks that run's own objects only (0.4 s less per gc.collect), and leaves
    # the shared pages unwritten.
    gc.freeze()
    send(reply, {"ready": os.getpid()})
    server = Server(reply, {key: value for key, value in os.environ.items() if started.get(key) != value})
    become(server.serve())
