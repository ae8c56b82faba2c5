"""Bad preference data is reported before training with dataset name and row index; nothing breaks on odd text."""

import json
import logging

import pytest
from conftest import base_config, run_cli
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpo_plugin.errors import SimPOArgumentError
from simpo_plugin.train.data_checks import check_rows, drop_empty_responses, pair_problem


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


def converted(prompt="hi", chosen="good", rejected="bad") -> dict:
    """A row as the host's converter emits it."""
    text = lambda v: {"role": "assistant", "content": v}  # noqa: E731
    return {"_prompt": [{"role": "user", "content": prompt}], "_response": [text(chosen), text(rejected)]}


def test_pair_problems_are_named() -> None:
    assert pair_problem(converted()) is None
    assert pair_problem(converted(chosen="")) is None  # empty text is text: its EOS is still scored
    assert "null" in pair_problem(converted(chosen=None))
    assert "missing" in pair_problem({"_prompt": [{"role": "user", "content": "x"}], "_response": []})
    assert "prompt" in pair_problem({**converted(), "_prompt": []})


def test_malformed_rows_raise_with_indices_and_identical_pairs_warn(caplog: pytest.LogCaptureFixture) -> None:
    rows = [converted(), converted(chosen=None), converted(), {"_prompt": [], "_response": []}]
    with pytest.raises(SimPOArgumentError, match=r"Dataset `x`: 2 of 4 rows .*\(row 1\).*\(row 3\)"):
        check_rows("x", rows)
    with caplog.at_level(logging.WARNING):
        assert check_rows("x", [converted(), converted(chosen="same", rejected="same")]) == (2, 1, 0)
    assert "1 of 2 pairs have chosen == rejected" in caplog.text


def test_blank_responses_are_counted_with_their_rows_and_all_blank_is_an_error(caplog) -> None:
    blank = {1: dict(chosen=""), 4: dict(rejected=" \n\t"), 6: dict(chosen="", rejected=""), 7: dict(chosen="\u3000"),
             8: dict(rejected=""), 9: dict(chosen=" ")}  # fmt: skip
    rows = [converted(**blank.get(index, {})) for index in range(12)]
    with caplog.at_level(logging.WARNING):
        assert check_rows("prefs", rows) == (12, 0, 6)
    assert ("Dataset `prefs`: 6 of 12 pairs have an empty (or whitespace-only) chosen or rejected response "
            "(rows 1, 4, 6, 7, 8, ... (1 more)); they are dropped") in caplog.text  # fmt: skip
    assert "chosen == rejected" not in caplog.text  # two empty responses are blank, not identical
    with pytest.raises(SimPOArgumentError, match=r"Dataset `prefs`: all 2 pairs have an empty .* \(rows 0, 1\)"):
        check_rows("prefs", [converted(chosen=""), converted(rejected=" ")])


def test_pairs_with_an_empty_response_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    dataset = Dataset.from_dict(
        {
            "chosen_labels": [[-100, 5], [-100, -100], [-100, 7]],
            "rejected_labels": [[-100, 6], [-100, 3], [-100, -100]],
        }
    )
    with caplog.at_level(logging.INFO, logger="llamafactory.simpo"):
        kept = drop_empty_responses(dataset, "train", cutoff_len=2)
    assert len(kept) == 1 and kept[0]["chosen_labels"] == [-100, 5]
    assert "1 pairs used, 2 dropped: a response is empty after truncation to cutoff_len=2" in caplog.text


def _register(tmp_path, name: str, rows: list) -> str:
    (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    info = {name: {"file_name": f"{name}.json", "ranking": True, "columns": columns}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return str(tmp_path)


def test_null_field_is_reported_with_its_row_before_training(tiny_assets, tmp_path) -> None:
    rows = [{"instruction": "q", "input": "", "chosen": "a b", "rejected": "c"} for _ in range(6)]
    rows[3]["chosen"] = None
    config = base_config(tiny_assets, tmp_path / "o", dataset="nulls", dataset_dir=_register(tmp_path, "nulls", rows),
                         eval_dataset=None, do_eval=False)  # fmt: skip
    result = run_cli(config, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
    assert "Dataset `nulls`: 1 of 6 rows" in errors[0] and "(row 3)" in errors[0]
    assert "Traceback" not in result.stderr


def test_blank_responses_are_dropped_before_the_model_loads(tiny_assets, tmp_path) -> None:
    """Trained through the real CLI: the warning names dataset, count and rows, and exactly those pairs are gone."""
    rows = [{"instruction": f"q{i}", "input": "", "chosen": f"a{i} b", "rejected": f"c{i}"} for i in range(10)]
    rows[2]["chosen"], rows[5]["rejected"], rows[9]["rejected"] = "", "   ", "\n"
    data_dir = _register(tmp_path, "blanks", rows)
    config = base_config(tiny_assets, tmp_path / "o", dataset="blanks", dataset_dir=data_dir, eval_dataset=None,
                         do_eval=False, max_steps=1, per_device_train_batch_size=7)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout  # the host's log lines
    warning = "Dataset `blanks`: 3 of 10 pairs have an empty (or whitespace-only) chosen or rejected response"
    warning += " (rows 2, 5, 9)"
    assert output.count(warning) == 2  # when it happened, and once more in the run's recap
    assert output.index(warning) < output.index("SimPO train data: 7 pairs used") < output.index("trainable params")


def test_data_of_blank_responses_only_is_an_error_before_the_model_loads(tiny_assets, tmp_path) -> None:
    rows = [{"instruction": "q", "input": "", "chosen": "", "rejected": "c"} for _ in range(3)]
    data_dir = _register(tmp_path, "blanks", rows)
    config = base_config(tiny_assets, tmp_path / "o", dataset="blanks", dataset_dir=data_dir, eval_dataset=None,
                         do_eval=False)  # fmt: skip
    result = run_cli(config, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
    assert "Dataset `blanks`: all 3 pairs have an empty (or whitespace-only) chosen or rejected response" in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_cutoff_that_empties_every_response_is_an_error(tiny_assets, tmp_path) -> None:
    config = base_config(tiny_assets, tmp_path / "o", cutoff_len=2, eval_dataset=None, do_eval=False)
    result = run_cli(config, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        "0 pairs used, 256 dropped: a response is empty after truncation to cutoff_len=2"
        in result.stdout + result.stderr
    )
    assert "simpo-plugin: error: No training pairs left" in result.stderr


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=text.filter(bool), chosen=text, rejected=text, cutoff=st.integers(4, 64))
def test_any_text_tokenizes_into_scoreable_pairs(tiny_assets, prompt, chosen, rejected, cutoff) -> None:
    """Random unicode, empty and long strings go through the host's template and pairwise encoding: the pair is
    valid for the checks, fits `cutoff_len`, and each kept response is scored on exactly its label tokens."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.processor import PairwiseDatasetProcessor
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    from simpo_plugin.lean.layout import packed_layout, padded_layout

    assert pair_problem(converted(prompt, chosen, rejected)) is None
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    data_args = DataArguments(template="default", cutoff_len=cutoff)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    processor = PairwiseDatasetProcessor(template=template, tokenizer=tokenizer, processor=None, data_args=data_args)
    row = converted(prompt, chosen, rejected)
    batch = {k: [v] for k, v in {**row, "_system": "", "_tools": "", "_images": None, "_videos": None,
                                 "_audios": None}.items()}  # fmt: skip
    encoded = processor.preprocess_dataset(batch)
    import torch

    ids = [encoded["chosen_input_ids"][0], encoded["rejected_input_ids"][0]]
    labels = [encoded["chosen_labels"][0], encoded["rejected_labels"][0]]
    assert all(len(x) <= cutoff for x in ids)
    width = max(map(len, ids))
    pad = lambda x, v: x + [v] * (width - len(x))  # noqa: E731
    tensors = {
        "input_ids": torch.tensor([pad(x, 0) for x in ids]),
        "attention_mask": torch.tensor([pad([1] * len(x), 0) for x in ids]),
        "labels": torch.tensor([pad(x, -100) for x in labels]),
    }
    expected = padded_layout(**tensors).lengths()
    assert torch.equal(packed_layout(**tensors).lengths(), expected)
    assert expected.tolist() == [sum(1 for t in x[1:] if t != -100) for x in labels]


def _sharegpt(tmp_path, name: str, rows: list) -> str:
    (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    info = {name: {"file_name": f"{name}.json", "formatting": "sharegpt", "ranking": True, "columns": columns}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return str(tmp_path)


def full_chats(n: int = 12) -> list[dict]:
    """Sharegpt ranking rows whose `conversations` wrongly include the final answer (even turns); every 4th is fine."""
    rows = []
    for i in range(n):
        turns = [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": "hello"},
                 {"from": "human", "value": "a joke?"}, {"from": "gpt", "value": "no"}]  # fmt: skip
        rows.append(
            {
                "conversations": turns if i % 4 != 3 else turns[:3],
                "chosen": {"from": "gpt", "value": "a good joke"},
                "rejected": {"from": "gpt", "value": "no"},
            }
        )
    return rows


def test_the_hosts_reason_is_named_once_per_dataset_without_a_flood(tiny_assets, tmp_path) -> None:
    """Even turn counts and a role tag out of place: each cause once, with its rows, and none of the host's per-row
    warnings on the console."""
    rows = full_chats()
    rows[3]["conversations"][1]["from"] = "human"  # a valid count, but two user turns in a row
    config = base_config(tiny_assets, tmp_path / "o", dataset="chats", dataset_dir=_sharegpt(tmp_path, "chats", rows),
                         eval_dataset=None, do_eval=False)  # fmt: skip
    result = run_cli(config, tmp_path)
    log = result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: error:")]
    assert result.returncode != 0 and len(errors) == 1, log[-2000:]
    assert "Dataset `chats`: 10 of 12 rows are not usable preference pairs." in errors[0]
    assert "the conversation has an even number of turns" in errors[0] and "(9 rows: 0, 1, 2, 4, 5, " in errors[0]
    assert "a turn's role is not the one expected at its place" in errors[0] and "(row 3)" in errors[0]
    assert "Invalid message count" not in log and "Invalid role tag" not in log and "Traceback" not in log


def test_pairs_names_the_same_cause(tiny_assets, tmp_path) -> None:
    """What `simpo-plugin pairs|eval` read: the same cause for the same rows."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    from simpo_plugin.pairs.args import parse_pairs_args
    from simpo_plugin.sampling import load_prompts

    config = {"model_name_or_path": str(tiny_assets["model"]), "dataset": "chats", "template": "default",
              "dataset_dir": _sharegpt(tmp_path, "chats", full_chats(4)), "reward_function": "os:getcwd",
              "output_dir": str(tmp_path / "pairs")}  # fmt: skip
    _, model_args, data_args = parse_pairs_args(config)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    prompts = load_prompts(model_args, data_args, get_template_and_fix_tokenizer(tokenizer, data_args), tokenizer)
    assert len(prompts.prompts) == 1 and len(prompts.unusable) == 3
    assert all("the conversation has an even number of turns" in line for line in prompts.unusable)


LONG_PROMPT = "Tell me everything about " + " and ".join(f"the topic number {i}" for i in range(30)) + "."


def _last_lines(output: str, count: int) -> list[str]:
    return [line for line in output.splitlines() if line.strip()][-count:]


def test_cutoff_that_cuts_every_prompt_before_its_answer_is_an_error(tiny_assets, tmp_path) -> None:
    """Short responses survive `cutoff_len` (the host keeps them first), but no prompt keeps its assistant header:
    today this trained without a word; it fails before the model loads, naming cutoff_len and the longest prompt."""
    rows = [{"instruction": f"{LONG_PROMPT} {i}", "input": "", "chosen": "a b", "rejected": "c"} for i in range(8)]
    config = base_config(tiny_assets, tmp_path / "o", dataset="long", dataset_dir=_register(tmp_path, "long", rows),
                         eval_dataset=None, do_eval=False, cutoff_len=32)  # fmt: skip
    result = run_cli(config, tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("simpo-plugin: error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
    assert "`cutoff_len: 32` cuts the prompt of all 8 training pairs before its assistant header" in errors[0]
    assert "the longest prompt is " in errors[0] and "Raise `cutoff_len` above " in errors[0]
    assert "Traceback" not in result.stderr and "trainable params" not in result.stdout


def test_most_prompts_cut_warn_and_the_run_ends_with_its_warnings_recap(tiny_assets, tmp_path) -> None:
    """Most (not all) prompts cut: a counted warning. The run's last lines recap each warning once (also the setup
    hint, printed long before), and no transformers warning names our GuardedCallback ("already one")."""
    rows = [{"instruction": f"{LONG_PROMPT} {i}" if i % 4 else f"q{i}", "input": "", "chosen": "a b", "rejected": "c"}
            for i in range(8)]  # fmt: skip
    config = base_config(tiny_assets, tmp_path / "o", dataset="mixed", dataset_dir=_register(tmp_path, "mixed", rows),
                         eval_dataset=None, do_eval=False, cutoff_len=32, max_steps=2, per_device_train_batch_size=4,
                         simpo_probe_prompts=2)  # fmt: skip
    result = run_cli(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warning = "`cutoff_len: 32` cuts the prompt of 6 of 8 training pairs before its assistant header"
    assert output.count(warning) == 2  # when it happened, and in the recap
    assert "already one" not in output and "GuardedCallback" not in output
    last = _last_lines(result.stdout, 3)
    assert "simpo-plugin: recap: this run gave 2 warnings (printed above as they came):" in last[0], last
    assert "simpo-plugin: recap 1/2: " in last[1] and warning in last[1]
    assert "simpo-plugin: recap 2/2: hint: effective batch 4" in last[2]
    assert all(line.startswith("[WARNING|") and "llamafactory.simpo" in line for line in last)
