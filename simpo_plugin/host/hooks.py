"""Host-side half of the startup hook: load plugin stages and register wrapt post-import hooks.

Runs once, when the interpreter first imports ``llamafactory`` (see :mod:`simpo_plugin._startup`). Each hook
runs at once if its target module is already imported, otherwise right after that module is imported.
"""

import sys
from collections.abc import Callable
from types import ModuleType, TracebackType

import wrapt

from ..errors import SimPOArgumentError
from ..notice import warn_once
from . import patches
from .registry import REGISTRY


HOST_HOOKS: dict[str, Callable[[ModuleType], bool]] = {
    "llamafactory.hparams.finetuning_args": patches.patch_stage_choices,
    "llamafactory.train.tuner": patches.patch_tuner,
    "llamafactory.extras.constants": patches.patch_stage_constants,
    "llamafactory.webui.locales": patches.patch_locales,
    "llamafactory.webui.interface": patches.patch_train_tab,
    "llamafactory.webui.components.train": patches.patch_dataset_list,
    "llamafactory.webui.runner": patches.patch_runner,
    "llamafactory.launcher": patches.patch_launcher,
    "llamafactory.train.callbacks": patches.patch_log_callback,
}
_installed = False


def _guarded(patch: Callable[[ModuleType], bool]) -> Callable[[ModuleType], None]:
    """A failing patch prints one actionable line and leaves the host module as it was."""

    def hook(module: ModuleType) -> None:
        try:
            patch(module)
        except Exception as exc:  # noqa: BLE001
            warn_once(f"could not patch `{module.__name__}` ({exc}); `stage: simpo` is unavailable, other stages work")

    return hook


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, previous: Callable = sys.excepthook
) -> None:
    """Configuration mistakes reach CLI users as one line, not a traceback."""
    if issubclass(exc_type, SimPOArgumentError):
        sys.stderr.write(f"simpo-plugin: error: {exc}\n")
    else:
        previous(exc_type, exc, tb)


def install_host_hooks() -> bool:
    """Idempotent; returns whether this call installed the hooks."""
    global _installed
    if _installed:
        return False
    _installed = True
    REGISTRY.load_entry_points()
    for module_name, patch in HOST_HOOKS.items():
        wrapt.register_post_import_hook(_guarded(patch), module_name)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    return True
