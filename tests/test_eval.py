"""`simpo-plugin eval` on the tiny model and a LoRA adapter trained from it: report numbers vs direct computation."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_config, cli_env, run_cli
from pairs_cases import REWARDS, pairs_config, write_prompt_datasets


@pytest.fixture(scope="module")
def evaluated(tiny_assets, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    lora = base_config(tiny_assets, root / "lora", finetuning_type="lora", lora_target="all", max_steps=6,
                       learning_rate=2e-2, do_eval=False, simpo_probe_steps=0)  # fmt: skip
    assert run_cli(lora, root / "lora").returncode == 0
    prompts = write_prompt_datasets(root / "prompts")
    config = pairs_config(tiny_assets["model"], prompts, root / "report", max_new_tokens=20, show=3,
                          reward_function=f"{REWARDS}:distinct_chars")  # fmt: skip
    for key in ("model_name_or_path", "num_samples", "keep_truncated", "batch_size", "seed"):
        config.pop(key)
    config["models"] = f"{tiny_assets['model']},{root / 'lora'}"
    (root / "eval.yaml").write_text(json.dumps(config))
    script = Path(sys.executable).with_name("simpo-plugin")
    result = subprocess.run([str(script), "eval", str(root / "eval.yaml")], env=cli_env(), capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "models": config["models"].split(","), "out": root / "report"}


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
    wins = [(r["responses"][adapter][0]["score"] > r["responses"][reference][0]["score"]) + 0.5 * (
        r["responses"][adapter][0]["score"] == r["responses"][reference][0]["score"]) for r in rows]  # fmt: skip
    assert results[adapter]["win_rate"] == pytest.approx(sum(wins) / 9) and results[reference]["win_rate"] == 0.5
    assert [r["responses"][reference][0]["text"] for r in rows] != [r["responses"][adapter][0]["text"] for r in rows]


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
    assert f"| `{reference}` |" in report and f"| `{adapter}` |" in report and "win rate vs reference" in report
    assert "## The first 3 prompts side by side" in report and report.count("\n| ") >= 2 + 1 + 3
    assert (evaluated["out"] / "eval_report.png").stat().st_size > 10_000


def test_eval_needs_two_models(tmp_path, capsys) -> None:
    from simpo_plugin.cli import main

    assert main(["eval", "models=one", f"output_dir={tmp_path}", "dataset=x"]) == 2
    assert "`models` needs two or more models" in capsys.readouterr().err
