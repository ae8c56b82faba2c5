"""The stage registry: explicit registration, loud clashes, idempotent entry-point loading."""

from dataclasses import dataclass
from importlib import metadata

import pytest

from simpo_plugin.host import registry as registry_module
from simpo_plugin.host.registry import REGISTRY, Stage, StageRegistry
from simpo_plugin.train.stage import SIMPO_STAGE


pytestmark = pytest.mark.host  # the host's contract: `make test-lowest` runs it too


def _noop(*args: object) -> None:
    """Stand-in workflow."""


def make_stage(name: str) -> Stage:
    return Stage(name=name, run=_noop, args_class=object, resolve=_noop, label=name.upper())


@dataclass
class FakeEntryPoint:
    name: str
    stage: Stage

    def load(self) -> Stage:
        return self.stage


def test_register_and_get() -> None:
    registry = StageRegistry()
    stage = registry.register(make_stage("toy"))
    assert registry.get("toy") is stage and "toy" in registry and registry.names() == ["toy"]
    assert registry.register(stage) is stage  # registering the same record twice is harmless


def test_clashes_fail_loudly() -> None:
    registry = StageRegistry()
    registry.register(make_stage("toy"))
    with pytest.raises(ValueError, match="`toy` is already registered"):
        registry.register(make_stage("toy"))
    with pytest.raises(ValueError, match="built-in"):
        registry.register(make_stage("dpo"))
    with pytest.raises(TypeError, match="Stage"):
        registry.register("toy")  # type: ignore[arg-type]


def test_unknown_stage_names_family_and_known_stages() -> None:
    registry = StageRegistry()
    registry.register(make_stage("toy"))
    with pytest.raises(ValueError, match=r"`nope` in family `llamafactory.stages`.*dpo.*toy"):
        registry.get("nope")


def test_entry_points_load_once_and_respect_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [FakeEntryPoint("toy", make_stage("toy")), FakeEntryPoint("other", make_stage("other"))]
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda group: points)
    registry = StageRegistry()
    registry.blocked.add("other")
    assert registry.load_entry_points() == 1
    assert registry.load_entry_points() == 0
    assert registry.names() == ["toy"]


def test_entry_point_name_must_match_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module.metadata, "entry_points", lambda group: [FakeEntryPoint("a", make_stage("b"))])
    with pytest.raises(ValueError, match="`a`.*`b`"):
        StageRegistry().load_entry_points()


def test_simpo_is_registered_through_its_real_entry_point() -> None:
    names = [ep.name for ep in metadata.entry_points(group=registry_module.ENTRY_POINT_GROUP)]
    assert "simpo" in names
    import llamafactory.train.tuner  # noqa: F401  # importing the host installs the hooks

    assert REGISTRY.get("simpo") is SIMPO_STAGE
