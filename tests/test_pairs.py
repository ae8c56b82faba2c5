"""`simpo-plugin pairs` end to end on the tiny local policy: prompt ids, resume, shards, training on the output."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli_env, log_history, run_cli, run_command
from pairs_cases import REWARDS, pairs_config, training_examples, write_prompt_datasets

from simpo_plugin.errors import PairsConfigError
from simpo_plugin.pairs import build_pairs
from simpo_plugin.sampling.prompts import ids_digest


ALL_SOURCES = "prompts_alpaca,chat_sft,simpo_synthetic"
IGNORE_INDEX = -100


@pytest.fixture(scope="module")
def prompt_dir(tiny_assets, tmp_path_factory) -> Path:
    """Alpaca prompt-only rows, sharegpt SFT chats and the tiny ranking set, in one dataset_dir."""
    dataset_dir = write_prompt_datasets(tmp_path_factory.mktemp("prompts"))
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    info["simpo_synthetic"] = json.loads((tiny_assets["dataset_dir"] / "dataset_info.json").read_text())[
        "simpo_synthetic"
    ]
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info))
    shutil.copy(tiny_assets["dataset_dir"] / "simpo_synthetic.json", dataset_dir)
    return dataset_dir


def config_for(tiny_assets, prompt_dir, output_dir: Path, **overrides) -> dict:
    return pairs_config(tiny_assets["model"], prompt_dir, output_dir, dataset=ALL_SOURCES, max_samples=8, **overrides)


@pytest.fixture(scope="module")
def reference(tiny_assets, prompt_dir, tmp_path_factory) -> tuple[Path, object]:
    """One uninterrupted, unsharded run: the outputs that resumed and sharded runs must reproduce."""
    output_dir = tmp_path_factory.mktemp("reference")
    return output_dir, build_pairs(config_for(tiny_assets, prompt_dir, output_dir))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.host
def test_outputs_report_and_counts(reference) -> None:
    output_dir, stats = reference
    rows = json.loads((output_dir / "pairs.json").read_text())
    candidates = read_jsonl(output_dir / "candidates.jsonl")
    # 6 unique alpaca prompts (one duplicate), 3 usable chats (one broken), 8 ranking rows
    assert (stats.rows, len(stats.unusable)) == (19, 1) and stats.duplicates >= 1
    assert stats.prompts == 19 - 1 - stats.duplicates
    assert len(candidates) == 3 * stats.prompts and stats.samples == len(candidates)
    assert len(rows) == stats.kept == stats.prompts - sum(stats.drops.values()) > 0
    assert sum(c["role"] == "chosen" for c in candidates) == len(rows)
    for row in rows:
        assert row["chosen_score"] > row["rejected_score"]
        assert set(row["chosen"]) == {"from", "value"} and row["chosen"]["from"] == "gpt"
    info = json.loads((output_dir / "dataset_info.json").read_text())["onpolicy"]
    assert info == {"file_name": "pairs.json", "formatting": "sharegpt", "ranking": True,
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                                "system": "system"}}  # fmt: skip
    report = (output_dir / "pairs_report.md").read_text()
    assert f"**pairs kept** | **{len(rows)}**" in report and "samples/s" in report
    assert "`chat_sft` row 2" in report
    assert (output_dir / "pairs_report.png").stat().st_size > 10_000


@pytest.mark.host
def test_prompt_ids_of_training_equal_the_ids_generated_from(reference, tiny_assets) -> None:
    """The host's pairwise processor, fed pairs.json, starts every pair with exactly the sampled prompt ids."""
    output_dir, _ = reference
    train, kept, tokenizer = training_examples(output_dir, tiny_assets["model"], "llama2")
    samples = {r["index"]: r for r in read_jsonl(output_dir / "parts" / "samples.all.jsonl")}
    assert len(train) == len(kept)
    decoded = []
    for example, index in zip(train, kept, strict=True):
        length = samples[index]["prompt_tokens"]
        for side in ("chosen", "rejected"):
            ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
            assert ids_digest(ids[:length]) == samples[index]["prompt_digest"]
            assert set(labels[:length]) == {IGNORE_INDEX} and labels[length] != IGNORE_INDEX
            assert ids[0] == tokenizer.bos_token_id != ids[1]  # one BOS, not two
        decoded.append(tokenizer.decode(example["chosen_input_ids"][:length]))
    assert any("<<SYS>>\nAnswer briefly.\n<</SYS>>" in text for text in decoded)  # the row's system prompt
    multi_turn = [text for text in decoded if "Tell me about the forest." in text]
    assert multi_turn and "Hi, who are you?" in multi_turn[0] and "A bot." in multi_turn[0]  # earlier turns kept
    assert not any("Green." in text for text in decoded)  # the replaced last answer is gone


def test_a_prompt_samples_the_same_alone_as_in_a_batch(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    output_dir, _ = reference
    alone = build_pairs(pairs_config(tiny_assets["model"], prompt_dir, tmp_path / "alone", dataset="chat_sft",
                                     max_samples=1, batch_size=1))  # fmt: skip
    assert alone.prompts == 1
    texts = {r["key"]: [s["text"] for s in r["samples"]] for r in read_jsonl(output_dir / "parts/samples.all.jsonl")}
    (record,) = read_jsonl(tmp_path / "alone/parts/samples.all.jsonl")
    assert [s["text"] for s in record["samples"]] == texts[record["key"]]
    assert len(set(texts[record["key"]])) > 1  # sampling, not greedy


def test_killed_runs_resume_to_the_same_outputs(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    """SIGKILL mid-line while sampling, then after a scoring chunk; the third run equals an uninterrupted run."""
    output_dir, _ = reference
    config_path = tmp_path / "pairs.yaml"
    config_path.write_text(yaml.safe_dump(config_for(tiny_assets, prompt_dir, tmp_path / "out")))
    script = Path(__file__).with_name("run_pairs_and_kill.py")
    for kind, n, mode in (("samples", 3, "partial"), ("scores", 2, "whole")):
        killed = run_command([str(script), str(config_path), kind, str(n), mode], tmp_path, cli_env())
        assert killed.returncode == -9, killed.stderr[-3000:]
    part = (tmp_path / "out/parts/samples.all.jsonl").read_bytes()
    assert part.endswith(b"\n")  # the second run cut the half line before appending
    resumed = run_command([str(Path(sys.executable).with_name("simpo-plugin")), "pairs", str(config_path)], tmp_path,
                          cli_env())  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Sampling" not in resumed.stderr  # everything was sampled before the second kill
    for name in ("pairs.json", "candidates.jsonl", "dataset_info.json"):
        assert (tmp_path / "out" / name).read_bytes() == (output_dir / name).read_bytes(), name


def test_two_shards_then_a_merge_equal_one_run(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    output_dir, _ = reference
    for index in (1, 0):
        shard = config_for(tiny_assets, prompt_dir, tmp_path, num_shards=2, shard_index=index)
        assert build_pairs(shard) is None
        assert not (tmp_path / "pairs.json").exists()
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.jsonl")) == [
        "samples.shard-0-of-2.jsonl", "samples.shard-1-of-2.jsonl", "scores.shard-0-of-2.jsonl",
        "scores.shard-1-of-2.jsonl",
    ]  # fmt: skip
    merged = build_pairs(config_for(tiny_assets, prompt_dir, tmp_path))
    assert merged.sampling_rate == ""  # nothing left to sample: the merge loads no model
    for name in ("pairs.json", "candidates.jsonl"):
        assert (tmp_path / name).read_bytes() == (output_dir / name).read_bytes(), name


def test_changed_settings_do_not_mix_with_saved_results(reference, tiny_assets, prompt_dir, tmp_path) -> None:
    output_dir = tmp_path / "out"
    shutil.copytree(reference[0] / "parts", output_dir / "parts")
    with pytest.raises(PairsConfigError, match=r"num_samples=3, this run has num_samples=4; use a new `output_dir`"):
        build_pairs(config_for(tiny_assets, prompt_dir, output_dir, num_samples=4))
    with pytest.raises(PairsConfigError, match="to rescore the saved samples, delete"):
        build_pairs(config_for(tiny_assets, prompt_dir, output_dir, reward_function=f"{REWARDS}:nan_when_short"))
    again = build_pairs(config_for(tiny_assets, prompt_dir, output_dir, num_samples=4, overwrite_output_dir=True))
    assert again.samples == 4 * again.prompts


@pytest.mark.host
def test_a_reward_function_that_raises_stops_with_one_line_and_keeps_the_samples(
    tiny_assets, tmp_path, capsys
) -> None:
    from simpo_plugin.cli import main

    dataset_dir = write_prompt_datasets(tmp_path / "data")
    config = pairs_config(tiny_assets["model"], dataset_dir, tmp_path / "out", dataset="prompts_alpaca", max_samples=2,
                          reward_function=f"{REWARDS}:raises")  # fmt: skip
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(config))
    assert main(["pairs", str(tmp_path / "pairs.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"simpo-plugin pairs: error: `reward_function: {REWARDS}:raises` failed on prompt ")
    assert "ValueError('the reward service is down'); fix the function and run again" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert (tmp_path / "out" / "parts").is_dir() and not (tmp_path / "out" / "pairs.json").exists()


@pytest.mark.host
def test_the_pairs_train_with_simpo(reference, tiny_assets, tmp_path) -> None:
    output_dir, stats = reference
    config = {
        "model_name_or_path": str(tiny_assets["model"]), "stage": "simpo", "do_train": True, "finetuning_type": "full",
        "dataset": "onpolicy", "dataset_dir": str(output_dir), "template": "llama2", "cutoff_len": 256,
        "output_dir": str(tmp_path / "trained"), "per_device_train_batch_size": 4, "max_steps": 2,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "learning_rate": 1e-3,
    }  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"SimPO train data: {stats.kept} pairs used" in result.stdout + result.stderr
    losses = [entry["loss"] for entry in log_history(tmp_path / "trained") if "loss" in entry]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)


@pytest.mark.host
def test_console_script_reports_bad_input_in_one_line(tmp_path) -> None:
    script = str(Path(sys.executable).with_name("simpo-plugin"))
    result = run_command([script, "pairs", "output_dir=o", "num_sampels=3"], tmp_path, cli_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "simpo-plugin pairs: error: Unknown key `num_sampels` for `simpo-plugin pairs`. Did you mean `num_samples`? "
        "Run `simpo-plugin pairs --help` for the keys."
    )
    (tmp_path / "pairs.yaml").write_text("output_dir: o\nnum_sampels: 3\n")
    from_file = run_command([script, "pairs", "pairs.yaml"], tmp_path, cli_env())
    assert from_file.returncode == 2 and "Did you mean `num_samples`?" in from_file.stderr
    assert from_file.stderr.strip().endswith(f"(config: {tmp_path / 'pairs.yaml'})")
    helped = run_command([script, "pairs", "--help"], tmp_path, cli_env())
    assert helped.returncode == 0 and "min_score_gap" in helped.stdout and "model_name_or_path" in helped.stdout
    assert os.path.basename(script) == "simpo-plugin"
