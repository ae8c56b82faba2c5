"""``simpo-plugin rounds``: pairs, training and a length-controlled verdict, round after round, resumable.

Round r (from 1) samples pairs from round r-1's policy (round 0: ``model_name_or_path``) on its own slice of the
prompts, trains SimPO from that policy on them, and judges the new policy against the start and against round
r-1's. After each round the ``stop_when`` rules are read; the loop stops at the first that fires, says why in one
line and names the best round by LC win rate against the start. A rerun of the same command goes on at the first
phase not recorded as finished (``state.py``). ``rounds_results.json``, ``rounds_report.md`` and ``rounds.png``
are rewritten after every round.
"""

from pathlib import Path
from typing import Any

from llamafactory.extras import logging

from .config import RoundsConfig
from .phases import evaluate, make_pairs, train
from .report import best_round, round_row, write_report
from .state import RoundsState


logger = logging.get_logger("llamafactory.simpo.rounds")


def stop_reason(config: RoundsConfig, row: dict[str, Any]) -> str | None:
    """Why the loop stops after the round of ``row`` (``report.round_row``), or None."""
    rules = config.stop_when
    gain = row.get("lc_gain")
    if rules.lc_gain_below is not None and gain is not None and gain < rules.lc_gain_below:
        previous = "the start" if row["round"] == 1 else f"round {row['round'] - 1}"
        return (f"round {row['round']}'s LC win rate against {previous} is {50 + gain:.1f} "
                f"({gain:+.1f} points), below `stop_when.lc_gain_below: {rules.lc_gain_below}`")  # fmt: skip
    if rules.collapse_warning and row["warnings"]:
        return f"round {row['round']}'s training warned of a collapse ({', '.join(row['warnings'][:3])})"
    if rules.check_drop_above is not None:
        for name, change in row["check_changes"].items():
            if change < -rules.check_drop_above:
                return (f"round {row['round']} scores {change:+.1f} points on the `{name}` checks against the "
                        f"start, more than `stop_when.check_drop_above: {rules.check_drop_above}`")  # fmt: skip
    return None


def loads(model: dict[str, str]) -> str:
    """How to load a policy, in the host's keys' words."""
    if model.get("adapter_name_or_path"):
        return f"{model['model_name_or_path']} with adapters {model['adapter_name_or_path']}"
    return model["model_name_or_path"]


def run_rounds(config: RoundsConfig) -> list[dict[str, Any]]:
    """Run (or resume) every round of ``config``; returns one row per finished round (``rounds_results.json``)."""
    state = RoundsState(config.output_dir)
    resumed = state.claim(config.saved())
    if resumed:
        logger.info_rank0(f"simpo-plugin rounds: resuming the rounds in {config.output_dir}")
    start = {"model_name_or_path": config.model_name_or_path}
    policies = [start]
    rows: list[dict[str, Any]] = []
    reason = None
    for r in range(1, config.rounds + 1):
        folder = state.round_dir(r)
        done = state.phases(r)
        policy = policies[-1]
        for phase in ("pairs", "train", "eval"):
            if phase in done:
                continue
            logger.info_rank0(f"simpo-plugin rounds: round {r}/{config.rounds}: {phase}")
            if phase == "pairs":
                record = make_pairs(config, r, policy, folder / "pairs")
            elif phase == "train":
                record = train(config, r, policy, done["pairs"], folder)
            else:
                record = evaluate(config, r, start, policy, done["train"]["model"], folder)
            done = state.finish(r, phase, record)
        policies.append(done["train"]["model"])
        rows.append(round_row(r, done))
        write_report(Path(config.output_dir), rows)
        reason = stop_reason(config, rows[-1])
        if reason:
            break
    best = best_round(rows)
    ending = f"stopped: {reason}" if reason else f"{len(rows)} round(s) done"
    score = best["lc_vs_start"] if best["lc_vs_start"] is not None else best["win_vs_start"]
    logger.info_rank0(
        f"simpo-plugin rounds: {ending}. Best round by LC win rate against the start: round {best['round']} "
        f"({'-' if score is None else f'{score:.1f}'}), policy {loads(best['model'])}. "
        f"Report: {config.output_dir}/rounds_report.md"
    )
    return rows
