"""Optional features never end or lose a run: one warning line, the feature off, training on."""

import logging

import pytest
from conftest import base_config, log_history, run_cli
from pairs_cases import REWARDS
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from simpo_plugin.errors import FeatureUnavailable, describe
from simpo_plugin.testing import preference_rows, write_preference_dataset
from simpo_plugin.train.optional import GuardedCallback, optional


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


class Flaky(TrainerCallback):
    def __init__(self) -> None:
        self.logs = 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        self.logs += 1
        if self.logs == 2:
            raise KeyError("probe/length")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        control.should_save = True
        return control


def test_a_failing_callback_turns_off_with_one_warning_and_stays_off(caplog, tmp_path) -> None:
    guarded = GuardedCallback(Flaky(), "The widget", "Set `widget: false`.")
    args, state, control = TrainingArguments(str(tmp_path)), TrainerState(), TrainerControl()
    with caplog.at_level(logging.WARNING, logger="llamafactory.simpo"):
        assert guarded.on_step_end(args, state, control) is control and control.should_save
        for _ in range(4):
            assert guarded.on_log(args, state, control, logs={}) is None
    assert guarded.off and guarded.inner.logs == 2
    assert guarded.on_step_end(args, state, TrainerControl()) is None  # off: no more events reach it
    lines = [r.getMessage() for r in caplog.records if r.name == "llamafactory.simpo"]
    assert lines == [
        "simpo-plugin: The widget turned off, training goes on: KeyError: 'probe/length'. Set `widget: false`."
    ]


def test_optional_builds_and_one_line_causes() -> None:
    assert optional("x", "fix", lambda: 3) == 3
    assert optional("x", "fix", lambda: 1 / 0) is None
    assert describe(FeatureUnavailable("No prompt fits.\nmore")) == "No prompt fits"
    assert describe(ValueError("")) == "ValueError"


@pytest.fixture(scope="module")
def long_prompts(tiny_assets, tmp_path_factory):
    """Pairs whose prompts are all longer than the cutoff below (the probes' prompts, from `eval_dataset`), and the
    same pairs as they are (training on prompts that all lose their end is refused: tests/test_data_checks.py)."""
    root = tmp_path_factory.mktemp("long")
    write_preference_dataset(root, "short_prompts", preference_rows(16, seed=4))
    rows = preference_rows(16, seed=4)
    for row in rows:
        row["instruction"] = " ".join([row["instruction"]] * 12)
    write_preference_dataset(root, "long_prompts", rows)
    return root


def test_probes_that_cannot_run_turn_off_and_training_goes_on(tiny_assets, long_prompts, tmp_path) -> None:
    config = base_config(tiny_assets, tmp_path / "out", dataset="short_prompts", dataset_dir=str(long_prompts),
                         eval_dataset="long_prompts", do_eval=False, cutoff_len=48, max_steps=2, logging_steps=1,
                         simpo_probe_steps=1)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [
        line for line in (result.stdout + result.stderr).splitlines() if "turned off" in line and "recap" not in line
    ]  # once, and once more in the run's recap
    assert len(lines) == 1
    assert "Generation probes turned off, training goes on: No prompt fits `cutoff_len`" in lines[0]
    assert [e["step"] for e in log_history(tmp_path / "out") if "loss" in e] == [1, 2]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_probe_scorer_failing_mid_run_turns_probes_off_on_every_rank(tiny_assets, tmp_path) -> None:
    from conftest import cli_env

    config = base_config(tiny_assets, tmp_path / "out", max_steps=4, logging_steps=1, do_eval=False,
                         eval_dataset=None, per_device_train_batch_size=4, simpo_probe_steps=2,
                         simpo_probe_prompts=8, simpo_probe_max_new_tokens=8,
                         simpo_probe_reward_function=f"{REWARDS}:fails_after_the_first_probe")  # fmt: skip
    result = run_cli(config, tmp_path, env=cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [
        line for line in (result.stdout + result.stderr).splitlines() if "turned off" in line and "recap" not in line
    ]  # once, and once more in the run's recap
    assert len(lines) == 1 and "the reward server went away" in lines[0], result.stderr[-3000:]
    history = log_history(tmp_path / "out")
    assert [e["step"] for e in history if "probe/length" in e] == [0]  # the probe at step 2 failed: no more probes
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
