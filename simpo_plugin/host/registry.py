"""Registry of training stages that plugins add to LLaMA-Factory.

A stage is declared once, as a :class:`Stage` record under the ``llamafactory.stages`` entry-point group, and
the host's dispatcher looks it up by name; no code anywhere branches on stage names.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any


ENTRY_POINT_GROUP = "llamafactory.stages"
HOST_STAGES = frozenset({"pt", "sft", "rm", "ppo", "dpo", "kto"})


@dataclass(frozen=True)
class Stage:
    """What the host needs to know to run a plugin stage.

    Attributes:
        name: value of ``stage:`` in the YAML config, e.g. ``"simpo"``.
        run: workflow with the host's ``run_dpo`` signature
            ``(model_args, data_args, training_args, finetuning_args, callbacks)``.
        args_class: dataclass of the stage's own keys, parsed from the same YAML/CLI as the host's keys.
        resolve: ``resolve(stage_args, given_keys, model_args, data_args, training_args, finetuning_args)``
            validates the stage keys against the host's and returns the object the workflow reads as
            ``finetuning_args.stage_args``.
        label: name shown in the LLaMA Board stage dropdown.
        uses_pair_data: whether the stage trains on ranking (chosen/rejected) datasets.
        ui: its LLaMA Board widgets (a :class:`simpo_plugin.host.webui.StageUI`), or None for no web UI controls.
        host_defaults: host keys whose value the stage sets differently when they are not given, as
            ``key -> (default, help)``; ``--help`` shows these instead of the host's.
        rejected_keys: host keys the stage refuses, as ``key -> what to use instead``; ``--help`` hides them and
            lists them after the stage's own keys.
        ignored_keys: host keys the stage accepts but does not use, as ``key -> what it does instead``; each given
            with a value other than the host's default gets one warning.
    """

    name: str
    run: Callable[..., Any]
    args_class: type
    resolve: Callable[..., Any]
    label: str
    uses_pair_data: bool = True
    ui: Any = None
    host_defaults: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    rejected_keys: Mapping[str, str] = field(default_factory=dict)
    ignored_keys: Mapping[str, str] = field(default_factory=dict)


class StageRegistry:
    """Name -> :class:`Stage`; registering is explicit, loading entry points is idempotent."""

    def __init__(self) -> None:
        self._stages: dict[str, Stage] = {}
        self.blocked: set[str] = set()

    def register(self, stage: Stage) -> Stage:
        """Add ``stage``; raise ValueError if its name clashes with a host stage or another plugin's."""
        if not isinstance(stage, Stage):
            raise TypeError(f"Expected a simpo_plugin.host.registry.Stage, got {type(stage).__name__}.")
        if stage.name in HOST_STAGES:
            raise ValueError(f"Stage `{stage.name}` is a built-in LLaMA-Factory stage and cannot be replaced.")
        if stage.name in self._stages and self._stages[stage.name] is not stage:
            raise ValueError(
                f"Stage `{stage.name}` is already registered by {self._stages[stage.name].run.__module__}; "
                f"uninstall one of the two plugins."
            )
        self._stages[stage.name] = stage
        return stage

    def unregister(self, name: str) -> Stage | None:
        return self._stages.pop(name, None)

    def get(self, name: str) -> Stage:
        try:
            return self._stages[name]
        except KeyError:
            known = ", ".join(sorted(HOST_STAGES | self._stages.keys()))
            raise ValueError(
                f"Unknown training stage `{name}` in family `{ENTRY_POINT_GROUP}`; known stages: {known}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def names(self) -> list[str]:
        return list(self._stages)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Register every stage advertised under ``group``; skip names already registered or blocked.

        Returns:
            How many stages this call added.
        """
        added = 0
        for entry_point in metadata.entry_points(group=group):
            if entry_point.name in self.blocked or entry_point.name in self._stages:
                continue
            stage = entry_point.load()
            if stage.name != entry_point.name:
                raise ValueError(
                    f"Entry point `{entry_point.name}` in `{group}` declares a stage named `{stage.name}`; "
                    "the two names must match."
                )
            self.register(stage)
            added += 1
        return added


REGISTRY = StageRegistry()
