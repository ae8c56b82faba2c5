"""Pairs whose prompt lost its end to ``cutoff_len``: when every one did, there is nothing right to train on.

The host's pairwise processor keeps the responses first ("the response is more important", ``infer_seqlen``): a
prompt longer than what ``cutoff_len`` leaves is cut from the end, and its end is the assistant turn's header, the
tokens after which the model answers. Such a pair still trains, on a response that follows no question; when all of
them are cut, the run would train on nothing but that, without a word. Checked on the host's own tokenized rows:
the prompt part of a row is where its labels are ``IGNORE_INDEX``, and a whole prompt ends with the template's
header ids.
"""

from typing import TYPE_CHECKING, Any

from llamafactory.data.parser import get_dataset_list
from llamafactory.extras import logging

from ..data import converted_rows
from ..errors import SimPOArgumentError
from .data_checks import IGNORE_INDEX


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments


logger = logging.get_logger("llamafactory.simpo")
MOSTLY = 0.5  # a share of cut prompts at or above this (but not all) is warned about
PROBE_TEXTS = ("Hi", "What is 2 + 2?")  # different last characters: their common tail is the header


def prompt_ids(template: Any, tokenizer: Any, messages: list[dict[str, str]], system: Any = None, tools: Any = None):
    """The prompt ids the host's pairwise processor builds for ``messages`` (its ``encode_oneturn``)."""
    return template.encode_oneturn(tokenizer, [*messages, {"role": "assistant", "content": ""}], system, tools)[0]


def assistant_header(template: Any, tokenizer: Any) -> list[int]:
    """The ids every rendered prompt ends with (the assistant turn's header); [] for a template without one."""
    first, second = (prompt_ids(template, tokenizer, [{"role": "user", "content": text}]) for text in PROBE_TEXTS)
    size = 0
    while size < min(len(first), len(second)) and first[-size - 1] == second[-size - 1]:
        size += 1
    return first[len(first) - size :]


def count_cut(dataset: Any, header: list[int]) -> int:
    """How many tokenized pairs of ``dataset`` kept a prompt that does not end with ``header``."""
    cut = 0
    for batch in dataset.select_columns(["chosen_input_ids", "chosen_labels"]).iter(batch_size=1024):
        for ids, labels in zip(batch["chosen_input_ids"], batch["chosen_labels"], strict=True):
            kept = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
            cut += ids[max(kept - len(header), 0) : kept] != header
    return cut


def longest_prompt(model_args: "ModelArguments", data_args: "DataArguments", training_args: Any, template: Any,
                   tokenizer: Any) -> int:  # fmt: skip
    """The longest prompt of the training datasets in tokens, read again (only to say so when they are all cut)."""
    longest = 0
    names = data_args.dataset or []
    for attr in get_dataset_list(names, data_args.dataset_dir):
        rows, _ = converted_rows(attr, model_args, data_args, training_args)
        for row in rows:
            if row.get("_prompt"):
                ids = prompt_ids(template, tokenizer, row["_prompt"], row.get("_system"), row.get("_tools"))
                longest = max(longest, len(ids))
    return longest


def check_prompt_cuts(dataset: Any, template: Any, tokenizer: Any, model_args: "ModelArguments",
                      data_args: "DataArguments", training_args: Any) -> None:  # fmt: skip
    """Raise when every training pair's prompt lost its end to ``cutoff_len``; warn, counted, when most did.

    A streaming dataset is not checked (it is read lazily).
    """
    if dataset is None or not hasattr(dataset, "__len__") or not len(dataset):
        return
    header = assistant_header(template, tokenizer)
    if not header:
        return
    cut, total = count_cut(dataset, header), len(dataset)
    cutoff = data_args.cutoff_len
    if cut == total:
        longest = longest_prompt(model_args, data_args, training_args, template, tokenizer)
        raise SimPOArgumentError(
            f"`cutoff_len: {cutoff}` cuts the prompt of all {total} training pairs before its assistant header "
            f"(the longest prompt is {longest} tokens, and the host keeps the responses first): the model would "
            f"learn answers that follow no question. Raise `cutoff_len` above {longest} plus the response length, "
            "or shorten the prompts."
        )
    if cut / total >= MOSTLY:
        logger.warning_rank0(
            f"simpo-plugin: `cutoff_len: {cutoff}` cuts the prompt of {cut} of {total} training pairs before its "
            "assistant header (the host keeps the responses first): those pairs teach answers that follow no "
            "question. Raise `cutoff_len`, or shorten the prompts."
        )
