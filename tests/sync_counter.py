"""Run by test_syncs (alone or under torchrun): train with the host's `run_exp` and count, per optimizer step, the
calls that make a GPU host wait for the device: `.item()`, `bool()`/`int()`/`float()` of a tensor, `.tolist()`, and
the ops whose output size depends on the data (`nonzero`, boolean-mask indexing, `masked_select`, `bincount`,
`unique`, `repeat_interleave`). On the CPU none of them waits, so they are counted where they are called: a torch
function mode, entered at each step's start and left at the next, sees every one of them in the step, its callbacks,
its logging, but not in the DataLoader's collation (on the CPU by design).

argv: CONFIG.json OUT_DIR. Writes OUT_DIR/syncs_rank<R>.json: per step, {"<call> <file>:<line> <function>": n}.
"""

import json
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback


SYNCING = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "nonzero", "argwhere", "masked_select",
           "bincount", "unique", "unique_consecutive", "repeat_interleave"}  # fmt: skip
PACKAGES = ("simpo_plugin", "transformers/", "llamafactory", "accelerate", "trl", "peft", "deepspeed")


def _site() -> str | None:
    """The innermost caller in the plugin or a library it drives; None inside the DataLoader's collation."""
    stack = traceback.extract_stack()[:-2]  # without this function and the mode's
    if any("torch/utils/data/" in frame.filename for frame in stack):
        return None
    for frame in reversed(stack):
        if any(name in frame.filename for name in PACKAGES):
            return f"{frame.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{frame.lineno} {frame.name}"
    return "?"


def _mask_index(name: str, args: tuple) -> bool:
    if name not in ("__getitem__", "__setitem__", "index_put_", "index_put") or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in index)


class SyncCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING or _mask_index(name, args):
            site = _site()
            if site is not None:
                self.calls[f"{name} {site}"] += 1
        return func(*args, **(kwargs or {}))


class PerStep(TrainerCallback):
    """Counts from one step's start to the next (the last: to the end of training)."""

    def __init__(self) -> None:
        self.counter: SyncCounter | None = None
        self.steps: list[dict[str, int]] = []

    def _close(self) -> None:
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.steps.append(dict(self.counter.calls))
            self.counter = None

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self._close()
        self.counter = SyncCounter()
        self.counter.__enter__()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self._close()


def main() -> None:
    from llamafactory.train.tuner import run_exp

    config, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    counts = PerStep()
    run_exp(config, callbacks=[counts])
    rank = int(os.environ.get("RANK", "0"))
    (out / f"syncs_rank{rank}.json").write_text(json.dumps(counts.steps, indent=1))


if __name__ == "__main__":
    main()
