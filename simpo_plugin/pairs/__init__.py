"""``simpo-plugin pairs``: on-policy preference pairs (sample, score, select), resumable, sharded.

The entry point is :func:`build_pairs` (the command as a function). The path of a prompt:

    args       the command's keys (:class:`PairsArguments`) on top of sampling's shared ones
      |
    build      prompts and samples from :mod:`simpo_plugin.sampling`, in fixed chunks saved as parts
      |
    scorers    each answer's reward: a classifier reward model, a host ``stage: rm`` model (value head) or a
      |        ``reward_function`` (:func:`load_scorer`, :func:`check_scorer`)
    selection  best vs worst per prompt, with the drop rules (ties, identical, truncated, non-finite)
      |
    outputs    ``pairs.json`` and ``dataset_info.json`` in the host's sharegpt ranking format
    report     ``pairs_report.md`` and its plot (:class:`PairsStats`)

A new scorer is a class with ``score(items) -> list[float]`` in ``scorers.py``, chosen in :func:`load_scorer`.
:func:`import_callable` resolves ``package.module:function`` for ``reward_function`` (and evaluation's
``judge_function``). This package imports nothing from evaluation, the stage or the host glue.
"""

from typing import Any

from ..lazy import lazy_attributes


_LAZY = {
    "PairsArguments": ".args",
    "PairsStats": ".report",
    "check_scorer": ".scorers",
    "import_callable": ".scorers",
    "load_scorer": ".scorers",
    "select_pair": ".selection",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


def build_pairs(raw: dict[str, Any]) -> Any:
    """See :func:`simpo_plugin.pairs.build.build_pairs`."""
    from .build import build_pairs as run

    return run(raw)


__all__ = ["build_pairs", *_LAZY]
