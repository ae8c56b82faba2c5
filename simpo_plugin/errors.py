"""Errors every layer shares: configuration mistakes and optional features that cannot work.

Neutral on purpose: the stage, generation and the host glue all raise or print these, and none of them depends on
another for it. Importing this module is cheap (no torch, no host).
"""


class SimPOArgumentError(ValueError):
    """A configuration error; the CLI prints it as one line, ``simpo-plugin: error: ...``, without a traceback."""


class PairsConfigError(SimPOArgumentError):
    """A bad ``simpo-plugin pairs`` or ``eval`` config or input (a key, a dataset row, an answers file); printed as
    one line, exit status non-zero."""


class RunStopped(RuntimeError):
    """A run cannot go on (its inputs are fine, a service it needs is gone); the CLI prints it as one line and
    exits with status 1. What was finished is saved and the same command resumes."""


class EmptyOutput(RunStopped):
    """A run that finished with nothing usable (no pair kept, every answer of a model empty); the message counts
    why and names the key that fixes it. What the run found is written (its report says the rest); exit status 1."""


class FeatureUnavailable(RuntimeError):
    """An optional feature cannot work in this run; the message says why and what to change."""


def describe(exc: BaseException) -> str:
    """The cause as one line without a final period: the plugin's own messages as they are, others with their type."""
    text = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else ""
    if type(exc).__module__.startswith("simpo_plugin") and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
