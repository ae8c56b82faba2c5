"""One patch/unpatch pair per host touch-point. Patches are idempotent and return whether they changed anything.

Touch-points (LLaMA-Factory 0.9.x):
- ``llamafactory.hparams.finetuning_args.FinetuningArguments.stage``: its ``Literal`` gains the registered
  stage names, so ``--stage simpo`` passes argparse's choices check.
- ``llamafactory.train.tuner.get_train_args`` / ``run_dpo``: the names the tuner looks up are replaced by the
  dispatching wrappers of :mod:`simpo_plugin.dispatch`.
"""

import sys
from dataclasses import fields
from types import ModuleType
from typing import Literal, get_args

from .registry import REGISTRY, StageRegistry


class HostIncompatibleError(RuntimeError):
    """The installed LLaMA-Factory lacks a symbol the plugin hooks."""


def _require(module: ModuleType, name: str) -> object:
    if not hasattr(module, name):
        raise HostIncompatibleError(
            f"`{module.__name__}.{name}` is missing in this LLaMA-Factory version; simpo-plugin supports "
            "llamafactory>=0.9.4,<0.10 (`pip install 'llamafactory>=0.9.4,<0.10'`)"
        )
    return getattr(module, name)


def _stage_owner(finetuning_args_cls: type) -> type:
    for cls in finetuning_args_cls.__mro__:
        if "stage" in cls.__dict__.get("__annotations__", {}):
            return cls
    raise HostIncompatibleError("`FinetuningArguments` has no `stage` field")


def patch_stage_choices(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    module = module or sys.modules["llamafactory.hparams.finetuning_args"]
    cls = _require(module, "FinetuningArguments")
    owner = _stage_owner(cls)
    current = owner.__annotations__["stage"]
    choices = get_args(current)
    missing = tuple(name for name in registry.names() if name not in choices)
    if not missing:
        return False

    if "__simpo_original_stage__" not in owner.__dict__:
        owner.__simpo_original_stage__ = current
    extended = Literal[choices + missing]  # type: ignore[valid-type]
    owner.__annotations__["stage"] = extended
    next(f for f in fields(cls) if f.name == "stage").type = extended
    return True


def unpatch_stage_choices(module: ModuleType | None = None) -> bool:
    module = module or sys.modules["llamafactory.hparams.finetuning_args"]
    cls = module.FinetuningArguments
    owner = _stage_owner(cls)
    original = owner.__dict__.get("__simpo_original_stage__")
    if original is None:
        return False
    owner.__annotations__["stage"] = original
    next(f for f in fields(cls) if f.name == "stage").type = original
    del owner.__simpo_original_stage__
    return True


def patch_tuner(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    from .dispatch import wrap_carrier_run, wrap_get_train_args

    module = module or sys.modules["llamafactory.train.tuner"]
    get_train_args = _require(module, "get_train_args")
    run_dpo = _require(module, "run_dpo")
    _require(module, "_training_function")
    if hasattr(get_train_args, "__simpo_original__"):
        return False
    module.get_train_args = wrap_get_train_args(get_train_args, registry)
    module.run_dpo = wrap_carrier_run(run_dpo, registry)
    return True


def unpatch_tuner(module: ModuleType | None = None) -> bool:
    module = module or sys.modules["llamafactory.train.tuner"]
    if not hasattr(module.get_train_args, "__simpo_original__"):
        return False
    module.get_train_args = module.get_train_args.__simpo_original__
    module.run_dpo = module.run_dpo.__simpo_original__
    return True
