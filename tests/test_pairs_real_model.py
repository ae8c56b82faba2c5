"""The on-policy example on the one real model within reach, SmolLM2-135M-Instruct (CPU, about a minute)."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import log_history, run_cli

from simpo_plugin.errors import EmptyOutput
from simpo_plugin.evaluation import evaluate_models
from simpo_plugin.evaluation.checks import load_check_set
from simpo_plugin.pairs import build_pairs


pytestmark = pytest.mark.real_model
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onpolicy"


def example_config(smollm2: Path, output_dir: Path, **overrides) -> dict:
    config = yaml.safe_load((EXAMPLE / "pairs.yaml").read_text())
    config.update(model_name_or_path=str(smollm2), dataset_dir=str(EXAMPLE / "data"), output_dir=str(output_dir),
                  reward_function=f"{EXAMPLE / 'rewards.py'}:concise_answer")  # fmt: skip
    config.update(overrides)
    return config


def test_greedy_answer_is_right(smollm2, tmp_path) -> None:
    """Conversion, template and stop words together: the released model's greedy answer, stopped at <|im_end|>."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "q.json").write_text(json.dumps([{"instruction": "What is the capital of France?"}]))
    info = {"q": {"file_name": "q.json", "columns": {"prompt": "instruction"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(EmptyOutput, match=r"no pairs kept from 1 prompts .* Dropped: identical 1"):
        build_pairs(
            example_config(
                smollm2,
                tmp_path / "out",
                dataset="q",
                dataset_dir=str(data),
                temperature=0,
                num_samples=2,
                max_new_tokens=24,
            )
        )  # fmt: skip (two greedy answers: no pair)
    first = json.loads((tmp_path / "out" / "candidates.jsonl").read_text().splitlines()[0])
    assert "Paris" in first["response"] and first["flags"] == [] and "<|im_end|>" not in first["response"]


def test_example_pairs_are_real_answers_and_train(smollm2, tmp_path) -> None:
    stats = build_pairs(example_config(smollm2, tmp_path / "pairs", max_samples=6, max_new_tokens=48))
    candidates = [json.loads(line) for line in (tmp_path / "pairs" / "candidates.jsonl").read_text().splitlines()]
    assert (stats.prompts, stats.samples) == (6, 24)
    stopped = [c for c in candidates if "truncated" not in c["flags"]]
    assert len(stopped) >= 12  # a real model ends most answers by itself
    assert sum(len(c["response"].split()) >= 3 for c in stopped) >= 0.8 * len(stopped)
    assert stats.kept >= 2 and min(stats.gaps) > 0
    rows = json.loads((tmp_path / "pairs" / "pairs.json").read_text())
    assert all(row["chosen"]["value"] != row["rejected"]["value"] for row in rows)

    config = yaml.safe_load((EXAMPLE / "train.yaml").read_text())
    config.update(model_name_or_path=str(smollm2), dataset_dir=str(tmp_path / "pairs"),
                  output_dir=str(tmp_path / "simpo"), max_steps=2, per_device_train_batch_size=1,
                  gradient_accumulation_steps=1, plot_loss=False, simpo_probe_steps=1, simpo_probe_prompts=3,
                  simpo_probe_max_new_tokens=48,
                  simpo_probe_reward_function=f"{EXAMPLE / 'rewards.py'}:concise_answer")  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "simpo-plugin: warning" not in result.stdout + result.stderr
    history = log_history(tmp_path / "simpo")
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2 and all(0 < loss < 20 for loss in losses)
    probes = [entry for entry in history if "probe/length" in entry]
    assert [entry["step"] for entry in probes] == [0, 1, 2] and probes[0]["probe/eos_rate"] > 0  # real answers end

    # SmolLM2 judges itself below (a weak judge, but a real one: its logits over `1` and `2`), with arithmetic checks:
    # the first 4 tasks of the bundled set, as a set of the user's own (all 16 took 75 s of greedy answers on 2
    # cores). The checks are generated here, with the answers, so that the judged evaluation reads both back from
    # the shared answers cache: it changes only how answers are judged.
    arithmetic = tmp_path / "arithmetic.json"
    arithmetic.write_text(json.dumps(load_check_set("arithmetic")[1][:4]))
    evaluate = yaml.safe_load((EXAMPLE / "eval.yaml").read_text())
    evaluate.update(models=[str(smollm2), str(tmp_path / "simpo")], dataset_dir=str(EXAMPLE / "data"), max_samples=6,
                    max_new_tokens=32, output_dir=str(tmp_path / "eval"), checks=[str(arithmetic)],
                    answers_cache=str(tmp_path / "answers"), bootstrap_samples=50,
                    reward_function=f"{EXAMPLE / 'rewards.py'}:concise_answer")  # fmt: skip
    results = evaluate_models(evaluate)
    trained = results[str(tmp_path / "simpo")]
    assert {"length", "eos_rate", "repeat_4", "words", "reward", "win_rate", "lc_win_rate"} <= set(trained)
    assert trained["win_rate_ci"][0] <= trained["win_rate"] <= trained["win_rate_ci"][1]
    assert "| prompt |" in (tmp_path / "eval" / "eval_report.md").read_text()

    answers = {path: path.stat().st_mtime_ns for path in (tmp_path / "answers").glob("*.json")}
    assert len(answers) == 2  # one file per model: its answers and check replies
    evaluate.pop("reward_function")
    evaluate.update(judge_model=str(smollm2), output_dir=str(tmp_path / "judged"))
    results = evaluate_models(evaluate)
    # read back, none generated again
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "answers").glob("*.json")} == answers
    trained, start = results[str(tmp_path / "simpo")], results[str(smollm2)]
    assert 0 <= trained["position_consistency"] <= 1 and 0 < trained["win_rate"] < 100
    assert "lc_win_rate" in trained and start["checks"]["arithmetic"]["score"] >= 0
    judgments = (tmp_path / "judged" / "judgments.jsonl").read_text().splitlines()
    assert len(judgments) == 6 and all(0 < json.loads(j)["p_a_first"] < 1 for j in judgments)
    report = (tmp_path / "judged" / "eval_report.md").read_text()
    assert "## Leaderboard" in report and "## Capability checks" in report and "LLM judge" in report
