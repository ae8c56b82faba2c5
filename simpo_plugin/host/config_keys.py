"""Mistakes in a training config's keys and stage name, named in one line with the closest known ones.

The host's parser ends an unknown key in a 30-line traceback ("Some keys are not used by the HfArgumentParser"),
and an unknown stage name only fails later, blaming whichever stage key the host does not know. For a config of a
plugin stage (or one whose stage is unknown), these checks run first: every key that neither the host's
arguments nor the stage's take is named, with "did you mean" the closest known key and the file it came from.
A key an older llamafactory took is named with what became of it (``host_keys``), before any spelling match.
``ALLOW_EXTRA_ARGS=1`` (the host's switch to accept unknown keys) turns the key check off, as it does the host's.
The host's bool, int and float keys are checked for a value of their type (``host_keys.check_values``).
"""

import difflib
import os
import sys
from dataclasses import fields
from typing import Any

from ..errors import SimPOArgumentError
from ..host_keys import check_values, moved_key


def config_source() -> str:
    """Where a ``llamafactory-cli train`` config comes from: the YAML/JSON file named first, or the command line."""
    if len(sys.argv) > 1 and sys.argv[1].endswith((".yaml", ".yml", ".json")):
        return os.path.abspath(sys.argv[1])
    return "the command line"


def host_train_classes() -> list[type]:
    """The dataclasses the host's ``get_train_args`` parses (model, data, training, finetuning, generating)."""
    from llamafactory.hparams import parser

    found = getattr(parser, "_TRAIN_ARGS", None)
    if found:
        return list(found)
    from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    return [ModelArguments, DataArguments, Seq2SeqTrainingArguments, FinetuningArguments, GeneratingArguments]


def known_keys(*classes: type) -> set[str]:
    return {f.name for cls in classes for f in fields(cls) if f.init}


def suggestion(name: str, choices: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def given_names(raw: dict[str, Any] | list[str]) -> list[str]:
    if isinstance(raw, dict):
        return list(raw)
    return [token[2:].split("=", 1)[0].replace("-", "_") for token in raw if token.startswith("--")]


def check_keys(raw: dict[str, Any] | list[str], stage_class: type, stage: str) -> None:
    """Raise one line naming every key that neither the host nor ``stage_class`` takes (renamed and removed host keys
    with what replaces them, others with the closest spelling), or a host key's value of the wrong type."""
    if os.environ.get("ALLOW_EXTRA_ARGS", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    classes = host_train_classes()
    known = known_keys(*classes, stage_class)
    unknown = [name for name in given_names(raw) if name not in known and name not in ("help", "h")]
    moved = [text for text in map(moved_key, unknown) if text]
    if moved:  # before any spelling match: an old key's closest spelling can be another, accepted key
        rest = [name for name in unknown if moved_key(name) is None]
        also = f"; unknown too: {', '.join(f'`{name}`{suggestion(name, known)}' for name in rest)}" if rest else ""
        raise SimPOArgumentError(f"{'; '.join(moved)} (in {config_source()}){also}.")
    if unknown:
        listed = ", ".join(f"`{name}`{suggestion(name, known)}" for name in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise SimPOArgumentError(
            f"Unknown key{plural} {listed} in {config_source()} for `stage: {stage}`. `llamafactory-cli train "
            f"--stage {stage} --help` lists the keys."
        )
    if isinstance(raw, dict):
        check_values(raw, classes)


def warn_ignored(given: set[str], stage: Any, *host_args: Any) -> None:
    """One warning per key of ``stage.ignored_keys`` given with a value other than the host's default."""
    from llamafactory.extras import logging

    for key in sorted(stage.ignored_keys.keys() & given):
        for args in host_args:
            spec = getattr(args, "__dataclass_fields__", {}).get(key)
            if spec is not None and getattr(args, key) != spec.default:
                logging.get_logger("llamafactory.simpo").warning_rank0(
                    f"simpo-plugin: `{key}: {getattr(args, key)}` is ignored by `stage: {stage.name}`: "
                    f"{stage.ignored_keys[key]}."
                )


def check_stage(name: str | None, stages: set[str]) -> None:
    """Raise one line for a stage name that neither the host nor a plugin knows, suggesting the closest."""
    if name is None or name in stages:
        return
    raise SimPOArgumentError(
        f"Unknown stage `{name}` in {config_source()}{suggestion(name, stages)}; the stages are "
        f"{', '.join(sorted(stages))}."
    )
