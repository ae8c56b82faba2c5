"""Where the test suite's time goes: per file and by cause, from one run's `--durations=0` and its counts.

Run the suite with the counter on (tests/conftest.py, `SuiteCounter`) and every duration printed, then feed both
files here:

    SIMPO_COUNT_ASSERTS=/tmp/counts.json python -m pytest tests -o enable_assertion_pass_hook=true \\
        --durations=0 -q > /tmp/pytest.log
    python benchmarks/suite_time.py /tmp/pytest.log /tmp/counts.json

Causes: `children` is the wall time the tests spent waiting on `subprocess.run` or a forked `llamafactory-cli`
run (fresh interpreters pay their imports there); `real model` is every other second of a test that uses SmolLM2
(its conversion, generation and vLLM servers); the rest is the tests' own work in the pytest process. Seconds are
summed over tests: with xdist workers they add up to more than the wall time.
"""

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")


def durations(log: Path, suite: int | None = None) -> dict[str, float]:
    """nodeid -> seconds of setup + call + teardown, from pytest's `--durations=0` lines; with `suite`, from that
    pytest session's table alone (0 = the first in the log: `.ci/run` logs `make test`, then `make test-lowest`)."""
    total: dict[str, float] = defaultdict(float)
    session = -1
    for line in log.read_text(errors="replace").splitlines():
        if "slowest durations" in line:
            session += 1
        if (match := DURATION.match(line)) and suite in (None, session):
            total[match.group(3)] += float(match.group(1))
    return total


def counts(prefix: Path) -> dict[str, dict[str, float]]:
    """nodeid -> the counter's entry, merged over the files the counter wrote (`PREFIX.ENV.WORKER`)."""
    merged: dict[str, dict[str, float]] = {}
    for part in sorted(prefix.parent.glob(prefix.name + ".*")):
        merged.update(json.loads(part.read_text()))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="pytest's output with --durations=0")
    parser.add_argument("counts", type=Path, help="the SIMPO_COUNT_ASSERTS prefix; add the environment's name (e.g. "
                        "counts.json.venv or counts.json.venv-lowest) to read one suite of several")  # fmt: skip
    parser.add_argument("--suite", type=int, help="read the Nth pytest session's durations in LOG alone (from 0)")
    parser.add_argument("--real-model-files", default="test_pairs_real_model.py,test_server_vllm.py")
    args = parser.parse_args()
    seconds, counted = durations(args.log, args.suite), counts(args.counts)
    real = tuple(args.real_model_files.split(","))
    files: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for nodeid in set(seconds) | set(counted):
        name = nodeid.split("::")[0].split("/")[-1]
        entry, spent = counted.get(nodeid, {}), seconds.get(nodeid, 0.0)
        row = files[name]
        row["tests"] += nodeid in counted if counted else nodeid in seconds
        row["seconds"] += spent
        row["asserts"] += entry.get("asserts", 0)
        row["checks"] += entry.get("checks", 0)
        row["processes"] += entry.get("children", 0)
        row["forks"] += entry.get("forks", 0)
        waited = min(entry.get("run_s", 0.0), spent)
        row["children"] += waited
        row["real model" if name.endswith(real) else "own work"] += spent - waited
    order = sorted(files, key=lambda name: -files[name]["seconds"])
    columns = ["tests", "seconds", "children", "real model", "own work", "processes", "forks", "asserts", "checks"]
    print("| file | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    totals: dict[str, float] = defaultdict(float)
    for name in order:
        row = files[name]
        print(f"| {name} | " + " | ".join(f"{row[c]:.0f}" for c in columns) + " |")
        for column in columns:
            totals[column] += row[column]
    print("| **all** | " + " | ".join(f"**{totals[c]:.0f}**" for c in columns) + " |")


if __name__ == "__main__":
    main()
