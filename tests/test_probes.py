"""Generation probes and early warnings in real `llamafactory-cli train` runs of the tiny model."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import base_config, cli_env, log_history, run_cli
from pairs_cases import REWARDS

from simpo_plugin.testing import preference_rows, write_preference_dataset


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


JUDGES = Path(__file__).with_name("judge_functions.py")
PROBE_KEYS = {"probe/length", "probe/eos_rate", "probe/repeat_4", "probe/duplicate_rate", "probe/words"}


def probes_of(output_dir: Path) -> list[dict]:
    return [entry for entry in log_history(output_dir) if "probe/length" in entry]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def healthy(tiny_assets, tmp_path_factory) -> dict:
    """The demo task for one epoch (32 steps) with probes every 16 steps and a function scorer, and without probes,
    at a learning rate that learns the preference (accuracy 1.0) without collapsing: 1e-4, not the demo's 1e-3."""
    root = tmp_path_factory.mktemp("healthy")
    probed = base_config(tiny_assets, root / "probed", simpo_probe_steps=16, simpo_probe_prompts=8,
                         simpo_probe_max_new_tokens=24, plot_loss=True, learning_rate=1e-4,
                         simpo_probe_reward_function=f"{REWARDS}:distinct_chars")  # fmt: skip
    result = run_cli(probed, root / "probed")
    assert result.returncode == 0, result.stderr[-3000:]
    plain = run_cli(base_config(tiny_assets, root / "plain", simpo_probe_steps=0, learning_rate=1e-4), root / "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    return {"out": root / "probed", "plain": root / "plain", "log": result.stdout + result.stderr}


def test_probes_log_at_start_every_n_steps_and_at_the_end(healthy) -> None:
    probes = probes_of(healthy["out"])
    assert [entry["step"] for entry in probes] == [0, 16, 32]
    assert all(PROBE_KEYS | {"probe/reward", "probe/win_rate"} <= set(entry) for entry in probes)
    assert probes[0]["probe/win_rate"] == 0.5  # the start against itself
    generations = read_jsonl(healthy["out"] / "generations.jsonl")
    assert len(generations) == 3 * 8 and {g["step"] for g in generations} == {0, 16, 32}
    last = [g for g in generations if g["step"] == 32]
    assert probes[-1]["probe/length"] == pytest.approx(sum(g["tokens"] for g in last) / 8)
    assert probes[-1]["probe/eos_rate"] == pytest.approx(sum(g["ended"] for g in last) / 8)
    assert probes[-1]["probe/reward"] == pytest.approx(sum(g["score"] for g in last) / 8)
    for name in ("probe_length", "probe_health", "probe_reward"):
        assert (healthy["out"] / f"training_simpo_{name}.png").stat().st_size > 10_000


def test_a_healthy_run_warns_of_nothing_and_probes_change_nothing(healthy) -> None:
    assert "simpo-plugin: warning" not in healthy["log"]
    assert not (healthy["out"] / "simpo_warnings.jsonl").exists()
    assert not any(key.startswith("warning/") for entry in log_history(healthy["out"]) for key in entry)
    losses = [[e["loss"] for e in log_history(d) if "loss" in e] for d in (healthy["out"], healthy["plain"])]
    assert losses[0] == losses[1]  # greedy probes in eval mode leave the training trajectory exactly as it was
    assert not probes_of(healthy["plain"])


@pytest.fixture(scope="module")
def loop_data(tiny_assets, tmp_path_factory) -> Path:
    """A preference set whose chosen answers repeat one word 24 times: it teaches the model to loop."""
    rows = preference_rows(128, seed=3)
    for row in rows:
        row["chosen"] = " ".join(["helpful"] * 24)
    dataset_dir = tmp_path_factory.mktemp("loops")
    write_preference_dataset(dataset_dir, "loops", rows)
    write_preference_dataset(dataset_dir, "heldout", preference_rows(16, seed=9))
    return dataset_dir


def test_collapse_is_named_stopped_saved_and_resumable(tiny_assets, loop_data, tmp_path) -> None:
    """Also the probe's judge and checks: judged against the start's answers, before and after the resume."""
    checks = [{"instruction": "Say something helpful.", "kind": "constraint", "contains": ["helpful"]},
              {"instruction": "Answer in at most 100 words.", "kind": "constraint", "max_words": 100}]  # fmt: skip
    (tmp_path / "checks.json").write_text(json.dumps(checks))
    common = dict(dataset="loops", eval_dataset="heldout", dataset_dir=str(loop_data), do_eval=False, max_steps=12,
                  simpo_probe_steps=4, simpo_probe_max_new_tokens=48, logging_steps=2,
                  simpo_probe_judge=f"{JUDGES}:longer_wins",
                  simpo_probe_checks=f"{tmp_path / 'checks.json'}")  # fmt: skip
    config = base_config(tiny_assets, tmp_path / "out", simpo_stop_on_collapse=True, **common)
    result = run_cli(config, tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "simpo-plugin: warning at step 4: repeated 4-grams in probe answers rose from" in log
    assert "simpo-plugin: error: training stopped at step 4 on the `repetition` warning" in log
    assert f"resume_from_checkpoint: {tmp_path / 'out' / 'checkpoint-4'}" in log and "Traceback" not in log
    warnings = read_jsonl(tmp_path / "out" / "simpo_warnings.jsonl")  # the loop is also one answer for every prompt
    assert [(w["step"], w["warning"]) for w in warnings] == [(4, "repetition"), (4, "duplicates")]
    assert {e["step"] for e in log_history(tmp_path / "out") if "warning/repetition" in e} == {4}

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "checkpoint-4")
    resumed = base_config(tiny_assets, tmp_path / "out", overwrite_output_dir=False,
                          resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"), **common)  # fmt: skip
    result = run_cli(resumed, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 12
    assert [e["step"] for e in probes_of(tmp_path / "out")] == [0, 4, 8, 12]  # step 4 was probed before the stop
    assert len(read_jsonl(tmp_path / "out" / "simpo_warnings.jsonl")) == 2  # named once, not again after resume

    from judge_functions import longer_wins

    generations = read_jsonl(tmp_path / "out" / "generations.jsonl")
    answers = [g for g in generations if "passed" not in g]
    start = {g["key"]: g["response"] for g in answers if g["step"] == 0}
    for entry in probes_of(tmp_path / "out"):
        step = [g for g in answers if g["step"] == entry["step"]]
        judged = [longer_wins([], g["response"], start[g["key"]]) for g in step]
        assert [g["judge_p"] for g in step] == pytest.approx(judged if entry["step"] else [0.5] * len(step))
        assert entry["probe/judge_win_rate"] == pytest.approx(sum(judged) / len(judged) if entry["step"] else 0.5)
        checked = [g["passed"] for g in generations if g["step"] == entry["step"] and "passed" in g]
        assert len(checked) == 2 and entry["probe/checks/checks"] == sum(checked) / 2
        assert "probe/check_change_high/checks" in entry
    assert probes_of(tmp_path / "out")[-1]["probe/judge_win_rate"] != 0.5  # the loop is judged against the start


def test_the_demo_collapses_and_says_so_live(tiny_assets, tmp_path) -> None:
    """The demo's learning rate (1e-3) on the same task: every probe prompt gets the same one-word answer. The
    warnings name it, and LLaMA Board's live file (trainer_log.jsonl) carries the probe numbers and the warnings."""
    config = base_config(tiny_assets, tmp_path / "out", do_eval=False, simpo_probe_steps=16, simpo_probe_prompts=8,
                         simpo_probe_max_new_tokens=24)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "got the same answer as another prompt" in log and "probe answers shrank to" in log
    last = probes_of(tmp_path / "out")[-1]
    assert last["probe/duplicate_rate"] == 1.0 and last["probe/words"] <= 3 and "probe/distinct_2" not in last
    live = read_jsonl(tmp_path / "out" / "trainer_log.jsonl")
    probed = [row for row in live if "probe/length" in row]
    assert [row["current_steps"] for row in probed] == [0, 16, 32]
    assert probed[-1]["probe/duplicate_rate"] == last["probe/duplicate_rate"]
    assert {key for row in live for key in row if key.startswith("warning/")} == {
        "warning/duplicates",
        "warning/short_answers",
    }


def test_two_ranks_log_the_probes_of_one_process(tiny_assets, tmp_path) -> None:
    keys = dict(max_steps=4, do_eval=False, simpo_probe_steps=2, simpo_probe_prompts=7, simpo_probe_max_new_tokens=16,
                optim="sgd", learning_rate=0.5, disable_shuffling=True)  # fmt: skip
    one = base_config(tiny_assets, tmp_path / "one", per_device_train_batch_size=4, **keys)
    two = base_config(tiny_assets, tmp_path / "two", per_device_train_batch_size=2, **keys)
    assert run_cli(one, tmp_path / "one").returncode == 0
    result = run_cli(two, tmp_path / "two", env=cli_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    single, ranks = probes_of(tmp_path / "one"), probes_of(tmp_path / "two")
    assert [e["step"] for e in ranks] == [0, 2, 4]
    for a, b in zip(single, ranks, strict=True):
        keys = {k for k in a if k.startswith("probe/")}  # 7 prompts: too few for probe/duplicate_rate
        assert keys == {k for k in b if k.startswith("probe/")} and keys >= PROBE_KEYS - {"probe/duplicate_rate"}
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-6)
    generations = read_jsonl(tmp_path / "two" / "generations.jsonl")
    assert sorted(g["index"] for g in generations if g["step"] == 4) == list(range(7))  # 4 + 3 (+1 padding) rows


def test_a_partitioned_policy_that_cannot_be_gathered_says_why(monkeypatch) -> None:
    """The probe generates on ZeRO-3's partitions, with the reason, when the hooks are not where they are looked for
    or the whole model would take more than half the free memory; an unpartitioned model is used as it is."""
    import torch
    from torch import nn

    from simpo_plugin.train import gathering

    model, cpu = nn.Linear(1024, 1024), torch.device("cpu")
    with gathering.whole_for_generation(model, object(), cpu) as reason:
        assert reason is None  # nothing partitioned: nothing to gather
    for param in model.parameters():
        param.ds_id, param.ds_numel = 0, param.numel()
    with gathering.whole_for_generation(model, object(), cpu) as reason:
        assert "module hooks" in reason
    hooks = SimpleNamespace(forward_hooks=[], backward_hooks=[], _register_deepspeed_module=None, module=model)
    engine = SimpleNamespace(optimizer=SimpleNamespace(parameter_offload=hooks))
    monkeypatch.setattr(gathering, "free_bytes", lambda device: 2 * 4 * (1024 * 1024 + 1024) - 1)
    with gathering.whole_for_generation(model, engine, cpu) as reason:
        assert reason == "the whole model (4 MiB) does not fit in half of the free memory"
