"""`simpo-plugin rounds` on the tiny model: rounds end to end, resumed after a kill, refused changes, stop rules,
LoRA rounds merged between rounds."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_env, run_command
from pairs_cases import REWARDS, write_prompt_datasets


SCRIPT = Path(sys.executable).with_name("simpo-plugin")
TIMING = ("seconds",)


def rounds_config(tiny_assets, root: Path, **top) -> dict:
    prompts = write_prompt_datasets(root / "prompts")
    reward = f"{REWARDS}:distinct_chars"
    config = {
        "model_name_or_path": str(tiny_assets["model"]), "template": "llama2", "output_dir": str(root / "out"),
        "rounds": 2,
        "pairs": {"dataset": "prompts_alpaca,chat_sft", "dataset_dir": str(prompts), "num_samples": 3,
                  "max_new_tokens": 12, "batch_size": 3, "seed": 7, "reward_function": reward,
                  "drop_truncated": "none"},
        "train": {"finetuning_type": "full", "cutoff_len": 128, "per_device_train_batch_size": 1,
                  "num_train_epochs": 2.0, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "steps",
                  "save_steps": 1, "report_to": "none", "seed": 42},
        "eval": {"dataset": "prompts_alpaca,chat_sft", "dataset_dir": str(prompts), "max_new_tokens": 16,
                 "reward_function": reward, "bootstrap_samples": 20},
    }  # fmt: skip
    config.update(top)
    return config


def run_rounds(config: dict, path: Path, *overrides: str):
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return run_command([str(SCRIPT), "rounds", str(path), *overrides], path.parent, cli_env(), timeout=900)


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def two_rounds(tiny_assets, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rounds")
    config = rounds_config(tiny_assets, root)
    result = run_rounds(config, root / "rounds.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"root": root, "config": config, "result": result, "out": root / "out"}


def test_two_rounds_train_on_fresh_prompts_from_the_last_policy_and_report(two_rounds) -> None:
    out = two_rounds["out"]
    rows = json.loads((out / "rounds_results.json").read_text())
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert 0 <= row["lc_vs_start_ci"][0] <= row["lc_vs_start"] <= row["lc_vs_start_ci"][1] <= 100
        assert row["win_vs_start_ci"][0] <= row["win_vs_start"] <= row["win_vs_start_ci"][1]
        assert row["pairs_kept"] >= 1 and row["length"] > 0 and row["seconds"]["train"] > 0
    assert rows[0]["lc_vs_previous"] == rows[0]["lc_vs_start"]  # round 1's previous policy is the start
    assert rows[1]["policy"] == str(out / "round_2" / "train")
    results = json.loads((out / "round_2" / "eval" / "eval_results.json").read_text())
    assert rows[1]["win_vs_start"] == pytest.approx(results["round_2"]["win_rate"])
    previous = json.loads((out / "round_2" / "eval_previous" / "eval_results.json").read_text())
    assert list(previous) == ["round_1", "round_2"] and rows[1]["win_vs_previous"] == previous["round_2"]["win_rate"]
    # disjoint prompt slices, each sampled from that round's starting policy
    kept = [json.loads((out / f"round_{r}" / "pairs" / "pairs.json").read_text()) for r in (1, 2)]
    prompts = [{json.dumps([line.get("system"), line["conversations"]]) for line in lines} for lines in kept]
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]
    trained = yaml.safe_load((out / "round_2" / "train.yaml").read_text())
    assert trained["model_name_or_path"] == rows[0]["policy"] and trained["stage"] == "simpo"
    assert trained["dataset_dir"] == str(out / "round_2" / "pairs")
    report = (out / "rounds_report.md").read_text()
    assert "| round | pairs | LC vs start |" in report and "Best round by LC win rate" in report
    assert (out / "rounds.png").stat().st_size > 10_000
    result = two_rounds["result"]
    assert "Best round by LC win rate against the start: round" in result.stdout + result.stderr


def test_a_rerun_does_nothing_again_and_a_changed_config_is_refused(two_rounds, tmp_path) -> None:
    out = two_rounds["out"]
    before = (out / "rounds_results.json").read_text()
    logs = {path: path.stat().st_size for path in out.glob("round_*/train.log")}
    again = run_rounds(two_rounds["config"], tmp_path / "rounds.yaml")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the rounds" in again.stdout + again.stderr
    assert without_timing(json.loads((out / "rounds_results.json").read_text())) == without_timing(json.loads(before))
    assert {path: path.stat().st_size for path in out.glob("round_*/train.log")} == logs  # nothing trained again
    changed = run_rounds(two_rounds["config"], tmp_path / "rounds.yaml", "pairs.temperature=0.5")
    assert changed.returncode == 2
    assert "`pairs.temperature` (None -> 0.5) changed" in changed.stderr, changed.stdout[-2000:] + changed.stderr


def test_stop_when_ends_the_loop_and_names_the_best_round(two_rounds, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(two_rounds["out"], out)  # stop rules may change between runs: they decide only what runs next
    config = dict(two_rounds["config"], output_dir=str(out), stop_when={"lc_gain_below": 101})
    result = run_rounds(config, tmp_path / "rounds.yaml")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "stopped: round 1's LC win rate against the start is" in text
    assert "below `stop_when.lc_gain_below: 101`" in text
    assert "Best round by LC win rate against the start: round 1" in text
    assert [row["round"] for row in json.loads((out / "rounds_results.json").read_text())] == [1]
    more = run_rounds(dict(config, rounds=3), tmp_path / "rounds.yaml")  # its slices are halves: 3 would be thirds
    assert more.returncode == 2 and "`rounds` (2 -> 3) changed" in more.stderr, more.stderr[-2000:]
    assert not (out / "round_3").exists()
    warned = json.loads((two_rounds["out"] / "rounds_results.json").read_text())[0]["warnings"]
    config["stop_when"] = {"collapse_warning": True}  # the random tiny model's round 1 repeats itself
    result = run_rounds(config, tmp_path / "rounds.yaml")
    assert result.returncode == 0 and warned, result.stderr[-3000:]
    assert f"stopped: round 1's training warned of a collapse ({warned[0]}" in result.stdout + result.stderr


@pytest.mark.parametrize("adapters", ["merge", "stack"])
def test_lora_rounds_are_merged_or_stacked_into_the_next_policy(tiny_assets, tmp_path, adapters) -> None:
    config = rounds_config(tiny_assets, tmp_path, adapters=adapters)
    config["train"] |= {"finetuning_type": "lora", "lora_target": "all", "learning_rate": 2e-2,
                        "save_strategy": "no", "num_train_epochs": 1.0}  # fmt: skip
    config["train"].pop("save_steps")
    result = run_rounds(config, tmp_path / "rounds.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    rows = json.loads((out / "rounds_results.json").read_text())
    assert (out / "round_1" / "train" / "adapter_config.json").exists()
    trained = yaml.safe_load((out / "round_2" / "train.yaml").read_text())
    adapters_1, adapters_2 = str(out / "round_1" / "train"), str(out / "round_2" / "train")
    if adapters == "merge":
        assert [row["policy"] for row in rows] == [str(out / f"round_{r}" / "merged") for r in (1, 2)]
        assert (out / "round_1" / "merged" / "config.json").exists()  # a whole model, as the next round needs
        assert (
            trained["model_name_or_path"] == str(out / "round_1" / "merged") and "adapter_name_or_path" not in trained
        )
        return
    # stacked: round 2 trains a new adapter on the start with round 1's merged in memory, and is judged with both
    start = str(tiny_assets["model"])
    assert not (out / "round_1" / "merged").exists() and [row["policy"] for row in rows] == [adapters_1, adapters_2]
    assert rows[1]["model"] == {"model_name_or_path": start, "adapter_name_or_path": f"{adapters_1},{adapters_2}"}
    assert trained["model_name_or_path"] == start and trained["adapter_name_or_path"] == adapters_1
    assert trained["create_new_adapter"] is True
    assert "Merged 1 adapter(s)." in (out / "round_2" / "train.log").read_text()
    assert f"policy {start} with adapters {adapters_1},{adapters_2}" in result.stdout + result.stderr
    # the answers of round 2's policy (both adapters) differ from those of round 1's, and are generated once
    answers = [json.loads(p.read_text()) for p in sorted((out / "answers").glob("*.json"))]
    assert len(answers) == 3  # start, round 1, round 2: round 2's eval against round 1 read them back
    assert "answers read back from" in result.stdout + result.stderr


def test_a_kill_during_round_2_training_resumes_to_the_same_results(two_rounds, tiny_assets, tmp_path) -> None:
    """SIGTERM to a real `simpo-plugin rounds` process (not forked: its signal path and its CLI children are real)
    once round 2's training saved a checkpoint; the rerun resumes that training and ends with the uninterrupted
    run's results. The run starts from a copy of the two rounds with round 1 finished (as a rerun finds it: its
    phases name the first run's policy), so the process's time goes to round 2."""
    out = tmp_path / "out"
    shutil.copytree(two_rounds["out"], out)
    shutil.rmtree(out / "round_2")
    for name in ("rounds_results.json", "rounds_report.md", "rounds.png"):
        (out / name).unlink()
    config = dict(two_rounds["config"], output_dir=str(out))
    path = tmp_path / "rounds.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (tmp_path / "killed.log").open("w")  # a file, not a pipe: nobody reads while the test waits
    process = subprocess.Popen([str(SCRIPT), "rounds", str(path)], cwd=tmp_path, env=cli_env(), stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    checkpoint = out / "round_2" / "train" / "checkpoint-1"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=600)
    log.close()
    output = (tmp_path / "killed.log").read_text()
    assert process.returncode == 143, output[-3000:]
    phases = json.loads((out / "round_2" / "phases.json").read_text())
    assert "pairs" in phases and "train" not in phases  # stopped inside round 2's training, checkpoint saved
    resumed = run_rounds(config, path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training from" in (out / "round_2" / "train.log").read_text()
    rows = json.loads((out / "rounds_results.json").read_text())
    expected = json.loads((two_rounds["out"] / "rounds_results.json").read_text())
    for row in (*rows, *expected):
        row.pop("seconds")
        row["policy"] = Path(row["policy"]).relative_to(Path(row["policy"]).parents[1]).as_posix()
        row["model"] = (
            Path(row["model"]["model_name_or_path"])
            .relative_to(Path(row["model"]["model_name_or_path"]).parents[1])
            .as_posix()
        )
    assert rows == expected


def test_a_round_that_keeps_no_pair_stops_with_the_round_and_the_breakdown(tiny_assets, tmp_path) -> None:
    config = rounds_config(tiny_assets, tmp_path)
    config["pairs"] |= {"max_new_tokens": 1, "drop_truncated": "chosen", "num_samples": 2}  # every sample cut off
    result = run_rounds(config, tmp_path / "rounds.yaml")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "round 1: no pairs kept from" in result.stderr and "`max_new_tokens: 1`" in result.stderr
    assert "Change the `pairs:` block and run again." in result.stderr
    assert not (tmp_path / "out" / "round_1" / "phases.json").exists() and not (tmp_path / "out" / "round_2").exists()


def test_prompt_slices_split_the_prompts_into_disjoint_parts() -> None:
    from simpo_plugin.errors import PairsConfigError
    from simpo_plugin.pairs import PairsArguments

    def taken(text, total):
        return list(PairsArguments(output_dir="out", reward_function="m:f", prompt_slice=text).prompt_range(total))

    for total in (0, 1, 7, 10, 48):
        for parts in (1, 2, 3, 5):
            covered = [i for k in range(1, parts + 1) for i in taken(f"{k}/{parts}", total)]
            assert covered == list(range(total))  # every prompt once, in order
            sizes = [len(taken(f"{k}/{parts}", total)) for k in range(1, parts + 1)]
            assert max(sizes) - min(sizes) <= 1
    assert taken("3:6", 10) == [3, 4, 5] and taken("8:20", 10) == [8, 9] and taken(None, 3) == [0, 1, 2]
    for bad in ("0/3", "4/3", "5:5", "6:2", "a:b", "1-3", "/"):
        with pytest.raises(PairsConfigError, match=rf"`prompt_slice` must be `START:STOP` .* got '{re.escape(bad)}'"):
            PairsArguments(output_dir="out", reward_function="m:f", prompt_slice=bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"output_dir": "x"}}, r"`train.output_dir` is set by the loop: each round writes to"),
        ({"pairs": {"server_urls": ["http://a:1"]}}, r"`pairs.server_urls` is set by the loop: a running server"),
        ({"pairs": {"temprature": 0.7}}, r"Unknown key `pairs.temprature` for the `pairs:` block. Did you mean "
         r"`temperature`\?"),
        ({"eval": {"judge_modle": "j"}}, r"Unknown key `eval.judge_modle` .* Did you mean `judge_model`\?"),
        ({"train": {"learning_rat": 1e-6}}, r"Unknown key `train.learning_rat` .* Did you mean `learning_rate`\?"),
        ({"learning_rate": 1e-6}, r"Unknown top-level key `learning_rate` .* It belongs in the `train:` block"),
        ({"stop_when": {"lc_gain": 1}}, r"Unknown key `stop_when.lc_gain`. Did you mean `lc_gain_below`\?"),
        ({"rounds": 0}, r"`rounds` must be an integer >= 1, got 0"),
        ({"adapters": "stacked"}, r"`adapters` must be `merge` .* or `stack` .*, got 'stacked'"),
        ({"adapters": "stack"}, r"`adapters: stack` cannot run here: it stacks LoRA adapters, and "
         r"`train.finetuning_type` is 'full'. Use `adapters: merge`."),
        ({"adapters": "stack", "train": {"finetuning_type": "lora", "quantization_bit": 4}},
         r"`adapters: stack` cannot run here: the host does not merge adapters into a quantized model"),
        ({"adapters": "stack", "train": {"finetuning_type": "lora", "deepspeed": {"zero_optimization": {"stage": 3}}}},
         r"`adapters: stack` cannot run here: the host does not merge adapters under ZeRO-3"),
        ({"adapters": "stack", "train": {"finetuning_type": "lora"}, "pairs": {"backend": "server"}},
         r"`adapters: stack` cannot run here: a server serves one adapter"),
        ({"eval": {"answers_cache": "x"}}, r"`eval.answers_cache` is set by the loop: the rounds share"),
        ({"train": {"new_special_tokens": "<x>"}}, r"In the `train:` block: `new_special_tokens` was renamed "
         r"`add_special_tokens` in llamafactory 0.9.3"),
        ({"eval": {"dataset": None}}, r"`eval.dataset` is required"),
    ],
)  # fmt: skip
def test_a_bad_config_is_refused_with_its_block_and_key(tiny_assets, tmp_path, change, message) -> None:
    from simpo_plugin.errors import SimPOArgumentError
    from simpo_plugin.rounds import check_config

    config = rounds_config(tiny_assets, tmp_path)
    for key, value in change.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    config["eval"] = {k: v for k, v in config["eval"].items() if v is not None}
    with pytest.raises(SimPOArgumentError, match=message):
        check_config(config)
