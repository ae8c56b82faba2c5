"""Run by test_pairs: `simpo-plugin pairs` that SIGKILLs itself on the N-th append of `kind` to its parts.

With `partial`, it first writes half of that append's first line, as a kill in the middle of a write would.
Usage: python run_pairs_and_kill.py CONFIG.yaml KIND N [partial]
"""

import json
import os
import signal
import sys

from simpo_plugin.cli import main
from simpo_plugin.sampling.store import PartStore


def kill_on_append(kind: str, n: int, partial: bool) -> None:
    original, calls = PartStore.append, {"n": 0}

    def append(self, what, records):  # noqa: ANN001
        if what == kind:
            calls["n"] += 1
            if calls["n"] == n:
                records = list(records)
                if partial:
                    line = json.dumps(records[0])
                    with (self.root / f"{what}.{self.tag}.jsonl").open("a") as handle:
                        handle.write(line[: len(line) // 2])
                else:
                    original(self, what, records)
                os.kill(os.getpid(), signal.SIGKILL)
        original(self, what, records)

    PartStore.append = append


if __name__ == "__main__":
    kill_on_append(sys.argv[2], int(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "partial")
    sys.exit(main(["pairs", sys.argv[1]]))
