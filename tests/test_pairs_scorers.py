"""Each scorer of `simpo-plugin pairs` on the tiny policy, checked against a direct computation or the host."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from pairs_cases import REWARDS, pairs_config, write_prompt_datasets

from simpo_plugin.cli import main
from simpo_plugin.pairs import build_pairs


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory) -> Path:
    return write_prompt_datasets(tmp_path_factory.mktemp("prompts"))


def chat(row: dict) -> list[dict[str, str]]:
    roles = {"human": "user", "gpt": "assistant"}
    turns = [{"role": roles[m["from"]], "content": m["value"]} for m in row["conversations"]]
    return ([{"role": "system", "content": row["system"]}] if row["system"] else []) + turns


def test_reward_function_gets_the_chat_with_its_system_prompt(tiny_assets, prompt_dir, tmp_path) -> None:
    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path, reward_function=f"{REWARDS}:echo_prompt_length")
    build_pairs(config)
    rows = json.loads((tmp_path / "pairs.json").read_text())
    assert any(row["system"] for row in rows)
    for row in rows:
        prompt_chars = sum(len(m["content"]) for m in chat(row) if m["role"] != "assistant")
        assert row["chosen_score"] == prompt_chars + len(row["chosen"]["value"]) % 7


def test_classifier_reward_model_scores_as_it_does_alone(tiny_assets, prompt_dir, tmp_path) -> None:
    """Batched, right-padded scoring equals scoring each chat-formatted conversation alone (fp32, 1e-5)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from simpo_plugin.testing import build_tiny_reward_model

    build_tiny_reward_model(tmp_path / "rm", AutoTokenizer.from_pretrained(tiny_assets["model"]), seed=3)
    build_pairs(pairs_config(tiny_assets["model"], prompt_dir, tmp_path / "out", reward_function=None,
                             reward_model=str(tmp_path / "rm"), reward_batch_size=4))  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    rows = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert len(rows) >= 5
    for row in rows:
        for side in ("chosen", "rejected"):
            text = tokenizer.apply_chat_template(chat(row) + [{"role": "assistant", "content": row[side]["value"]}],
                                                 tokenize=False)  # fmt: skip
            with torch.no_grad():
                alone = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
            assert row[f"{side}_score"] == pytest.approx(alone, abs=1e-5)
    assert len({row["chosen_score"] for row in rows}) == len(rows)  # real scores, not a constant


@pytest.mark.host
def test_llamafactory_reward_model_scores_like_the_host_predicts(tiny_assets, prompt_dir, tmp_path) -> None:
    """A value-head RM trained with the real `stage: rm` scores our pairs as the host's own rm prediction does."""
    rm_dir = tmp_path / "rm"
    train = {
        "model_name_or_path": str(tiny_assets["model"]), "stage": "rm", "do_train": True, "finetuning_type": "full",
        "dataset": "simpo_synthetic", "dataset_dir": str(tiny_assets["dataset_dir"]), "template": "llama2",
        "cutoff_len": 128, "output_dir": str(rm_dir), "per_device_train_batch_size": 8, "max_steps": 4,
        "learning_rate": 5e-3, "save_strategy": "no", "report_to": "none",
    }  # fmt: skip
    result = run_cli(train, tmp_path / "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (rm_dir / "value_head.safetensors").is_file()
    build_pairs(pairs_config(tiny_assets["model"], prompt_dir, tmp_path / "out", reward_function=None,
                             reward_model=str(rm_dir), reward_batch_size=4))  # fmt: skip
    predict = {
        "model_name_or_path": str(rm_dir), "stage": "rm", "do_predict": True, "eval_dataset": "onpolicy",
        "dataset_dir": str(tmp_path / "out"), "template": "llama2", "cutoff_len": 2048,
        "output_dir": str(tmp_path / "predict"), "per_device_eval_batch_size": 4, "report_to": "none",
    }  # fmt: skip
    result = run_cli(predict, tmp_path / "predict")
    assert result.returncode == 0, result.stderr[-3000:]
    host = [json.loads(line) for line in (tmp_path / "predict/generated_predictions.jsonl").read_text().splitlines()]
    rows = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert len(host) == len(rows) >= 5
    for ours, theirs in zip(rows, host, strict=True):  # the host rounds to 2 decimals; we keep every digit
        assert abs(ours["chosen_score"] - theirs["chosen"]) <= 0.005 + 1e-6
        assert abs(ours["rejected_score"] - theirs["rejected"]) <= 0.005 + 1e-6
    assert any(round(row["chosen_score"], 2) != row["chosen_score"] for row in rows)


def test_non_finite_scores_drop_the_prompt_and_are_named(tiny_assets, prompt_dir, tmp_path) -> None:
    stats = build_pairs(pairs_config(tiny_assets["model"], prompt_dir, tmp_path, max_new_tokens=2,
                                     reward_function=f"{REWARDS}:nan_when_short"))  # fmt: skip
    candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    nan_prompts = {c["prompt_index"] for c in candidates if any(f.startswith("non_finite") for f in c["flags"])}
    assert stats.drops["non_finite"] == len(nan_prompts) > 0
    assert all(c["score"] is None or math.isfinite(c["score"]) for c in candidates)
    assert "Non-finite scores: " in (tmp_path / "pairs_report.md").read_text() and "(sample " in stats.non_finite[0]


def bad_run(capsys, config: dict) -> str:
    """Run the CLI in-process on `config`; it must exit with 2 and print exactly one error line."""
    argv = ["pairs"] + [f"{key}={value}" for key, value in config.items()]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("simpo-plugin pairs: error:")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_samples": 1}, "`num_samples` must be >= 2"),
        ({"reward_model": "x"}, "`reward_model` or `reward_function`, not both"),
        ({"reward_function": None}, "Give exactly one scorer"),
        ({"reward_function": "no_such_module:f"}, "`reward_function: no_such_module:f` cannot be imported"),
        ({"reward_function": "no_colon"}, "must look like `package.module:function`"),
        ({"reward_function": f"{REWARDS}:missing"}, "has no attribute 'missing'"),
        ({"backend": "vllm"}, "`backend: vllm` (vLLM inside this process) was replaced by `backend: server`"),
        ({"backend": "tpu"}, "`backend` must be one of auto, hf, server"),
        ({"server_urls": "localhost:8000"}, "`server_urls`: `localhost:8000` is not an http(s) URL"),
        ({"dataset": "nope"}, "Dataset `nope` (`dataset`) is not registered in "),
    ],
)
def test_bad_config_is_one_line(tiny_assets, prompt_dir, tmp_path, capsys, overrides, message) -> None:
    assert message in bad_run(capsys, pairs_config(tiny_assets["model"], prompt_dir, tmp_path, **overrides))


def test_bad_inputs_found_while_running_are_one_line(tiny_assets, prompt_dir, tmp_path, capsys) -> None:
    (prompt_dir / "no_prompts.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}]}]))
    info = json.loads((prompt_dir / "dataset_info.json").read_text())
    info["no_prompts"] = {"file_name": "no_prompts.json", "formatting": "sharegpt"}
    (prompt_dir / "dataset_info.json").write_text(json.dumps(info))
    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path / "a", dataset="no_prompts")
    assert (
        "Dataset `no_prompts` has no usable prompts (`no_prompts` row 0: the conversation has an odd number of turns"
        in (bad_run(capsys, config))
    )

    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path / "b", reward_function=None,
                          reward_model=str(tiny_assets["model"]))  # fmt: skip
    assert "is a LlamaForCausalLM, not a reward model" in bad_run(capsys, config)

    config = pairs_config(tiny_assets["model"], prompt_dir, tmp_path / "c", reward_function=f"{REWARDS}:not_a_number")
    line = bad_run(capsys, config)
    assert "returned 'good' (str) for prompt prompts_alpaca#0; it must return a number" in line
    assert (tmp_path / "c/parts/samples.all.jsonl").stat().st_size > 0  # nothing sampled is lost


def test_causal_lm_checkpoint_labelled_as_classifier_is_refused(tiny_assets, tmp_path, capsys) -> None:
    """A config that claims a classifier but a checkpoint without the head: the random head is refused."""
    import shutil

    shutil.copytree(tiny_assets["model"], tmp_path / "fake")
    config = json.loads((tmp_path / "fake/config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (tmp_path / "fake/config.json").write_text(json.dumps(config))
    from simpo_plugin.errors import PairsConfigError
    from simpo_plugin.pairs.scorers import ClassifierScorer

    with pytest.raises(PairsConfigError, match=r"is not a sequence-classification reward model: its checkpoint lacks"):
        ClassifierScorer(str(tmp_path / "fake"), 4, trust_remote_code=False)
