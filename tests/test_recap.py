"""A run that produced nothing fails or says so last, and every run's last lines recap its warnings (issue 34)."""

import json
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import cli_env, run_command
from pairs_cases import pairs_config, write_prompt_datasets

from simpo_plugin import recap as recap_module
from simpo_plugin.errors import EmptyOutput
from simpo_plugin.evaluation.metrics import Generated
from simpo_plugin.evaluation.outcome import check_answers
from simpo_plugin.pairs.outcome import check_outcome
from simpo_plugin.pairs.report import PairsStats
from simpo_plugin.recap import WarningRecap, recapped


SCRIPT = str(Path(sys.executable).with_name("simpo-plugin"))
JUDGES = Path(__file__).with_name("judge_functions.py")
SETTINGS = SimpleNamespace(max_new_tokens=256, drop_truncated="chosen", min_score_gap=0.0, temperature=0.8,
                           num_samples=2)  # fmt: skip


def last_lines(output: str, count: int) -> list[str]:
    return [line for line in output.splitlines() if line.strip()][-count:]


def test_recap_counts_each_distinct_warning_once_in_order() -> None:
    recap = WarningRecap()
    for message in ("simpo-plugin: warning at step 50: loops", "simpo-plugin pairs: few", "simpo-plugin pairs: few"):
        recap.add(message)
    assert recap.lines() == [
        "simpo-plugin: recap: this run gave 2 warnings (printed above as they came):",
        "simpo-plugin: recap 1/2: warning at step 50: loops",
        "simpo-plugin: recap 2/2 (2 times): few",
    ]
    assert WarningRecap().lines() == []


def test_recapped_collects_the_plugins_warnings_and_only_rank_0_prints(monkeypatch) -> None:
    printed = []
    out = SimpleNamespace(warning=printed.append)
    with recapped(out) as recap:
        logging.getLogger("llamafactory.simpo.eval").warning("simpo-plugin: warning: cut")
        logging.getLogger("elsewhere").warning("not ours")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            ours = str(Path(recap_module.__file__).with_name("pairs") / "args.py")  # as `keep_truncated` warns
            warnings.warn_explicit("`keep_truncated` is deprecated", FutureWarning, ours, 1)
            warnings.warn_explicit("the host's own", UserWarning, "/elsewhere/x.py", 1)
    assert list(recap.counts) == ["warning: cut", "FutureWarning: `keep_truncated` is deprecated"]
    assert len(printed) == 3 and printed[2] == "simpo-plugin: recap 2/2: FutureWarning: `keep_truncated` is deprecated"
    monkeypatch.setenv("RANK", "1")
    printed.clear()
    with recapped(out):
        logging.getLogger("llamafactory.simpo").warning("on rank 1")
    assert printed == []


def stats(kept: int, drops: dict[str, int], samples: int, truncated: int) -> PairsStats:
    result = PairsStats(prompts=kept + sum(drops.values()), samples=samples, truncated_samples=truncated)
    result.drops, result.gaps = Counter(drops), [1.0] * kept
    result.chosen_tokens, result.rejected_tokens = [5] * kept, [5] * kept
    return result


def test_no_pair_kept_is_an_error_with_the_breakdown_and_the_keys() -> None:
    with pytest.raises(EmptyOutput) as error:
        check_outcome(stats(0, {"truncated": 46, "tie": 2}, 96, 96), SETTINGS, "out/pairs_report.md")
    message = str(error.value)
    assert message == ("no pairs kept from 48 prompts (96 samples): nothing to train on. All 96 samples ran into "
                       "`max_new_tokens: 256`. Dropped: tie 2 (best and worst scores equal: raise `num_samples` or "
                       "`temperature`); truncated 46 (the chosen sample ran into `max_new_tokens: 256`: raise "
                       "`max_new_tokens`, or keep such pairs with `drop_truncated: none`). Written, with every sample "
                       "and its score: out/pairs_report.md.")  # fmt: skip
    with pytest.raises(EmptyOutput, match=r"identical 3 \(every sample the same text: raise `temperature` \(0.8\)"):
        check_outcome(stats(0, {"identical": 3}, 6, 0), SETTINGS, "out")


def test_a_pairs_run_that_kept_few_or_cut_most_samples_warns_with_counts() -> None:
    few = check_outcome(stats(2, {"tie": 6}, 16, 0), SETTINGS, "out")
    assert few == ("only 2 of 8 prompts kept a pair; dropped: tie 6 (best and worst scores equal: raise "
                   "`num_samples` or `temperature`).")  # fmt: skip
    cut = check_outcome(stats(8, {}, 16, 12), SETTINGS, "out")
    assert cut.startswith("12 of 16 samples ran into `max_new_tokens: 256`: raise `max_new_tokens`")
    assert check_outcome(stats(8, {"tie": 1}, 16, 2), SETTINGS, "out") is None


def answers(texts: list[str], ended: bool = True) -> list[list[Generated]]:
    return [[Generated(text, len(text.split()), ended)] for text in texts]


def test_eval_answers_all_empty_fail_all_cut_or_mostly_empty_warn() -> None:
    with pytest.raises(EmptyOutput, match=r"all 3 answers of `b` are empty \(generated; check `template`"):
        check_answers({"a": answers(["x", "y", "z"]), "b": answers(["", " ", ""])}, {"a", "b"}, 64, "o")
    found = check_answers({"a": answers(["x y"] * 48, ended=False), "b": answers(["", "", "x", "y"])}, {"a"}, 256, "o")
    assert found == [
        "all 48 answers of `a` ran into `max_new_tokens: 256` (none ended by itself): the leaderboard compares "
        "cut-off answers. Raise `max_new_tokens`.",
        "2 are empty (check `template`) of the 4 answers of `b`: its win rates rest on answers that say little.",
    ]
    assert check_answers({"a": answers(["x", "y"]), "b": answers(["x", "y"], ended=False)}, {"a"}, 8, "o") == []


def test_each_guarded_callback_has_a_class_of_its_own() -> None:
    from transformers import TrainerCallback

    from simpo_plugin.train.optional import GuardedCallback, guard

    class Probe(TrainerCallback):
        pass

    class Monitor(TrainerCallback):
        pass

    first, second, again = guard(Probe(), "p", "f"), guard(Monitor(), "m", "f"), guard(Probe(), "p", "f")
    assert type(first).__name__ == "GuardedProbe" and type(second).__name__ == "GuardedMonitor"
    assert type(first) is type(again) and type(first) is not type(second) and isinstance(second, GuardedCallback)


def write_outputs(path: Path, instructions: list[str], texts: list[str]) -> str:
    path.write_text(json.dumps([{"instruction": i, "output": t} for i, t in zip(instructions, texts, strict=True)]))
    return str(path)


@pytest.mark.host
def test_eval_of_empty_answers_exits_non_zero_and_mostly_empty_ends_with_the_recap(tmp_path) -> None:
    instructions = [f"Question {i}?" for i in range(8)]
    base = write_outputs(tmp_path / "base.json", instructions, [f"answer {i} in words" for i in range(8)])
    empty = write_outputs(tmp_path / "empty.json", instructions, [""] * 8)
    sparse = write_outputs(tmp_path / "sparse.json", instructions, ["", "", "", "", "", "a", "b", "c"])

    def run(name: str, outputs: str, folder: str):
        config = {"models": [{"name": "base", "outputs": base}, {"name": name, "outputs": outputs}],
                  "output_dir": str(tmp_path / folder), "judge_function": f"{JUDGES}:length_and_quality",
                  "bootstrap_samples": 20}  # fmt: skip
        (tmp_path / f"{folder}.yaml").write_text(json.dumps(config))
        return run_command([SCRIPT, "eval", str(tmp_path / f"{folder}.yaml")], tmp_path, cli_env())

    failed = run("empty", empty, "e")
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "simpo-plugin eval: error: all 8 answers of `empty` are empty (read from its outputs file; check the "
            "file): the leaderboard compares nothing."
        )
    )
    assert (tmp_path / "e" / "eval_generations.jsonl").is_file()
    warned = run("sparse", sparse, "s")
    assert warned.returncode == 0, warned.stderr[-2000:]
    last = last_lines(warned.stdout, 2)
    assert "simpo-plugin: recap: this run gave 1 warning (printed above as they came):" in last[0], last
    assert "simpo-plugin: recap 1/1: warning: 5 are empty (check `template`) of the 8 answers of `sparse`" in last[1]


@pytest.mark.host
def test_pairs_of_cut_off_samples_end_with_the_recap_and_none_kept_is_an_error(tiny_assets, tmp_path) -> None:
    from simpo_plugin.pairs import build_pairs

    prompts = write_prompt_datasets(tmp_path / "prompts")
    config = pairs_config(tiny_assets["model"], prompts, tmp_path / "cut", max_samples=4)
    (tmp_path / "pairs.yaml").write_text(json.dumps(config))
    result = run_command([SCRIPT, "pairs", str(tmp_path / "pairs.yaml")], tmp_path, cli_env())
    assert result.returncode == 0, result.stderr[-2000:]
    last = last_lines(result.stdout, 3)  # the random model never stops: every sample runs into max_new_tokens
    assert "Train on them with" in last[0] and "recap: this run gave 1 warning" in last[1], last
    assert "simpo-plugin: recap 1/1: all " in last[2] and "samples ran into `max_new_tokens: 12`" in last[2]
    with pytest.raises(EmptyOutput, match=r"^no pairs kept from \d+ prompts .* Dropped: truncated \d+ \(the chosen"):
        build_pairs(dict(config, output_dir=str(tmp_path / "none"), drop_truncated="chosen"))
    assert json.loads((tmp_path / "none" / "pairs.json").read_text()) == []
