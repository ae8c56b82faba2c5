"""`llamafactory-cli` runs for the tests without paying the imports each time: a fork server (tests only).

A `llamafactory-cli train` of the tiny model spends 10-20 s of its life importing torch, transformers, datasets,
peft and the host, and milliseconds training. This process imports all of that once, as the CLI would (the
plugin's `.pth` startup included), then forks one child per request: a separate process with its own working
directory, environment, argv, stdout/stderr files and exit status, whose interpreter exits as the CLI's does
(`atexit` handlers, non-daemon threads joined). Nothing a run changes reaches the next one.

What the fork cannot give is a fresh interpreter start, so `conftest.run_cli` sends a request here only when the
run's environment equals this server's apart from keys read when a command runs (`RUN_TIME_KEYS`); any other run
(`SIMPO_PLUGIN_DISABLE`, `PYTHONPATH`, ...) is a real subprocess, and so is every test of startup, signals or the
launcher's own process (they call `subprocess` themselves). torchrun workers are real processes either way.

Protocol, one JSON object per line: the test sends {"argv", "cwd", "env", "stdout", "stderr"}; the server answers
{"pid"} once the child exists, then {"status"} (a `subprocess` return code: negative for a signal) when it ends.
"""

import json
import os
import sys


def preload() -> None:
    """What `llamafactory-cli train` imports on its way to a tiny Llama's training step (no tokenizer is run
    and no thread is started: a fork after either would carry a broken thread pool into the child)."""
    import datasets  # noqa: F401
    import llamafactory.cli  # noqa: F401
    import llamafactory.launcher  # noqa: F401
    import llamafactory.train.tuner  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import simpo_plugin.train.workflow  # noqa: F401


def serve(channel) -> dict:
    """Answer requests until stdin closes; returns (in the forked child only) the request the child runs."""
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return request
        channel.write(json.dumps({"pid": pid}) + "\n")
        channel.flush()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        channel.write(json.dumps({"status": code}) + "\n")
        channel.flush()
    raise SystemExit(0)


def become(request: dict) -> None:
    """Turn the forked child into the requested command's process, then run it as `llamafactory-cli` would."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.close(null)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(sys.argv[0])  # what a script's own run puts first, not this tests folder

    from llamafactory.cli import main

    main()


if __name__ == "__main__":
    reply = os.fdopen(os.dup(1), "w")  # the protocol's channel; what imports print goes to stderr instead
    os.dup2(2, 1)
    preload()
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    reply.flush()
    request = serve(reply)
    reply.close()
    become(request)
