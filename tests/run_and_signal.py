"""Run by test_reliability: a SimPO run that signals itself when step `N` begins, as a scheduler or Ctrl-C would.

`group` sends the signal to the whole process group (a terminal's Ctrl-C, Slurm's scancel): under torchrun that is
the agent and every worker, and the agent forwards it to the workers once more. Only rank 0 sends it.
"""

import os
import signal
import sys

import yaml
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback


class SignalAt(TrainerCallback):
    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step + 1 == self.step and os.environ.get("RANK", "0") == "0":
            os.killpg(os.getpgid(0), self.signum)


if __name__ == "__main__":
    config, step, name = sys.argv[1:4]
    run_exp(yaml.safe_load(open(config)), callbacks=[SignalAt(int(step), signal.Signals[name])])
