"""``simpo-plugin rounds``: the recipe's loop in one resumable command (on-policy pairs, SimPO, a verdict, again).

The entry point is :func:`run_rounds` (the command as a function). The path of one round r:

    config   the top-level keys and the three blocks, checked against each command's own keys
      |      (:func:`parse_config`; a key the loop sets is refused with the block's name)
    state    what earlier runs finished (``rounds_config.json``, ``round_<r>/phases.json``); a changed config
      |      that would change finished rounds is refused with what changed
    phases   pairs (``simpo_plugin.pairs``) -> train (``llamafactory-cli train``, LoRA merged by the host's export)
      |      -> eval (``simpo_plugin.evaluation``: against the start and the previous round)
    loop     the ``stop_when`` rules after each round; the best round by LC win rate against the start
    report   ``rounds_results.json``, ``rounds_report.md``, ``rounds.png``

Each phase is its command, called with the round's keys; nothing here reaches inside them. No other layer imports
this package (tests/test_layers.py); docs/rounds.md has the keys and an 8-GPU layout.
"""

from typing import Any


def check_config(raw: dict[str, Any]) -> Any:
    """``raw`` (a config dict) checked against the top-level keys and each block's command's keys.

    Returns:
        The :class:`~simpo_plugin.rounds.config.RoundsConfig` the loop runs.

    Raises:
        simpo_plugin.errors.SimPOArgumentError: a bad key or value, named with its block.
    """
    from ..evaluation import EvalArguments
    from ..host import training_keys
    from ..pairs import PairsArguments
    from ..sampling import known_keys
    from ..train import SimPOArguments
    from .config import parse_config

    known = {"pairs": known_keys(PairsArguments), "eval": known_keys(EvalArguments),
             "train": training_keys(SimPOArguments)}  # fmt: skip
    return parse_config(raw, known)


def run_rounds(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Check ``raw`` (a config dict) and run or resume its rounds; one row per finished round
    (``rounds_results.json``; docs/rounds.md).

    Raises:
        simpo_plugin.errors.SimPOArgumentError: a bad key or value, named with its block.
        simpo_plugin.errors.RunStopped: a phase failed (its log named) or kept nothing to train on.
    """
    from .loop import run_rounds as run

    return run(check_config(raw))


__all__ = ["check_config", "run_rounds"]
