"""How the host's tuner reaches a plugin stage.

``llamafactory.train.tuner._training_function`` parses arguments with ``get_train_args`` and then branches on
the stage name. The wrappers below make a plugin stage ride the ``dpo`` branch (the "carrier"): after the
host has validated the config with the plugin stage's real name, the stage is relabelled as the carrier, and
the carrier's ``run_dpo`` hands over to the registered workflow, which sees its own name again. The host keeps
doing everything else it does for its stages: callbacks, the Ray path and process-group teardown.
"""

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import Field, fields
from types import MappingProxyType
from typing import Any

from transformers import HfArgumentParser

from .config_keys import check_keys, check_stage, warn_ignored
from .registry import HOST_STAGES, REGISTRY, Stage, StageRegistry


CARRIER_STAGE = "dpo"
RawArgs = dict[str, Any] | list[str]


def given_keys(raw: RawArgs) -> set[str]:
    """Keys the user set explicitly, from a YAML/JSON dict or from ``--key value`` tokens."""
    if isinstance(raw, dict):
        return set(raw)
    return {token[2:].split("=", 1)[0] for token in raw if token.startswith("--")}


def requested_stage(raw: RawArgs) -> str | None:
    if isinstance(raw, dict):
        return raw.get("stage")
    for i, token in enumerate(raw):
        if token == "--stage" and i + 1 < len(raw):
            return raw[i + 1]
        if token.startswith("--stage="):
            return token.split("=", 1)[1]
    return None


def split_stage_args(raw: RawArgs, args_class: type) -> tuple[RawArgs, Any]:
    """Separate the stage's own keys from the host's; returns (host args, parsed stage dataclass)."""
    names = {f.name for f in fields(args_class)}
    if isinstance(raw, dict):
        return {k: v for k, v in raw.items() if k not in names}, args_class(**{k: raw[k] for k in raw if k in names})

    parser = HfArgumentParser(args_class, allow_abbrev=False)
    stage_args, remaining = parser.parse_args_into_dataclasses(args=raw, return_remaining_strings=True)
    return remaining, stage_args


def wrap_get_train_args(original: Callable[..., tuple], registry: StageRegistry = REGISTRY) -> Callable[..., tuple]:
    from llamafactory.hparams import read_args

    @functools.wraps(original)
    def get_train_args(args: RawArgs | None = None) -> tuple:
        raw = read_args(args)
        name = requested_stage(raw)
        check_stage(name, set(HOST_STAGES) | set(registry.names()))
        if name not in registry:
            return original(raw)
        if "-h" in raw or "--help" in raw:
            return _help_with_stage_keys(original, raw, name, registry)

        stage = registry.get(name)
        check_keys(raw, stage.args_class, name)
        host_raw, stage_args = split_stage_args(raw, stage.args_class)
        model_args, data_args, training_args, finetuning_args, generating_args = original(host_raw)
        finetuning_args.stage_args = stage.resolve(
            stage_args, given_keys(raw), model_args, data_args, training_args, finetuning_args
        )
        warn_ignored(given_keys(raw), stage, model_args, data_args, training_args, finetuning_args, generating_args)
        finetuning_args.plugin_stage = name
        finetuning_args.stage = CARRIER_STAGE
        return model_args, data_args, training_args, finetuning_args, generating_args

    return get_train_args


def stage_help(name: str, registry: StageRegistry = REGISTRY) -> str:
    """The help text of a plugin stage's own keys, in the host's argparse format, then the host keys it refuses."""
    stage = registry.get(name)
    parser = HfArgumentParser(
        stage.args_class,
        prog="llamafactory-cli train",
        usage=argparse.SUPPRESS,
        add_help=False,
        description=f"Keys that `stage: {name}` adds to the ones above (they may also go in the YAML file):",
    )
    text = parser.format_help()
    if stage.rejected_keys:
        refused = "\n".join(f"  --{key}: {why}" for key, why in stage.rejected_keys.items())
        text += f"\nHost keys that `stage: {name}` refuses (hidden above):\n{refused}\n"
    return text


@contextmanager
def host_help_for(stage: Stage, classes: list[type]) -> Iterator[None]:
    """While the host prints its help: the stage's own defaults for the host keys it sets, its refused keys hidden."""
    changed: list[tuple[Field, Any, Any]] = []
    for cls in classes:
        for spec in fields(cls):
            if spec.name in stage.host_defaults:
                default, text = stage.host_defaults[spec.name]
                changed.append((spec, spec.default, spec.metadata))
                spec.default = default
                spec.metadata = MappingProxyType({**spec.metadata, "help": f"{text} (`stage: {stage.name}`)"})
            elif spec.name in stage.rejected_keys:
                changed.append((spec, spec.default, spec.metadata))
                spec.metadata = MappingProxyType({**spec.metadata, "help": argparse.SUPPRESS})
    try:
        yield
    finally:
        for spec, default, metadata in changed:
            spec.default, spec.metadata = default, metadata


def _help_with_stage_keys(original: Callable[..., tuple], raw: RawArgs, name: str, registry: StageRegistry) -> tuple:
    """The host prints its own help (with the stage's defaults) and exits; the stage's keys follow, and the exit
    stays the host's."""
    from .config_keys import host_train_classes

    try:
        with host_help_for(registry.get(name), host_train_classes()):
            return original(raw)
    except SystemExit as exit_:
        sys.stdout.flush()
        print(f"\n{stage_help(name, registry)}")
        raise exit_ from None


def wrap_carrier_run(original: Callable[..., None], registry: StageRegistry = REGISTRY) -> Callable[..., None]:
    @functools.wraps(original)
    def run_dpo(model_args, data_args, training_args, finetuning_args, callbacks=None) -> None:  # noqa: ANN001
        name = getattr(finetuning_args, "plugin_stage", None)
        if name is None:
            return original(model_args, data_args, training_args, finetuning_args, callbacks)
        finetuning_args.stage = name
        return registry.get(name).run(model_args, data_args, training_args, finetuning_args, callbacks)

    return run_dpo
