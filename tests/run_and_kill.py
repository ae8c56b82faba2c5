"""Run by test_reliability: a SimPO run that SIGKILLs its own process group right after step `N`, in-process."""

import os
import signal
import sys

import yaml
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback


class KillAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step >= self.step:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # like a preempted node: no cleanup, no final save


if __name__ == "__main__":
    run_exp(yaml.safe_load(open(sys.argv[1])), callbacks=[KillAfter(int(sys.argv[2]))])
