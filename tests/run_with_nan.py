"""Run by test_reliability: a SimPO run whose loss turns NaN at step `N` (a forward hook), in-process."""

import sys

import yaml
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback


class NaNLossFrom(TrainerCallback):
    """From step `step` on, the final norm's output is multiplied by NaN, as an overflow would do."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if state.global_step + 1 == self.step:
            model.get_decoder().norm.register_forward_hook(lambda module, inputs, output: output * float("nan"))


if __name__ == "__main__":
    run_exp(yaml.safe_load(open(sys.argv[1])), callbacks=[NaNLossFrom(int(sys.argv[2]))])
