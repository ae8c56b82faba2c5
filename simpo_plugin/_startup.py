"""Interpreter-startup half of the plugin, run by ``simpo_plugin.pth`` in every Python process of the environment.

Why it exists: LLaMA-Factory has no plugin API, and ``llamafactory-cli`` re-launches itself (torchrun workers,
the web UI's training child, Ray workers) in fresh interpreters that only a ``.pth`` line reaches.

What it does: put one tiny finder on ``sys.meta_path`` that waits for the top-level ``llamafactory`` import and
then hands over to :func:`simpo_plugin.host.install_host_hooks`, which registers wrapt post-import hooks for
the host modules it patches. Nothing is imported here beyond what ``site`` has already loaded, so a Python
process that never imports the host pays a few hundred microseconds (see docs/reliability.md).

Limits: the handover happens once per interpreter; ``importlib.reload(llamafactory)`` does not re-run it.
"""

import sys


HOST_PACKAGE = "llamafactory"


def _warn(message: str) -> None:
    """One warning line per process (:func:`simpo_plugin.notice.warn_once`, imported only when needed)."""
    from simpo_plugin.notice import warn_once

    warn_once(message)


def _hand_over() -> None:
    """Install the host hooks, turning any failure into one warning line."""
    try:
        from simpo_plugin.host import install_host_hooks

        install_host_hooks()
    except Exception as exc:  # noqa: BLE001 - a plugin failure must not become a host failure
        _warn(f"could not hook into LLaMA-Factory ({exc!r}); `stage: simpo` is unavailable")


class _HookedLoader:
    """Delegates to the host's real loader and hands over right after the package has executed."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader  # leave no trace of the wrapper
        _hand_over()


class HostImportWatcher:
    """A ``sys.meta_path`` finder that never finds anything itself; it only watches for the host package."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != HOST_PACKAGE or self._searching:
            return None

        sys.meta_path.remove(self)  # one-shot: later imports never see us again
        self._searching = True
        try:
            for finder in sys.meta_path:
                find_spec = getattr(finder, "find_spec", None)
                spec = find_spec(fullname, path, target) if find_spec is not None else None
                if spec is not None:
                    break
            else:
                return None  # host not installed: let the import fail as it would without us
        finally:
            self._searching = False

        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HookedLoader(spec.loader)
        return spec


def install() -> bool:
    """Arm the watcher once; returns whether this call armed it (False when already armed or already handed over)."""
    if any(isinstance(finder, HostImportWatcher) for finder in sys.meta_path):
        return False

    if HOST_PACKAGE in sys.modules:
        _hand_over()
        return False

    sys.meta_path.insert(0, HostImportWatcher())
    return True


def uninstall() -> None:
    """Remove any armed watcher (used by tests)."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, HostImportWatcher)]
