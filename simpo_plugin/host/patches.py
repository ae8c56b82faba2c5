"""One patch/unpatch pair per host touch-point. Patches are idempotent and return whether they changed anything.

Touch-points (LLaMA-Factory 0.9.x):
- ``llamafactory.hparams.finetuning_args.FinetuningArguments.stage``: its ``Literal`` gains the registered
  stage names, so ``--stage simpo`` passes argparse's choices check.
- ``llamafactory.train.tuner.get_train_args`` / ``run_dpo``: the names the tuner looks up are replaced by the
  dispatching wrappers of :mod:`simpo_plugin.host.dispatch`.
- ``llamafactory.extras.constants``: ``TRAINING_STAGES`` (web UI dropdown) and ``STAGES_USE_PAIR_DATA`` gain the
  registered stages.
- ``llamafactory.webui.locales.LOCALES``: the stages' widget labels in every UI language.
- ``llamafactory.webui.interface.create_train_tab``: the Train tab gains each stage's widgets.
- ``llamafactory.webui.components.train.list_datasets``: the Train tab's dataset list offers a stage's bundled
  datasets while that stage is chosen.
- ``llamafactory.webui.runner.Runner._parse_train_args``: a plugin stage's widgets become its YAML keys.
- ``llamafactory.train.callbacks.LogCallback.on_log``: ``trainer_log.jsonl`` rows (LLaMA Board's live view) also
  carry a step's ``probe/*`` metrics and ``warning/*`` marks.
- ``llamafactory.launcher.subprocess``: for a plugin stage, the torchrun child gets stop signals passed on
  (:mod:`simpo_plugin.host.launcher`).
"""

import sys
from collections.abc import Callable
from dataclasses import fields
from types import ModuleType
from typing import Literal, get_args

from .registry import REGISTRY, StageRegistry


class HostIncompatibleError(RuntimeError):
    """The installed LLaMA-Factory lacks a symbol the plugin hooks."""


def _require(module: ModuleType | type, name: str) -> object:
    if not hasattr(module, name):
        raise HostIncompatibleError(
            f"`{module.__name__}.{name}` is missing in this LLaMA-Factory version; simpo-plugin supports "
            "llamafactory>=0.9.4,<0.10 (`pip install 'llamafactory>=0.9.4,<0.10'`)"
        )
    return getattr(module, name)


def _wrap(owner: ModuleType | type, name: str, wrap: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.name`` by ``wrap(original)``; the wrapper keeps the original as ``__simpo_original__``."""
    original = _require(owner, name)
    if hasattr(original, "__simpo_original__"):
        return False
    wrapper = wrap(original)
    wrapper.__simpo_original__ = original
    setattr(owner, name, wrapper)
    return True


def _unwrap(owner: object, name: str) -> bool:
    original = getattr(getattr(owner, name, None), "__simpo_original__", None)
    if original is None:
        return False
    setattr(owner, name, original)
    return True


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
    for name in ("get_train_args", "run_dpo", "_training_function"):  # all or nothing
        _require(module, name)
    changed = _wrap(module, "get_train_args", lambda original: wrap_get_train_args(original, registry))
    return _wrap(module, "run_dpo", lambda original: wrap_carrier_run(original, registry)) or changed


def unpatch_tuner(module: ModuleType | None = None) -> bool:
    module = module or sys.modules["llamafactory.train.tuner"]
    changed = _unwrap(module, "get_train_args")
    return _unwrap(module, "run_dpo") or changed


def patch_stage_constants(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    module = module or sys.modules["llamafactory.extras.constants"]
    stages, pair_stages = _require(module, "TRAINING_STAGES"), _require(module, "STAGES_USE_PAIR_DATA")
    added = module.__dict__.setdefault("__simpo_added__", [])
    for name in registry.names():
        stage = registry.get(name)
        if stage.label not in stages:
            stages[stage.label] = name
            added.append(stage.label)
        if stage.uses_pair_data and name not in pair_stages:
            pair_stages.add(name)
            added.append(name)
    return bool(added)


def unpatch_stage_constants(module: ModuleType | None = None) -> bool:
    module = module or sys.modules["llamafactory.extras.constants"]
    added = module.__dict__.pop("__simpo_added__", [])
    for key in added:
        module.TRAINING_STAGES.pop(key, None)
        module.STAGES_USE_PAIR_DATA.discard(key)
    return bool(added)


def _ui_stages(registry: StageRegistry) -> list:
    return [registry.get(name) for name in registry.names() if registry.get(name).ui is not None]


def patch_locales(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    module = module or sys.modules["llamafactory.webui.locales"]
    locales = _require(module, "LOCALES")
    new = {k: v for stage in _ui_stages(registry) for k, v in stage.ui.locales.items() if k not in locales}
    locales.update(new)
    return bool(new)


def patch_train_tab(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    from .webui import wrap_create_train_tab

    module = module or sys.modules["llamafactory.webui.interface"]
    return _wrap(module, "create_train_tab", lambda original: wrap_create_train_tab(original, _ui_stages(registry)))


def unpatch_train_tab(module: ModuleType | None = None) -> bool:
    return _unwrap(module or sys.modules["llamafactory.webui.interface"], "create_train_tab")


def patch_dataset_list(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    from .webui import wrap_list_datasets

    module = module or sys.modules["llamafactory.webui.components.train"]
    return _wrap(module, "list_datasets", lambda original: wrap_list_datasets(original, _ui_stages(registry)))


def unpatch_dataset_list(module: ModuleType | None = None) -> bool:
    return _unwrap(module or sys.modules["llamafactory.webui.components.train"], "list_datasets")


def patch_launcher(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    from .launcher import LauncherSubprocess

    module = module or sys.modules["llamafactory.launcher"]
    current = _require(module, "subprocess")
    if isinstance(current, LauncherSubprocess):
        return False
    module.subprocess = LauncherSubprocess(current, registry)
    return True


def unpatch_launcher(module: ModuleType | None = None) -> bool:
    module = module or sys.modules["llamafactory.launcher"]
    original = getattr(module.subprocess, "__simpo_original__", None)
    if original is None:
        return False
    module.subprocess = original
    return True


LIVE_PREFIXES = ("probe/", "warning/")  # logged by plugin stages; LLaMA Board's live view reads trainer_log.jsonl


def _with_live_metrics(original: Callable) -> Callable:
    """``LogCallback.on_log`` whose ``trainer_log.jsonl`` row also carries the step's probe metrics and warnings."""

    def on_log(self, args, state, control, **kwargs):  # noqa: ANN001, ANN202
        latest = state.log_history[-1] if state.log_history else {}
        extra = {key: value for key, value in latest.items() if key.startswith(LIVE_PREFIXES)}
        if not extra:
            return original(self, args, state, control, **kwargs)
        write = type(self)._write_log
        self._write_log = lambda output_dir, logs: write(self, output_dir, {**logs, **extra})
        try:
            return original(self, args, state, control, **kwargs)
        finally:
            del self._write_log

    return on_log


def patch_log_callback(module: ModuleType | None = None) -> bool:
    module = module or sys.modules["llamafactory.train.callbacks"]
    callback = _require(module, "LogCallback")
    _require(callback, "_write_log")
    return _wrap(callback, "on_log", _with_live_metrics)


def unpatch_log_callback(module: ModuleType | None = None) -> bool:
    return _unwrap((module or sys.modules["llamafactory.train.callbacks"]).LogCallback, "on_log")


def _with_stage_args(original: Callable, registry: StageRegistry) -> Callable:
    """``Runner._parse_train_args`` that adds a plugin stage's widget values as its YAML keys."""

    def _parse_train_args(self, data: dict) -> dict:  # noqa: ANN001
        args = original(self, data)
        stage = registry.get(args["stage"]) if args.get("stage") in registry else None
        if stage is not None and stage.ui is not None:
            args.update(stage.ui.to_args(lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]))
        return args

    return _parse_train_args


def patch_runner(module: ModuleType | None = None, registry: StageRegistry = REGISTRY) -> bool:
    module = module or sys.modules["llamafactory.webui.runner"]
    return _wrap(
        _require(module, "Runner"), "_parse_train_args", lambda original: _with_stage_args(original, registry)
    )


def unpatch_runner(module: ModuleType | None = None) -> bool:
    return _unwrap((module or sys.modules["llamafactory.webui.runner"]).Runner, "_parse_train_args")
