"""Optional features never end or lose a training run.

Generation probes (prompts, generation, scoring, ``generations.jsonl``), the collapse monitor and the SimPO plots
watch a run; none of them is the run. When one fails, one warning line names the feature, the cause and what to
change, the feature turns itself off, and training goes on (docs/reliability.md).
"""

from collections.abc import Callable
from functools import partialmethod
from typing import Any, TypeVar

from llamafactory.extras import logging
from transformers import TrainerCallback

from ..errors import describe


logger = logging.get_logger("llamafactory.simpo")
T = TypeVar("T")
EVENTS = tuple(name for name in vars(TrainerCallback) if name.startswith("on_"))


def turned_off(feature: str, exc: BaseException, fix: str) -> None:
    """The one warning line of a feature that turns itself off."""
    logger.warning_rank0(f"simpo-plugin: {feature} turned off, training goes on: {describe(exc)}. {fix}")


def optional(feature: str, fix: str, build: Callable[[], T]) -> T | None:
    """``build()``, or None with one warning line when it raises."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - an optional feature must not end the run
        turned_off(feature, exc, fix)
        return None


class GuardedCallback(TrainerCallback):
    """Runs an optional callback's events; its first exception turns it off with one warning line.

    Attributes:
        inner: the wrapped callback (read its state through this).
        off: whether it has turned itself off.
    """

    def __init__(self, inner: TrainerCallback, feature: str, fix: str) -> None:
        self.inner, self.feature, self.fix = inner, feature, fix
        self.off = False

    def _event(self, event: str, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.off:
            return None
        try:
            return getattr(self.inner, event)(args, state, control, **kwargs)
        except Exception as exc:  # noqa: BLE001 - an optional feature must not end the run
            self.off = True
            turned_off(self.feature, exc, self.fix)
            return None


for _event in EVENTS:
    setattr(GuardedCallback, _event, partialmethod(GuardedCallback._event, _event))


_GUARDED: dict[type, type[GuardedCallback]] = {}


def guard(inner: TrainerCallback, feature: str, fix: str) -> GuardedCallback:
    """``inner`` guarded, as an instance of a :class:`GuardedCallback` subclass named after it (``GuardedFoo``).

    Transformers' trainer keeps one callback per class (``CallbackHandler.add_callback`` warns "... but there is
    already one" on a second instance): with one wrapper class for every feature, the probe and the monitor would
    read as one callback added twice. A class per wrapped class keeps that check meaningful and the trainer's
    callback list readable.
    """
    kind = type(inner)
    if kind not in _GUARDED:
        _GUARDED[kind] = type(f"Guarded{kind.__name__}", (GuardedCallback,), {"__module__": __name__})
    return _GUARDED[kind](inner, feature, fix)
