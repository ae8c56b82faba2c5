"""Preference-data checks that run before any model is loaded, and the filter that runs after tokenization.

Raw rows are read through the host's own loader and format converter (so every format and column mapping of
``dataset_info.json`` is honoured); a row the converter could not turn into one prompt and two responses is
exactly a row the host would drop later with a bare "Dropped invalid example" warning.
"""

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from llamafactory.data.parser import get_dataset_list
from llamafactory.extras import logging

from ..data import check_registered, converted_rows
from ..errors import SimPOArgumentError


if TYPE_CHECKING:
    from datasets import Dataset
    from llamafactory.hparams import DataArguments, ModelArguments


logger = logging.get_logger("llamafactory.simpo")
IGNORE_INDEX = -100
SHOWN_ROWS = 5


def check_preference_datasets(data_args: "DataArguments") -> None:
    """Fail before any model is loaded when a configured dataset is not registered (naming the file read and the
    closest names) or is not a ranking (chosen/rejected) dataset."""
    for key in ("dataset", "eval_dataset"):
        names = getattr(data_args, key) or []
        check_registered(names, data_args.dataset_dir, key)
        for name, attr in zip(names, get_dataset_list(names, data_args.dataset_dir), strict=True):
            if not attr.ranking:
                raise SimPOArgumentError(
                    f"Dataset `{name}` (from `{key}`) is not a preference dataset. SimPO trains on chosen/rejected "
                    f'pairs: mark it `"ranking": true` in {data_args.dataset_dir}/dataset_info.json and give it '
                    "chosen and rejected columns (alpaca) or messages (sharegpt)."
                )
            check_ranking_columns(name, key, attr, data_args.dataset_dir)


# the `columns` a ranking dataset needs, per formatting, with the host's usual column names
RANKING_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    "sharegpt": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    "openai": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
}


def check_ranking_columns(name: str, key: str, attr: Any, dataset_dir: str) -> None:
    """A ranking dataset's ``columns`` must name its prompt (or messages), chosen and rejected columns; without them
    the host's converter looks up the column ``None`` and fails with a bare KeyError."""
    wanted = RANKING_COLUMNS.get(attr.formatting, RANKING_COLUMNS["alpaca"])
    missing = [column for column in wanted if column != "query" and getattr(attr, column, None) is None]
    if not missing:
        return
    info = Path(dataset_dir or ".", "dataset_info.json")
    try:
        entry = json.loads(info.read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        entry = None
    given = entry.get("columns") if isinstance(entry, dict) else None
    where = f"Dataset `{name}` (from `{key}`, a ranking {attr.formatting} dataset in {info})"
    if not isinstance(given, dict):
        raise SimPOArgumentError(
            f"{where} has no `columns` mapping, so the host cannot find its chosen and rejected answers. Add to its "
            f'entry, naming the data file\'s own columns: "columns": {json.dumps(wanted)}'
        )
    names = ", ".join(f"`{column}`" for column in missing)
    raise SimPOArgumentError(
        f"{where}: its `columns` mapping {json.dumps(given)} names no {names} column. Add "
        + ", ".join(f'"{column}": "{wanted[column]}"' for column in missing)
        + f' (the data file\'s own column names), e.g. "columns": {json.dumps({**wanted, **given})}'
    )


def _is_text(message: Any) -> bool:
    return isinstance(message, dict) and isinstance(message.get("content"), str)


def pair_problem(row: dict[str, Any]) -> str | None:
    """Why a converted row (``_prompt``, ``_response``) is not a usable preference pair, or None."""
    prompt, responses = row.get("_prompt") or [], row.get("_response") or []
    if len(responses) != 2:
        return "chosen/rejected missing, null or not text"
    if not all(_is_text(message) for message in responses):
        return "chosen/rejected is null or not text"
    if any(message.get("role") != "assistant" for message in responses):
        return "chosen/rejected are not tagged as the assistant's answers (dataset_info.json `tags`: `assistant_tag`)"
    if not prompt or len(prompt) % 2 != 1 or not all(_is_text(message) for message in prompt):
        return "prompt missing, null, not text, or not ending with a user turn"
    return None


def is_blank_pair(row: dict[str, Any]) -> bool:
    """Whether a well-formed converted row's chosen or rejected text is empty or whitespace only."""
    return pair_problem(row) is None and any(not message["content"].strip() for message in row["_response"])


class RowCounts(NamedTuple):
    rows: int
    identical: int  # chosen == rejected: kept, warned about
    blank: int  # an empty or whitespace-only response: dropped from training


def _shown(items: list[str], sep: str = ", ") -> str:
    more = len(items) - SHOWN_ROWS
    return sep.join(items[:SHOWN_ROWS]) + (f"{sep}... ({more} more)" if more > 0 else "")


def check_rows(name: str, rows: Iterable[dict[str, Any]], reasons: dict[int, str] | None = None) -> RowCounts:
    """Raise on malformed rows or a dataset of blank responses only (naming dataset and rows); warn on the rest.

    Args:
        reasons: the host converter's reason for each row it blanked, by index (``simpo_plugin.data.converted_rows``);
            such a row is reported with that reason rather than with what is missing from it.
    """
    bad: dict[str, list[str]] = {}  # reason -> rows
    blank: list[str] = []
    count = identical = 0
    for index, row in enumerate(rows):
        count += 1
        problem = (reasons or {}).get(index) or pair_problem(row)
        if problem is not None:
            bad.setdefault(problem, []).append(str(index))
        elif is_blank_pair(row):
            blank.append(str(index))
        elif row["_response"][0]["content"] == row["_response"][1]["content"]:
            identical += 1
    if bad:
        total = sum(len(indices) for indices in bad.values())
        causes = "; ".join(f"{reason} ({'row' if len(ids) == 1 else f'{len(ids)} rows:'} {_shown(ids)})"
                           for reason, ids in bad.items())  # fmt: skip
        raise SimPOArgumentError(
            f"Dataset `{name}`: {total} of {count} rows are not usable preference pairs. {causes}. Fix or remove "
            "them: every row needs a prompt and a chosen and a rejected response, as text."
        )
    if blank and len(blank) == count:
        raise SimPOArgumentError(
            f"Dataset `{name}`: all {count} pairs have an empty (or whitespace-only) chosen or rejected response "
            f"(rows {_shown(blank)}); nothing is left to train on. Fill in the responses or use another dataset."
        )
    if blank:
        logger.warning_rank0(
            f"Dataset `{name}`: {len(blank)} of {count} pairs have an empty (or whitespace-only) chosen or rejected "
            f"response (rows {_shown(blank)}); they are dropped: a preference for or against an empty answer "
            "teaches the model to stop early or to ramble."
        )
    if identical:
        logger.warning_rank0(
            f"Dataset `{name}`: {identical} of {count} pairs have chosen == rejected; they teach nothing."
        )
    return RowCounts(count, identical, len(blank))


def check_raw_datasets(model_args: "ModelArguments", data_args: "DataArguments", training_args: Any) -> None:
    """Run :func:`check_rows` on every configured dataset; streaming datasets are checked after tokenization only."""
    if data_args.streaming:
        return
    for key in ("dataset", "eval_dataset"):
        names = getattr(data_args, key) or []
        for name, attr in zip(names, get_dataset_list(names, data_args.dataset_dir), strict=True):
            check_rows(name, *converted_rows(attr, model_args, data_args, training_args))


@contextmanager
def without_blank_responses() -> Iterator[None]:
    """While the host loads data, drop the converted rows :func:`check_rows` reported as blank.

    The host's loader reads each dataset through ``_load_single_dataset`` (read, then convert); filtering its
    result keeps every format, column mapping and later step of the host as it is.
    """
    from llamafactory.data import loader

    original = loader._load_single_dataset

    def load_without_blank(*args: Any, **kwargs: Any) -> Any:
        dataset = original(*args, **kwargs)
        keep = lambda row: not is_blank_pair(row)  # noqa: E731
        if hasattr(dataset, "__len__"):
            return dataset.filter(keep, desc="SimPO: dropping pairs with an empty response")
        return dataset.filter(keep)  # streaming

    loader._load_single_dataset = load_without_blank
    try:
        yield
    finally:
        loader._load_single_dataset = original


def has_response(labels: list[int]) -> bool:
    return any(label != IGNORE_INDEX for label in labels)


def has_rows(dataset: Any) -> bool:
    """Whether ``dataset`` holds at least one row; a streaming dataset is assumed to (it is read lazily)."""
    if dataset is None:
        return False
    return len(dataset) > 0 if hasattr(dataset, "__len__") else True


def _both_responses(row: dict[str, Any]) -> bool:
    return has_response(row["chosen_labels"]) and has_response(row["rejected_labels"])


def drop_empty_responses(dataset: "Dataset | None", split: str, cutoff_len: int) -> "Dataset | None":
    """Drop pairs whose chosen or rejected response is empty after truncation to ``cutoff_len``, and say so.

    A streaming dataset is filtered lazily, as it is read; its dropped pairs cannot be counted up front.
    """
    if dataset is None or not hasattr(dataset, "filter"):
        return dataset
    if not hasattr(dataset, "__len__"):
        logger.info_rank0(
            f"SimPO {split} data (streaming): pairs with a response that is empty after truncation to "
            f"cutoff_len={cutoff_len} are dropped as they are read"
        )
        return dataset.filter(_both_responses)
    before = len(dataset)
    kept = dataset.filter(_both_responses, desc="SimPO: dropping pairs with an empty response")
    dropped = before - len(kept)
    reason = f", {dropped} dropped: a response is empty after truncation to cutoff_len={cutoff_len}" if dropped else ""
    logger.info_rank0(f"SimPO {split} data: {len(kept)} pairs used{reason}")
    return kept


def drop_empty_pairs(dataset_module: dict[str, Any], cutoff_len: int) -> None:
    """Apply :func:`drop_empty_responses` to the train and eval splits of the host's dataset module, in place."""
    for split in ("train_dataset", "eval_dataset"):
        label = split.split("_")[0]
        if isinstance(dataset_module.get(split), dict):  # eval_on_each_dataset
            dataset_module[split] = {
                name: drop_empty_responses(dataset, f"{label} `{name}`", cutoff_len)
                for name, dataset in dataset_module[split].items()
            }
        elif split in dataset_module:
            dataset_module[split] = drop_empty_responses(dataset_module[split], label, cutoff_len)
