"""Prompts for on-policy sampling, read and rendered exactly as ``stage: simpo`` will read and render them later.

Rows come through the host's own loader and format converter (``_load_single_dataset``), so every format and
column mapping of ``dataset_info.json`` works: ranking rows give their conversation, SFT rows (alpaca/sharegpt)
everything before their last assistant turn, prompt-only alpaca rows their instruction. The token ids are the
prompt half of ``template.encode_oneturn`` with the same system and tools, which is what the host's pairwise
processor computes for a training pair, so generation and training see the same ids (no second BOS, same
system prompt).
"""

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..data import check_registered, converted_rows, converter_warnings, resolve_dataset_dir
from ..errors import PairsConfigError


if TYPE_CHECKING:
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import PreTrainedTokenizer


SHOWN_ROWS = 5
PROMPT_ROLES = ("user", "observation")


@dataclass(frozen=True)
class Prompt:
    """One unique prompt: its conversation, system, tools and rendered token ids."""

    key: str
    messages: list[dict[str, str]]
    system: str
    tools: str
    ids: list[int]
    source: str

    def chat(self) -> list[dict[str, str]]:
        """The conversation with the system prompt first, as reward functions and chat templates take it."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages


@dataclass
class PromptSet:
    prompts: list[Prompt] = field(default_factory=list)
    rows: int = 0
    unusable: list[str] = field(default_factory=list)
    duplicates: int = 0
    too_long: int = 0
    shortest_too_long: int | None = None  # tokens of the shortest prompt over cutoff_len


def prompt_key(messages: list[dict[str, str]], system: str, tools: str) -> str:
    """Content hash of a prompt: the identity used for deduplication, per-prompt seeds and resume checks."""
    canonical = json.dumps([system, tools, messages], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode("ascii")).hexdigest()[:16]


def render_prompt(
    template: "Template", tokenizer: "PreTrainedTokenizer", messages: list[dict[str, str]], system: str, tools: str
) -> list[int]:
    """Prompt ids as the host's pairwise processor computes them: ``encode_oneturn(prompt + [response])[0]``."""
    prompt_ids, _ = template.encode_oneturn(
        tokenizer, messages + [{"role": "assistant", "content": ""}], system, tools
    )
    return prompt_ids


def instruction_prompts(
    instructions: list[str], source: str, template: Any = None, tokenizer: Any = None
) -> list[Prompt]:
    """Single-turn prompts from plain instructions, sources ``<source>#<i>``: rendered with ``template`` and
    ``tokenizer`` when given, else without ids (for readers of the text only, such as judges)."""
    prompts = []
    for index, instruction in enumerate(instructions):
        messages = [{"role": "user", "content": instruction}]
        ids = render_prompt(template, tokenizer, messages, "", "") if template is not None else []
        prompts.append(Prompt(prompt_key(messages, "", ""), messages, "", "", ids, f"{source}#{index}"))
    return prompts


def row_problem(row: dict[str, Any]) -> str | None:
    """Why a converted row gives no text prompt, or None."""
    if any(row.get(column) for column in ("_images", "_videos", "_audios")):
        return "has images, videos or audio (pairs supports text prompts only)"
    prompt = row.get("_prompt") or []
    if not prompt:
        return "no prompt (the host's converter rejected the row: check its roles and turn count)"
    if len(prompt) % 2 != 1 or prompt[-1].get("role") not in PROMPT_ROLES:
        return "the conversation does not end with a user turn before the answer"
    if not all(isinstance(message.get("content"), str) for message in prompt):
        return "a turn is null or not text"
    return None


def load_prompts(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    template: "Template",
    tokenizer: "PreTrainedTokenizer",
    max_rows: int | None = None,
) -> PromptSet:
    """Read every configured dataset, keep usable unique prompts that fit ``cutoff_len``; raise if none is left.

    Args:
        max_rows: read at most this many rows of each dataset (streaming datasets included); None reads them all.

    Raises:
        PairsConfigError: naming the dataset and the rows, when a dataset has no usable prompt or none fits.
    """
    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list

    loader_args = SimpleNamespace(local_process_index=0, dataloader_num_workers=1, seed=0)  # 1 stream shard
    result, seen = PromptSet(), set()
    data_args = copy.copy(data_args)
    data_args.dataset_dir = resolve_dataset_dir(list(data_args.dataset), data_args.dataset_dir)
    check_registered(list(data_args.dataset), data_args.dataset_dir)
    attrs = get_dataset_list(data_args.dataset, data_args.dataset_dir)
    with converter_warnings():  # a streaming dataset is converted as it is read: no per-row flood
        for name, attr in zip(data_args.dataset, attrs, strict=True):
            reasons: dict[int, str] = {}
            try:
                if data_args.streaming:  # converted as it is read
                    rows = _load_single_dataset(attr, model_args, data_args, loader_args)
                else:
                    rows, reasons = converted_rows(attr, model_args, data_args, loader_args)
            except (KeyError, ValueError) as exc:
                raise PairsConfigError(
                    f"Dataset `{name}` could not be read: {exc!r}; check its dataset_info.json entry."
                ) from exc
            usable = 0
            for index, row in enumerate(itertools.islice(rows, max_rows)):
                result.rows += 1
                problem = reasons.get(index) or row_problem(row)
                if problem is not None:
                    result.unusable.append(f"`{name}` row {index}: {problem}")
                    continue
                usable += 1
                messages = [{"role": m["role"], "content": m["content"]} for m in row["_prompt"]]
                system, tools = row.get("_system") or "", row.get("_tools") or ""
                key = prompt_key(messages, system, tools)
                if key in seen:
                    result.duplicates += 1
                    continue
                seen.add(key)
                ids = render_prompt(template, tokenizer, messages, system, tools)
                if len(ids) > data_args.cutoff_len:
                    result.too_long += 1
                    result.shortest_too_long = min(result.shortest_too_long or len(ids), len(ids))
                    continue
                result.prompts.append(Prompt(key, messages, system, tools, ids, f"{name}#{index}"))
            if not usable:
                shown = "; ".join(result.unusable[-SHOWN_ROWS:])
                raise PairsConfigError(
                    f"Dataset `{name}` has no usable prompts ({shown or 'it is empty'}). Give it a prompt column "
                    "(alpaca `instruction`) or conversations that end with a user turn (+ the answer being replaced)."
                )
    if not result.prompts:
        raise PairsConfigError(
            f"No prompt fits `cutoff_len` ({data_args.cutoff_len} tokens, the prompt budget): "
            f"{result.too_long} too long (shortest {result.shortest_too_long} tokens), {result.duplicates} "
            "duplicates; raise `cutoff_len`."
        )
    return result
