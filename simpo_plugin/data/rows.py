"""Rows through the host's own loader and format converter, with the host's reason for each row it rejects.

LLaMA-Factory's converters (``llamafactory.data.converter``) blank a row they cannot convert and log warnings per
row (``Invalid message count in [...]``, ``Invalid role tag in [...]``, ``Skipping this abnormal example.``), several
lines each: on a real dataset a flood that hides the cause. :func:`converted_rows` reads a dataset with those
warnings caught and off the console, and returns, per blanked row, the host's reason in words that say what to
change. The converter runs in this process for that (``preprocessing_num_workers`` and the datasets cache are set
aside for this read only).
"""

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


CONVERTER_LOGGER = "llamafactory.data.converter"
SKIPPED = "Skipping this abnormal example"
MESSAGE_COUNT = {  # the host's "Invalid message count", for a ranking row and for an SFT row
    True: "the conversation has an even number of turns: in a sharegpt ranking row `conversations` holds the turns "
    "before the answer, ending with the user's, and the two answers go in `chosen`/`rejected` (drop the final "
    "answer from `conversations`)",
    False: "the conversation has an odd number of turns: an SFT row's conversation ends with the assistant's answer",
}
ROLE_TAG = (
    "a turn's role is not the one expected at its place: turns must alternate user and assistant with the tags "
    "that dataset_info.json sets (`tags`: `user_tag`, `assistant_tag`, ...; sharegpt's defaults are `human` and `gpt`)"
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def converter_warnings() -> Iterator[list[str]]:
    """Keep the host converter's per-row warnings off the console; yields the list they are collected in."""
    logger = logging.getLogger(CONVERTER_LOGGER)
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def reason_of(messages: list[str], ranking: bool) -> str:
    """The plain-words reason for one skipped row, from the host's warnings about it."""
    if any(message.startswith("Invalid role tag") for message in messages):
        return ROLE_TAG
    if any(message.startswith("Invalid message count") for message in messages):
        return MESSAGE_COUNT[ranking]
    return "the host's converter rejected it (" + "; ".join(m[:120] for m in messages) + ")"


def blanked(row: dict[str, Any]) -> bool:
    return not row.get("_prompt") and not row.get("_response")


def converted_rows(attr: Any, model_args: Any, data_args: Any, loader_args: Any) -> tuple[Any, dict[int, str]]:
    """``(rows, reasons)``: the host's converted rows, and for each row the host blanked, its reason by index.

    Raises what the host's loader raises (a missing column is a ``KeyError``, an empty file a ``ValueError``).
    """
    from llamafactory.data.loader import _load_single_dataset

    args = copy.copy(data_args)
    args.preprocessing_num_workers = None  # the converter's warnings come from this process, in row order
    args.overwrite_cache = True  # a cached conversion would give no warnings
    with converter_warnings() as messages:
        rows = _load_single_dataset(attr, model_args, args, loader_args)
    skipped: list[list[str]] = []
    pending: list[str] = []
    for message in messages:
        if message.startswith(SKIPPED):
            skipped.append(pending)
            pending = []
        else:
            pending.append(message)
    indices = [index for index, row in enumerate(rows) if blanked(row)]
    ranking = bool(getattr(attr, "ranking", False))
    return rows, {index: reason_of(found, ranking) for index, found in zip(indices, skipped, strict=False)}
