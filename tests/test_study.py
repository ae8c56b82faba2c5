"""The length study (benchmarks/study_length.py): its task and judge, and its quick mode end to end."""

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from conftest import cli_env, run_command


STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "study_length.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study() -> ModuleType:
    """The benchmark script imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("study_length", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_judge_scores_content_and_reports_length_separately(study) -> None:
    assert study.judge("river", "river helpful clear kind.") == study.Verdict(True, 3, True)
    assert study.judge("river", "river helpful clear kind careful friendly precise.").correct  # length is not judged
    assert not study.judge("river", "river helpful rude.").correct  # one unhelpful word
    assert not study.judge("river", "ocean helpful clear.").correct  # wrong topic
    assert not study.judge("river", "river.").correct  # no content
    assert not study.judge("river", "river helpful clear", terminated=False).correct  # ran past the token budget


def test_conditions_tie_length_to_the_label_and_the_judge_agrees_with_the_labels(study) -> None:
    """The data says what docs/study.md says: chosen are correct, rejected wrong, lengths per condition."""
    for condition, (chosen_words, rejected_words) in study.CONDITIONS.items():
        for row in study.pair_rows(200, condition, seed=1):
            topic = study.topic_of(row["instruction"])
            chosen, rejected = study.judge(topic, row["chosen"]), study.judge(topic, row["rejected"])
            assert chosen.correct and not rejected.correct
            assert chosen_words[0] <= chosen.words <= chosen_words[1], (condition, row)
            assert rejected_words[0] <= rejected.words <= rejected_words[1], (condition, row)
    words = study.chain(random.Random(0), study.GOOD, 12)
    assert words[0] == study.GOOD[0] and len(words) == 12


@pytest.mark.slow
def test_quick_study_end_to_end(study, tmp_path, capsys) -> None:
    """`--quick` trains SFT, SimPO and SimPO w/o LN with the real CLI and writes a finite table, JSON and plot.

    The script's `main` runs here; its `llamafactory-cli train` runs are real processes, forked from the tests'
    fork server (conftest.run_command) instead of paying the imports three times."""

    def forked(argv: list[str], cwd: Path, **_: object) -> subprocess.CompletedProcess:
        return run_command(argv, Path(cwd), cli_env())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study, "subprocess", SimpleNamespace(run=forked))
        assert study.main(["--quick", "--out", str(tmp_path)]) == 0
    assert f"results.json, table.md and study_length.png in {tmp_path}" in capsys.readouterr().out

    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {"sft", "simpo", "simpo-sum"}
    for row in rows.values():
        numbers = [value for value in row.values() if isinstance(value, float)]
        assert numbers and all(math.isfinite(value) for value in numbers), row
    assert (tmp_path / "study_length.png").read_bytes()[:8] == PNG_MAGIC
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    assert "| SimPO |" in table and "| SimPO w/o LN |" in table

    simpo, summed, sft = rows["simpo"], rows["simpo-sum"], rows["sft"]
    # The CLI's eval metrics are the rewards that the study recomputes from the saved model, pair by pair.
    for row in (simpo, summed):
        assert row["eval_margin"] == pytest.approx(row["own_margin"], rel=1e-3, abs=1e-3)
        assert row["eval_acc"] == pytest.approx(row["own_acc"], abs=1 / 64)
    # Behaviour: SimPO beats chance on held-out pairs, learns the content SFT got wrong, drops the extra length.
    assert simpo["eval_acc"] > 0.75
    assert sft["judge_acc"] < 0.2 and simpo["judge_acc"] > sft["judge_acc"] + 0.3
    assert simpo["len_ratio"] < sft["len_ratio"]
    # The ablation's reward is length: it ranks these pairs (rejected longer) before any training, by length.
    assert summed["trajectory"][0]["step"] == 0
    assert summed["trajectory"][0]["eval_acc"] > 0.9 > 0.5 > simpo["trajectory"][0]["eval_acc"]
    assert summed["rho_margin_len"] < -0.5
