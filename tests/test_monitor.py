"""Early-warning rules on hand-written log sequences: which symptom fires, when, and only once."""

import json
from types import SimpleNamespace

import pytest

from simpo_plugin.train.monitor import CollapseMonitor


# Train logs of the healthy demo (`make demo`): steps 4..64, chosen log-prob rising, accuracy to 1, loss to 0.006.
DEMO = [
    (1.291, 0.66, -6.001, -12.0, -12.03),
    (1.053, 0.94, -5.944, -11.89, -12.27),
    (0.768, 1.0, -5.88, -11.76, -12.62),
    (0.555, 1.0, -5.768, -11.54, -12.86),
    (0.267, 1.0, -5.518, -11.04, -13.3),
    (0.091, 1.0, -5.301, -10.6, -14.09),
    (0.049, 1.0, -5.139, -10.28, -14.47),
    (0.026, 1.0, -5.055, -10.11, -14.9),
    (0.017, 1.0, -5.051, -10.1, -15.28),
    (0.012, 1.0, -4.963, -9.93, -15.54),
    (0.009, 1.0, -4.904, -9.81, -15.67),
    (0.01, 1.0, -4.92, -9.84, -15.62),
    (0.007, 1.0, -4.829, -9.66, -15.8),
    (0.006, 1.0, -4.82, -9.64, -15.93),
    (0.008, 1.0, -4.877, -9.75, -15.84),
    (0.006, 1.0, -4.836, -9.67, -15.96),
]


def train_log(loss: float, accuracy: float, chosen: float, reward_c: float, reward_r: float) -> dict:
    return {"loss": loss, "rewards/accuracies": accuracy, "logps/chosen": chosen, "rewards/chosen": reward_c,
            "rewards/rejected": reward_r}  # fmt: skip


def probe_log(length: float, eos: float, repeat: float) -> dict:
    return {"probe/length": length, "probe/eos_rate": eos, "probe/repeat_4": repeat, "probe/distinct_2": 0.5}


def feed(monitor: CollapseMonitor, logs: list[dict]) -> tuple[list[str], SimpleNamespace]:
    state = SimpleNamespace(global_step=0, log_history=[], is_world_process_zero=True)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    fired = []
    for step, entry in enumerate(logs, start=1):
        state.global_step = step * 4
        state.log_history.append({**entry, "step": state.global_step})
        monitor.on_log(None, state, control, logs=dict(entry))
        fired += [key.split("/")[1] for key in state.log_history[-1] if key.startswith("warning/")]
    return fired, control


def test_the_healthy_demo_fires_nothing(tmp_path) -> None:
    fired, control = feed(CollapseMonitor(str(tmp_path), True), [train_log(*row) for row in DEMO])
    assert fired == [] and not control.should_training_stop
    assert not (tmp_path / "simpo_warnings.jsonl").exists()


def test_likelihood_displacement_fires_once_with_its_numbers(tmp_path) -> None:
    rows = [train_log(1.2, 0.7, -1.50, -3.0, -3.1)] + [
        train_log(0.5 - 0.05 * i, 0.95, -1.50 - 0.1 * i, -3.0 - 0.2 * i, -3.1 - 0.4 * i) for i in range(1, 9)
    ]
    fired, control = feed(CollapseMonitor(str(tmp_path), False), rows)
    assert fired == ["likelihood_displacement"]  # once, at the first step where all conditions hold
    assert not control.should_training_stop
    (record,) = [json.loads(line) for line in (tmp_path / "simpo_warnings.jsonl").read_text().splitlines()]
    assert record["warning"] == "likelihood_displacement" and record["step"] == 4 * 5
    assert "fell from -1.500 to -1.900" in record["message"] and "Lower learning_rate" in record["message"]


def test_displacement_needs_high_accuracy_and_both_rewards_falling(tmp_path) -> None:
    falling = [train_log(0.7, 0.6, -1.5 - 0.1 * i, -3.0 - 0.2 * i, -3.1 - 0.4 * i) for i in range(9)]
    assert feed(CollapseMonitor(str(tmp_path)), falling)[0] == []  # accuracy 0.6
    rejected_up = [train_log(0.7, 1.0, -1.5 - 0.1 * i, -3.0 - 0.2 * i, -3.1 + 0.4 * i) for i in range(9)]
    assert feed(CollapseMonitor(str(tmp_path)), rejected_up)[0] == []


@pytest.mark.parametrize(
    ("probes", "expected"),
    [
        ([probe_log(40, 0.9, 0.02), probe_log(45, 0.5, 0.03)], ["eos_drop"]),
        ([probe_log(40, 0.9, 0.02), probe_log(38, 0.9, 0.25)], ["repetition"]),
        ([probe_log(40, 0.9, 0.02), probe_log(85, 0.9, 0.02)], ["length_drift"]),
        ([probe_log(40, 0.9, 0.02), probe_log(15, 0.9, 0.02)], ["length_drift"]),
        ([probe_log(40, 0.9, 0.02), probe_log(70, 0.8, 0.05), probe_log(60, 0.75, 0.1)], []),  # within bounds
        ([probe_log(128, 0.0, 0.3), probe_log(4, 1.0, 0.0)], []),  # a start cut at max_new_tokens: learning to stop
        ([probe_log(40, 0.9, 0.02), probe_log(128, 0.0, 0.6), probe_log(128, 0.0, 0.7)],
         ["eos_drop", "repetition", "length_drift"]),  # each named once
    ],
)  # fmt: skip
def test_probe_rules(tmp_path, probes, expected) -> None:
    assert sorted(feed(CollapseMonitor(str(tmp_path)), probes)[0]) == sorted(expected)


def test_zero_loss_and_stop_on_collapse(tmp_path) -> None:
    fired, control = feed(
        CollapseMonitor(str(tmp_path), True), [train_log(0.7, 0.5, -1, -2, -2), train_log(0.0, 1, -1, -2, -2)]
    )
    assert fired == ["zero_loss"]
    assert control.should_save and control.should_training_stop


def test_setup_hint_for_small_batch_and_high_lr(tmp_path, caplog) -> None:
    def hint(batch: int, accumulation: int, world: int, lr: float) -> bool:
        args = SimpleNamespace(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                               world_size=world, learning_rate=lr)  # fmt: skip
        caplog.clear()
        CollapseMonitor(str(tmp_path)).on_train_begin(args, None, None)
        return any("simpo-plugin: hint: effective batch" in record.getMessage() for record in caplog.records)

    assert hint(8, 1, 1, 1e-5)
    assert not hint(8, 16, 1, 1e-5)  # 128
    assert not hint(2, 2, 8, 1e-5)  # 32 = 2 x 2 x 8
    assert not hint(8, 1, 1, 1e-6)


def probe(words: float, duplicates: float, length: float = 20.0) -> dict:
    return {**probe_log(length, 1.0, 0.0), "probe/words": words, "probe/duplicate_rate": duplicates}


@pytest.mark.parametrize(
    ("logs", "expected"),
    [
        (
            [probe(24.0, 0.0), probe(20.0, 0.125), probe(1.0, 1.0, length=4.0)],
            ["duplicates", "length_drift", "short_answers"],
        ),
        ([probe(24.0, 0.0), probe(12.0, 0.6)], ["duplicates"]),  # the same answer everywhere, still long
        ([probe(24.0, 0.5), probe(20.0, 0.75)], []),  # duplicates from the start: not a collapse of this run
        ([probe(5.0, 0.0), probe(2.0, 0.0)], []),  # short from the start
        ([probe(24.0, 0.0), probe(4.0, 0.0)], []),  # shorter, but above the few-words line
    ],
)
def test_answers_collapsing_to_one_or_to_a_word_warn(tmp_path, logs, expected) -> None:
    fired, control = feed(CollapseMonitor(str(tmp_path), True), logs)
    assert sorted(fired) == expected
    assert control.should_training_stop is bool(expected)


def test_a_significant_check_drop_warns_but_does_not_stop(tmp_path, caplog) -> None:
    start = {**probe(24.0, 0.0), "probe/checks/arithmetic": 0.75, "probe/check_change_high/arithmetic": 0.0}
    within = {**probe(24.0, 0.0), "probe/checks/arithmetic": 0.625, "probe/check_change_high/arithmetic": 0.06}
    dropped = {**probe(24.0, 0.0), "probe/checks/arithmetic": 0.25, "probe/check_change_high/arithmetic": -0.19}
    fired, control = feed(CollapseMonitor(str(tmp_path), True), [start, within, dropped, dropped])
    assert fired == ["check_drop_arithmetic"] and not control.should_training_stop  # a skill, not a collapse
    assert "the `arithmetic` capability checks fell from 75% passed at the start to 25%" in caplog.text
