"""`simpo-plugin eval` on the tiny model and a LoRA adapter trained from it: report numbers vs direct computation."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
from conftest import base_config, cli_env, run_cli, run_command
from pairs_cases import REWARDS, pairs_config, write_prompt_datasets

from simpo_plugin.evaluation import evaluate_models


@pytest.fixture(scope="module")
def evaluated(tiny_assets, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    lora = base_config(tiny_assets, root / "lora", finetuning_type="lora", lora_target="all", max_steps=6,
                       learning_rate=2e-2, do_eval=False, simpo_probe_steps=0)  # fmt: skip
    assert run_cli(lora, root / "lora").returncode == 0
    prompts = write_prompt_datasets(root / "prompts")
    config = pairs_config(tiny_assets["model"], prompts, root / "report", max_new_tokens=20, show=3,
                          reward_function=f"{REWARDS}:distinct_chars")  # fmt: skip
    for key in ("model_name_or_path", "num_samples", "drop_truncated", "batch_size", "seed"):
        config.pop(key)
    config["models"] = f"{tiny_assets['model']},{root / 'lora'}"
    config["bootstrap_samples"] = 20  # the intervals' resamples (each refits the LC GLM): 200 took 20 s an eval
    (root / "eval.yaml").write_text(json.dumps(config))
    script = Path(sys.executable).with_name("simpo-plugin")
    result = run_command([str(script), "eval", str(root / "eval.yaml")], root, cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "models": config["models"].split(","), "out": root / "report"}


@pytest.mark.host
def test_report_numbers_match_a_direct_computation(evaluated) -> None:
    results = json.loads((evaluated["out"] / "eval_results.json").read_text())
    rows = [json.loads(line) for line in (evaluated["out"] / "eval_generations.jsonl").read_text().splitlines()]
    reference, adapter = evaluated["models"]
    assert list(results) == [reference, adapter] and len(rows) == 9  # 6 unique alpaca prompts + 3 usable chats
    for model in (reference, adapter):
        answers = [row["responses"][model][0] for row in rows]
        words = [re.findall(r"[^\W_]+", a["text"].lower()) for a in answers]
        bigrams = [tuple(w[i : i + 2]) for w in words for i in range(len(w) - 1)]
        assert results[model]["length"] == pytest.approx(sum(a["tokens"] for a in answers) / 9)
        assert results[model]["eos_rate"] == pytest.approx(sum(a["ended"] for a in answers) / 9)
        assert results[model]["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams))
        assert results[model]["reward"] == pytest.approx(sum(a["score"] for a in answers) / 9)
        assert all(a["score"] == len(set(a["text"])) + 0.001 * len(a["text"]) for a in answers)
    margins = [r["responses"][adapter][0]["score"] - r["responses"][reference][0]["score"] for r in rows]
    preference = [1 / (1 + math.exp(-m)) for m in margins]  # Bradley-Terry on the rewards
    assert (
        results[adapter]["win_rate"] == pytest.approx(100 * sum(preference) / 9)
        and results[reference]["win_rate"] == 50
    )
    assert results[adapter]["win_rate_ci"][0] <= results[adapter]["win_rate"] <= results[adapter]["win_rate_ci"][1]
    assert "lc_win_rate" in results[adapter] and results[adapter]["chars"] == pytest.approx(
        sum(len(r["responses"][adapter][0]["text"]) for r in rows) / 9
    )
    assert [r["responses"][reference][0]["text"] for r in rows] != [r["responses"][adapter][0]["text"] for r in rows]


@pytest.mark.host
def test_greedy_answers_are_the_models_own(evaluated, tiny_assets) -> None:
    """The reference's answer to the first prompt equals plain `generate` with greedy decoding on the same ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = json.loads((evaluated["out"] / "eval_generations.jsonl").read_text().splitlines()[0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"]).eval()
    system = next((m["content"] for m in first["prompt"] if m["role"] == "system"), None)
    user = first["prompt"][-1]["content"]
    text = "<s>[INST] " + (f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else "") + f"{user} [/INST]"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    answer = first["responses"][str(tiny_assets["model"])][0]
    new = out[0, ids.shape[1] :].tolist()
    new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    assert answer["text"] == tokenizer.decode(new, skip_special_tokens=True) and answer["tokens"] == len(new)


def test_report_files(evaluated) -> None:
    report = (evaluated["out"] / "eval_report.md").read_text()
    reference, adapter = evaluated["models"]
    assert f"| `{reference}` (baseline) |" in report and f"| `{adapter}` |" in report and "## Leaderboard" in report
    assert "## The first 3 prompts side by side" in report and report.count("\n| ") >= 2 + 1 + 3
    assert (evaluated["out"] / "eval_report.png").stat().st_size > 10_000
    assert (evaluated["out"] / "eval_win_rates.png").stat().st_size > 10_000
    assert len((evaluated["out"] / "judgments.jsonl").read_text().splitlines()) == 9


def test_llm_judge_precomputed_answers_and_checks(evaluated, tiny_assets, tmp_path) -> None:
    """The tiny model judges (both orders, from its logits) its own answers against the adapter's, given as an
    AlpacaEval outputs file; checks are generated for the path model only."""
    reference, adapter = evaluated["models"]
    rows = [json.loads(line) for line in (evaluated["out"] / "eval_generations.jsonl").read_text().splitlines()]
    outputs = [{"instruction": r["prompt"][-1]["content"], "output": r["responses"][adapter][0]["text"],
                "generator": "adapter"} for r in rows]  # fmt: skip
    (tmp_path / "adapter.json").write_text(json.dumps(outputs[::-1]))  # any order: matched by instruction
    checks = [{"instruction": "Say hi in at most 50 words.", "kind": "constraint", "max_words": 50},
              {"instruction": "What is 2 + 2?", "kind": "exact", "answer": 4}]  # fmt: skip
    (tmp_path / "checks.json").write_text(json.dumps(checks))
    config = json.loads((evaluated["root"] / "eval.yaml").read_text())
    config.pop("reward_function")
    config.update(models=[reference, {"name": "adapter", "outputs": str(tmp_path / "adapter.json")}],
                  judge_model=reference, checks=[str(tmp_path / "checks.json")], output_dir=str(tmp_path / "out"),
                  bootstrap_samples=20)  # fmt: skip
    results = evaluate_models(config)
    judgments = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 9 and all(0 < j["p_a_first"] < 1 and 0 < j["p_a_second"] < 1 for j in judgments)
    assert all(j["p_a"] == pytest.approx((j["p_a_first"] + j["p_a_second"]) / 2) for j in judgments)
    consistent = sum((j["p_a_first"] > 0.5) == (j["p_a_second"] > 0.5) for j in judgments) / 9
    assert results["adapter"]["position_consistency"] == pytest.approx(consistent)
    assert results["adapter"]["win_rate"] == pytest.approx(100 * sum(j["p_a"] for j in judgments) / 9)
    assert [row["responses"][adapter][0]["text"] for row in rows] == [o["output"] for o in outputs]
    assert results["adapter"]["length"] > 0 and "checks" not in results["adapter"]  # counted by the judge's tokenizer
    checked = results[reference]["checks"]["checks"]
    assert len(checked["passed"]) == 2 and checked["score"] == 50 * sum(checked["passed"])
    report = (tmp_path / "out" / "eval_report.md").read_text()
    assert "LLM judge" in report and "## Capability checks" in report


def test_answers_are_read_back_when_unchanged_and_generated_again_when_not(evaluated, tmp_path, monkeypatch) -> None:
    """A second evaluation of the same models reads the first one's answers (same results, nothing generated); a
    base with `adapter_name_or_path` is the same model as the adapter's path; a rewritten model file generates
    again, with the same answers; the fingerprint follows generation keys, not judge keys."""
    import os

    from simpo_plugin.evaluation import cache as answers_cache
    from simpo_plugin.evaluation import evaluate as evaluation

    reference, adapter = evaluated["models"]
    config = json.loads((evaluated["root"] / "eval.yaml").read_text())
    cache = evaluated["out"] / "answers"
    assert len(list(cache.glob("*.json"))) == 2
    config.update(output_dir=str(tmp_path / "again"), answers_cache=str(cache))
    loaded = []
    sampler = evaluation.load_sampler
    monkeypatch.setattr(evaluation, "load_sampler", lambda *a: loaded.append(a[2].adapter_name_or_path) or sampler(*a))
    again = evaluate_models(config)
    assert again == json.loads((evaluated["out"] / "eval_results.json").read_text()) and loaded == []
    stacked = {"name": "stacked", "path": reference, "adapter_name_or_path": adapter}
    config.update(models=[reference, stacked], output_dir=str(tmp_path / "stacked"))
    assert evaluate_models(config)["stacked"] == again[adapter] and loaded == []
    assert len(list(cache.glob("*.json"))) == 2
    os.utime(Path(adapter) / "adapter_model.safetensors", ns=(1, 1))  # the adapter retrained in place
    config.update(models=[reference, adapter], output_dir=str(tmp_path / "touched"))
    assert evaluate_models(config)[adapter] == again[adapter] and loaded == [[adapter]]
    assert len(list(cache.glob("*.json"))) == 3
    model, prompts = {"model_name_or_path": reference}, []
    key = answers_cache.fingerprint(model, config, prompts, [])
    assert answers_cache.fingerprint(model, dict(config, judge_model="j", bootstrap_samples=5), prompts, []) == key
    assert answers_cache.fingerprint(model, dict(config, max_new_tokens=7), prompts, []) != key
    assert answers_cache.fingerprint(model, config, prompts, [("arithmetic", [{"instruction": "1+1"}])]) != key


def test_eval_needs_two_models(tmp_path, capsys) -> None:
    from simpo_plugin.cli import main

    assert main(["eval", "models=one", f"output_dir={tmp_path}", "dataset=x"]) == 2
    assert "`models` needs two or more models" in capsys.readouterr().err
