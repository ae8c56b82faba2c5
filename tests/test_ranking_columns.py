"""A ranking dataset whose `columns` mapping is missing, or lacks chosen/rejected, is named before any model loads."""

import json
from types import SimpleNamespace

import pytest

from simpo_plugin.errors import SimPOArgumentError


pytestmark = pytest.mark.host  # the host's dataset_info.json reader


def check(tmp_path, entry: dict) -> str | None:
    from simpo_plugin.train.data_checks import check_preference_datasets

    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "prefs.json", **entry}}))
    (tmp_path / "prefs.json").write_text("[]")
    try:
        check_preference_datasets(SimpleNamespace(dataset=["prefs"], eval_dataset=None, dataset_dir=str(tmp_path)))
    except SimPOArgumentError as error:
        assert "\n" not in str(error)
        return str(error)
    return None


ALPACA = '"columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}'
SHAREGPT = '"columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}'


@pytest.mark.parametrize(("formatting", "shown"), [("alpaca", ALPACA), ("sharegpt", SHAREGPT)])
def test_no_columns_mapping_says_so_and_shows_the_entry_to_add(tmp_path, formatting, shown) -> None:
    message = check(tmp_path, {"ranking": True, "formatting": formatting})
    info = tmp_path / "dataset_info.json"
    assert message == (
        f"Dataset `prefs` (from `dataset`, a ranking {formatting} dataset in {info}) has no `columns` mapping, so the "
        f"host cannot find its chosen and rejected answers. Add to its entry, naming the data file's own columns: "
        f"{shown}"
    )
    assert "None" not in message


def test_a_mapping_without_rejected_names_only_that_column(tmp_path) -> None:
    columns = {"prompt": "question", "chosen": "good"}
    message = check(tmp_path, {"ranking": True, "columns": columns})
    assert message.endswith(
        ': its `columns` mapping {"prompt": "question", "chosen": "good"} names no `rejected` column. Add "rejected": '
        '"rejected" (the data file\'s own column names), e.g. "columns": {"prompt": "question", "query": "input", '
        '"chosen": "good", "rejected": "rejected"}'
    )


def test_a_sharegpt_mapping_without_chosen_and_a_full_mapping(tmp_path) -> None:
    columns = {"messages": "conversations", "rejected": "rejected"}
    message = check(tmp_path, {"ranking": True, "formatting": "sharegpt", "columns": columns})
    assert 'names no `chosen` column. Add "chosen": "chosen"' in message
    full = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    assert check(tmp_path, {"ranking": True, "columns": full}) is None
