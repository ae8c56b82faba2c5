"""Judges, precomputed answers, capability checks and the eval report, on hand-made answers with known outcomes."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from simpo_plugin.errors import PairsConfigError
from simpo_plugin.evaluation import evaluate_models
from simpo_plugin.evaluation.checks import dropped, load_check_set, passes, score
from simpo_plugin.evaluation.judges import Judgment, LLMJudge, position_consistency
from simpo_plugin.sampling.prompts import Prompt


JUDGES = Path(__file__).with_name("judge_functions.py")
FILLER = " Moreover, it is worth saying again that this answer is thorough."


class VerdictTokenizer:
    pad_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) % 50 + 1 for c in text]


class EchoTemplate:
    def encode_oneturn(self, tokenizer, messages, system, tools):
        return tokenizer.encode(messages[0]["content"]), []


class FirstSlotModel(torch.nn.Module):
    """A judge that always answers `1`: prefers whichever answer it is shown first."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids):
        logits = torch.zeros(*input_ids.shape, 64)
        logits[..., ord("1") % 50 + 1] = 4.0
        return type("Out", (), {"logits": logits})


def prompt(text: str) -> Prompt:
    return Prompt(text, [{"role": "user", "content": text}], "", "", [], "t")


def test_a_judge_that_prefers_the_first_slot_is_cancelled_by_both_orders() -> None:
    judge = LLMJudge(FirstSlotModel(), VerdictTokenizer(), EchoTemplate(), batch_size=3)
    judged = judge.judge([(prompt(f"q{i}"), "short", "a much longer answer") for i in range(7)])
    assert all(j.p_a == pytest.approx(0.5) for j in judged)
    first = 1 / (1 + math.exp(-4.0))
    assert all(j.p_a_first == pytest.approx(first, abs=1e-6) and j.p_a_second == pytest.approx(1 - first, abs=1e-6)
               for j in judged)  # fmt: skip
    assert position_consistency(judged) == 0.0
    assert position_consistency([Judgment(0.7, 0.8, 0.6), Judgment(0.4, 0.6, 0.2)]) == 0.5
    assert position_consistency([Judgment(0.7)]) is None


def write_outputs(path: Path, instructions: list[str], answers: list[str], generator: str) -> str:
    rows = [
        {"instruction": i, "output": a, "generator": generator} for i, a in zip(instructions, answers, strict=True)
    ]
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    instructions = [f"Question {i}: explain topic {i}." for i in range(60)]
    base = [" ".join(["word"] * int(rng.integers(10, 80))) for _ in instructions]
    longer = [a + FILLER * int(rng.integers(1, 8)) for a in base]  # filler of varying length
    os.environ["JUDGE_LENGTH_SD"] = str(np.std([len(b) - len(a) for a, b in zip(base, longer, strict=True)], ddof=1))
    return {
        "root": root,
        "instructions": instructions,
        "base": write_outputs(root / "base.json", instructions, base, "base"),
        "longer": write_outputs(root / "longer.json", instructions, longer, "longer"),
        "added": np.mean([len(b) - len(a) for a, b in zip(base, longer, strict=True)]),
        "better": write_outputs(root / "better.json", instructions, [a + " [good]" for a in base], "better"),
    }


def eval_config(outputs: dict, out: Path, models: list, **overrides) -> dict:
    config = {"models": models, "output_dir": str(out), "judge_function": f"{JUDGES}:length_and_quality",
              "bootstrap_samples": 50}  # fmt: skip
    config.update(overrides)
    return config


def test_outputs_only_the_longer_model_wins_raw_but_not_length_controlled(outputs, tmp_path) -> None:
    models = [{"name": "base", "outputs": outputs["base"]}, {"name": "longer", "outputs": outputs["longer"]}]
    results = evaluate_models(eval_config(outputs, tmp_path, models))
    longer = results["longer"]
    assert longer["win_rate"] >= 80 and longer["lc_win_rate"] == pytest.approx(50, abs=5)
    assert longer["win_rate_ci"][0] < longer["win_rate"] < longer["win_rate_ci"][1]
    assert longer["lc_win_rate_ci"][0] <= longer["lc_win_rate"] <= longer["lc_win_rate_ci"][1]
    assert results["base"]["win_rate"] == 50 and results["base"]["baseline"] is True
    assert longer["chars"] == pytest.approx(results["base"]["chars"] + outputs["added"])
    assert "length" not in longer  # no tokenizer anywhere: tokens are not guessed
    judgments = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 60 and {j["model_a"] for j in judgments} == {"longer"}
    assert np.mean([j["p_a"] for j in judgments]) * 100 == pytest.approx(longer["win_rate"])
    report = (tmp_path / "eval_report.md").read_text()
    assert "## Leaderboard" in report and "| `longer` |" in report and "judgments/s" in report
    assert longer["lc_extrapolated"] and "`longer`: every answer is longer (or every one shorter)" in report
    assert (tmp_path / "eval_win_rates.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "eval_results.json").read_text())["longer"]["win_rate"] == longer["win_rate"]


def test_the_console_line_prints_what_the_report_prints(outputs, tmp_path, monkeypatch) -> None:
    """One source for each number: `lc_win_rate_stderr=0` on the console beside [3.8, 100] in the report was two."""
    from simpo_plugin.evaluation import evaluate

    printed: list[str] = []
    monkeypatch.setattr(evaluate.logger, "info_rank0", printed.append)
    models = [{"name": "base", "outputs": outputs["base"]}, {"name": "longer", "outputs": outputs["longer"]}]
    results = evaluate_models(eval_config(outputs, tmp_path, models, judge_function=f"{JUDGES}:longer_wins"))
    longer = results["longer"]
    line = next(text for text in printed if text.startswith("`longer`: "))
    lc = f"{longer['lc_win_rate']:.1f} [{longer['lc_win_rate_ci'][0]:.1f}, {longer['lc_win_rate_ci'][1]:.1f}]"
    raw = f"{longer['win_rate']:.1f} [{longer['win_rate_ci'][0]:.1f}, {longer['win_rate_ci'][1]:.1f}]"
    assert f"LC win rate {lc}; win rate {raw}; " in line and "stderr" not in line and "\n" not in line
    report = (tmp_path / "eval_report.md").read_text()
    row = next(text for text in report.splitlines() if text.startswith("| `longer` |"))
    assert f"| {lc} | {raw} |" in row  # the leaderboard's cells, character for character
    health = next(text for text in report.splitlines() if text.startswith("| `longer` | ") and text != row)
    assert f"mean length (chars) {health.split(' | ')[1]}" in line
    assert next(text for text in printed if text.startswith("`base` (baseline): "))


def test_three_models_pairwise_with_style_scores_and_another_baseline(outputs, tmp_path) -> None:
    models = [{"name": n, "outputs": outputs[n]} for n in ("longer", "base", "better")]
    results = evaluate_models(eval_config(outputs, tmp_path, models, baseline="base", pairwise=True))
    assert results["base"]["baseline"] and results["better"]["lc_win_rate"] > 65
    # Style control removes part of a length taste shaped unlike its features (the exact case: test_winrate.py).
    assert results["longer"]["style_score"] < results["longer"]["win_rate"] - 3
    assert results["better"]["style_score"] == pytest.approx(results["better"]["lc_win_rate"], abs=5)
    table = {name: results[name]["pairwise"] for name in results}
    assert table["better"]["longer"] == pytest.approx(100 - table["longer"]["better"])
    assert table["longer"]["base"] == pytest.approx(results["longer"]["win_rate"])
    judged = {(j["model_a"], j["model_b"]) for j in map(json.loads, (tmp_path / "judgments.jsonl").open())}
    assert judged == {("longer", "base"), ("longer", "better"), ("base", "better")}
    assert "## Pairwise win rates" in (tmp_path / "eval_report.md").read_text()


def test_a_reward_function_that_raises_is_one_line_and_exit_status_2(outputs, tmp_path, capsys) -> None:
    import yaml

    from simpo_plugin.cli import main

    rewards = Path(__file__).with_name("pairs_rewards.py")
    models = [{"name": "base", "outputs": outputs["base"]}, {"name": "longer", "outputs": outputs["longer"]}]
    config = eval_config(outputs, tmp_path / "out", models, reward_function=f"{rewards}:raises")
    config.pop("judge_function")
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    assert main(["eval", str(tmp_path / "eval.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"simpo-plugin eval: error: `reward_function: {rewards}:raises` failed on prompt outputs#0: "
        "ValueError('the reward service is down'); fix the function and run again (the finished samples and "
        f"answers are kept). (config: {tmp_path / 'eval.yaml'})"
    )
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "`longer` has no answer to instruction 59 ('Question 59: explain topic 59.')"),
        ("extra", "`longer` answers 1 instruction(s) the others do not, the first 'Something else'"),
        ("baseline", "`baseline: nobody` is not one of the models (base, longer)"),
        ("two_judges", "Give one judge, not `judge_function` and `reward_function`"),
        ("bad_entry", "`models` entry 1 ({'name': 'longer'}): give a model path"),
        ("no_output", "row 0 has no string `output`"),
        (
            "raises",
            "The judge `{judges}:raises` failed on instruction 0: RuntimeError(\"the judge's service",
        ),
        (
            "text",
            "The judge `{judges}:text` must return a probability in [0, 1] (a number), got '0.7'",
        ),
        ("bootstrap_samples", "`bootstrap_samples` must be an integer, got 'abc'"),
        ("pairwise", "`pairwise` must be true or false, got 'maybe'"),
        ("both", "gives both `outputs` and `path`; keep one"),
        # alpaca_eval#453: the new file repeats an instruction the baseline answers once; name the repeat, not a
        # missing answer
        (
            "repeated",
            "`longer`'s outputs file {path} repeats the instruction 'Question 3: explain topic 3.' at rows 3, 60",
        ),
        (
            "repeated_baseline",
            "`base`'s outputs file {base} repeats the instruction 'Question 0: explain topic 0.' at rows "
            "0, 60 (1 more instruction(s) repeated too); answers are matched by instruction, so keep one row per",
        ),
    ],
)
def test_bad_eval_inputs_are_one_line(outputs, tmp_path, change, message) -> None:
    rows = json.loads(Path(outputs["longer"]).read_text())
    overrides: dict = {}
    if change == "missing":
        rows = rows[:-1]
    elif change == "extra":
        rows.append({"instruction": "Something else", "output": "x"})
    elif change == "no_output":
        rows[0].pop("output")
    elif change == "repeated":
        rows.append(dict(rows[3]))
    elif change == "repeated_baseline":
        base = json.loads(Path(outputs["base"]).read_text())
        (tmp_path / "base.json").write_text(json.dumps(base + [base[0], base[5]]))
        overrides["baseline"] = "base"
    elif change == "baseline":
        overrides["baseline"] = "nobody"
    elif change == "two_judges":
        overrides["reward_function"] = f"{JUDGES}:length_and_quality"
    elif change in ("raises", "text"):
        overrides["judge_function"] = f"{JUDGES}:{change}"
    elif change == "bootstrap_samples":
        overrides["bootstrap_samples"] = "abc"
    elif change == "pairwise":
        overrides["pairwise"] = "maybe"
    path = tmp_path / "longer.json"
    path.write_text(json.dumps(rows))
    second = {"name": "longer"} if change == "bad_entry" else {"name": "longer", "outputs": str(path)}
    if change == "both":
        second["path"] = "models/x"
    base = str(tmp_path / "base.json") if change == "repeated_baseline" else outputs["base"]
    models = [{"name": "base", "outputs": base}, second]
    with pytest.raises(PairsConfigError) as error:
        evaluate_models(eval_config(outputs, tmp_path / "out", models, **overrides))
    expected = message.replace("{judges}", str(JUDGES)).replace("{path}", str(path)).replace("{base}", base)
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("task", "reply", "expected"),
    [
        ({"kind": "exact", "answer": 75}, "He has 23 + 52 = 75 apples.", True),
        ({"kind": "exact", "answer": 75}, "75 apples, no wait, 76.", False),
        ({"kind": "exact", "answer": 1200}, "The answer is 1,200.", True),
        ({"kind": "exact", "answer": "Paris"}, "It is paris.", True),
        ({"kind": "json", "schema": {"name": "string", "moons": "integer"}}, '{"name": "Mars", "moons": 2}', True),
        ({"kind": "json", "schema": {"moons": "integer"}}, '```json\n{"moons": 2}\n```', True),
        ({"kind": "json", "schema": {"moons": "integer"}}, '{"moons": "two"}', False),
        ({"kind": "json", "schema": {"moons": "integer"}}, '{"moons": true}', False),
        ({"kind": "json"}, "{not json}", False),
        ({"kind": "constraint", "max_words": 5}, "one two three four five", True),
        ({"kind": "constraint", "max_words": 5}, "one two three four five six", False),
        ({"kind": "constraint", "format": "bullets", "min_items": 3}, "- a\n- b\n- c", True),
        ({"kind": "constraint", "format": "bullets", "min_items": 3}, "- a\n- b", False),
        ({"kind": "constraint", "format": "lowercase"}, "all quiet here.", True),
        ({"kind": "constraint", "format": "lowercase"}, "Not quiet.", False),
        ({"kind": "constraint", "ends_with": "done"}, "and we are done!", True),
        ({"kind": "constraint", "contains": ["red", "blue"]}, "Red and green.", False),
    ],
)
def test_checks_on_hand_made_answers(task, reply, expected) -> None:
    assert passes({"instruction": "x", **task}, reply) is expected


def test_check_scores_and_drops() -> None:
    name, tasks = load_check_set("arithmetic")
    assert name == "arithmetic" and len(tasks) == 16
    right = [f"The answer is {t['answer']}." for t in tasks]
    wrong = right[:4] + ["I do not know."] * 12
    good, bad = score(tasks, right), score(tasks, wrong)
    assert good["score"] == 100 and bad["score"] == 25 and bad["low"] < 25 < bad["high"]
    change, interval, significant = dropped(good["passed"], bad["passed"])
    assert change == -75 and interval[1] < 0 and significant
    assert not dropped(good["passed"], score(tasks, right[:15] + ["?"])["passed"])[2]  # one task: within noise
    for bundled in ("json_format", "constraints"):
        assert load_check_set(bundled)[1]
    with pytest.raises(PairsConfigError, match="neither a bundled set"):
        load_check_set("no_such_set")


def test_too_few_instructions_for_the_lc_win_rate_say_so(outputs, tmp_path) -> None:
    rows = {name: json.loads(Path(outputs[name]).read_text())[:4] for name in ("base", "longer")}
    models = []
    for name, kept in rows.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(kept))
        models.append({"name": name, "outputs": str(tmp_path / f"{name}.json")})
    results = evaluate_models(eval_config(outputs, tmp_path / "out", models))
    assert "lc_win_rate" not in results["longer"] and "win_rate" in results["longer"]
    assert "needs at least 5 instructions" in results["longer"]["lc_missing"]
    assert "LC win rate: n/a (the LC win rate needs at least 5" in (tmp_path / "out" / "eval_report.md").read_text()


def test_a_function_judge_runs_both_orders_and_the_results_are_strict_json(outputs, tmp_path) -> None:
    """A function that always prefers the first slot: ½ everywhere, consistency 0, whichever way round the pairs
    are listed; no bootstrap: no interval (null in the JSON, n/a in the report), never a one-resample one."""
    models = [{"name": n, "outputs": outputs[n]} for n in ("base", "longer", "better")]
    results = evaluate_models(eval_config(outputs, tmp_path, models, judge_function=f"{JUDGES}:first_slot",
                                          pairwise=True, bootstrap_samples=0))  # fmt: skip
    for name in ("longer", "better"):
        assert results[name]["win_rate"] == 50 and results[name]["position_consistency"] == 0
        assert results[name]["pairwise"] == {other: 50 for other in results if other != name}
    saved = json.loads((tmp_path / "eval_results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["longer"]["win_rate_ci"] == [None, None]
    assert "| `longer` | 50.0 | 50.0 |" in (tmp_path / "eval_report.md").read_text()
