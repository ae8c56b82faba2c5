"""Early warnings for a SimPO run: each symptom is named once, with its numbers and the likely fix.

A ``TrainerCallback`` that reads what the run logs: the training metrics (loss, rewards, log-probs, accuracy)
and the generation probes (``probe/*``, see :mod:`simpo_plugin.train.probes`). The thresholds are in
``THRESHOLDS`` and docs/monitoring.md; they were set on the demo and the SmolLM2 example, which print none of
the collapse warnings. A warning prints one line, is marked in the log history as ``warning/<name>: 1`` at its
step (trainer_state.json, report_to backends) and is appended to ``simpo_warnings.jsonl`` in the output dir.
With ``simpo_stop_on_collapse`` a collapse warning also saves a checkpoint and stops the run.
"""

import json
import math
from pathlib import Path
from typing import Any

from llamafactory.extras import logging
from transformers import TrainerCallback


logger = logging.get_logger("llamafactory.simpo")
WARNINGS_FILE = "simpo_warnings.jsonl"
THRESHOLDS = {
    "eos_start": 0.3,  # the EOS rule needs a model that ended at least this share of answers at the start
    "eos_drop": 0.3,  # ... and fires when the share falls by this much (absolute)
    "repeat_rise": 0.15,  # repeated 4-gram rate up by this much (absolute) and at least doubled
    "length_ratio": 2.0,  # mean probe length this many times its start, or less than its start over this
    "length_min_start": 4.0,  # tokens: below this the start is too short to compare against
    "length_eos_start": 0.5,  # ... and most start answers must have ended by themselves (else max_new_tokens caps it)
    "duplicate_rate": 0.5,  # this share of probe prompts answered the same as another prompt ...
    "duplicate_start": 0.25,  # ... where at the start fewer than this share were
    "few_words": 3.0,  # mean words per probe answer at or below this ...
    "few_words_start": 8.0,  # ... from at least this many at the start (max_new_tokens may cap the start: a floor)
    "displacement_window": 4,  # logged steps over which the chosen log-prob must keep falling
    "displacement_accuracy": 0.9,  # preference accuracy over that window
    "displacement_drop": 0.1,  # relative fall of the chosen log-prob per token from the run's first log
    "zero_loss": 1e-6,
    "paper_batch": 128,
    "small_batch": 32,  # effective batch below this ...
    "high_lr": 1e-6,  # ... with a learning rate above this gets a setup hint
}
COLLAPSE = ("eos_drop", "repetition", "length_drift", "duplicates", "short_answers", "likelihood_displacement",
            "zero_loss")  # fmt: skip


class CollapseMonitor(TrainerCallback):
    def __init__(self, output_dir: str, stop_on_collapse: bool = False, lengths: str = "the training data") -> None:
        """``lengths``: where the chosen and rejected lengths of the run's pairs can be read, for the length
        warnings (``pairs_report.md`` when the data came from ``simpo-plugin pairs``, else the dataset)."""
        self.path = Path(output_dir) / WARNINGS_FILE
        self.lengths = lengths
        self.stop_on_collapse = stop_on_collapse
        self.warned: set[str] = set()
        self.train: list[dict[str, float]] = []
        self.probe_start: dict[str, float] | None = None
        self.stopped: tuple[int, str] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        history = state.log_history if state is not None else []  # a resumed run picks up where it left off
        self.train = [entry for entry in history if "loss" in entry and "rewards/accuracies" in entry]
        self.probe_start = next((entry for entry in history if "probe/length" in entry), None)
        self.warned |= {key.split("/", 1)[1] for entry in history for key in entry if key.startswith("warning/")}
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        if batch < THRESHOLDS["small_batch"] and args.learning_rate > THRESHOLDS["high_lr"]:
            logger.warning_rank0(
                f"simpo-plugin: hint: effective batch {batch} (per-device {args.per_device_train_batch_size} x "
                f"accumulation {args.gradient_accumulation_steps} x {max(args.world_size, 1)} ranks) is far below "
                f"the paper's {THRESHOLDS['paper_batch']} while learning_rate {args.learning_rate:g} > 1e-6; on a "
                "pretrained model this combination is the usual cause of repetitive or incoherent output. Raise "
                "gradient_accumulation_steps or lower learning_rate (the paper: 3e-7 to 1e-6)."
            )

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        found: list[tuple[str, str]] = []
        if "loss" in logs and "rewards/accuracies" in logs:
            self.train.append(logs)
            found += self.check_training()
        if "probe/length" in logs:
            if self.probe_start is None:
                self.probe_start = dict(logs)
            else:
                found += self.check_probe(logs)
        for name, message in found:
            self.warn(name, message, state, control)

    def check_training(self) -> list[tuple[str, str]]:
        found, current = [], self.train[-1]
        loss = current["loss"]
        if not math.isfinite(loss) or loss <= THRESHOLDS["zero_loss"]:
            found.append(("zero_loss", f"the logged loss is {loss:g}: the margins are so large (or the batch so "
                          "degenerate) that nothing is learned, and NaN is close. Check for pairs with an empty or "
                          "identical response and lower learning_rate or pref_beta."))  # fmt: skip
        window = THRESHOLDS["displacement_window"]
        if len(self.train) > window:
            recent = self.train[-window - 1 :]
            chosen = [entry["logps/chosen"] for entry in recent]
            first = self.train[0]
            falling = all(later < earlier for earlier, later in zip(chosen, chosen[1:], strict=False))
            accuracy = sum(entry["rewards/accuracies"] for entry in recent[1:]) / window
            dropped = chosen[-1] < first["logps/chosen"] - THRESHOLDS["displacement_drop"] * abs(first["logps/chosen"])
            both = current["rewards/chosen"] < first["rewards/chosen"] and (
                current["rewards/rejected"] < first["rewards/rejected"]
            )
            if falling and accuracy >= THRESHOLDS["displacement_accuracy"] and dropped and both:
                found.append(("likelihood_displacement", f"the chosen log-prob per token fell from "
                              f"{first['logps/chosen']:.3f} to {chosen[-1]:.3f} over the run while preference "
                              f"accuracy is {accuracy:.2f} and both rewards drop: the model wins pairs by making "
                              "everything less likely, which precedes loops and gibberish. Lower learning_rate, "
                              "raise pref_beta, or add an SFT term (pref_ftx)."))  # fmt: skip
        return found

    def check_probe(self, logs: dict[str, float]) -> list[tuple[str, str]]:
        found, start = [], self.probe_start
        eos, eos0 = logs["probe/eos_rate"], start["probe/eos_rate"]
        if eos0 >= THRESHOLDS["eos_start"] and eos <= eos0 - THRESHOLDS["eos_drop"]:
            found.append(("eos_drop", f"the share of probe answers that end by themselves fell from {eos0:.2f} to "
                          f"{eos:.2f}: the model is losing its stop token (endless answers). Lower learning_rate; "
                          "check that the template appends EOS to every response."))  # fmt: skip
        rep, rep0 = logs["probe/repeat_4"], start["probe/repeat_4"]
        if rep >= rep0 + THRESHOLDS["repeat_rise"] and rep >= 2 * rep0:
            found.append(("repetition", f"repeated 4-grams in probe answers rose from {rep0:.3f} to {rep:.3f}: the "
                          "model is starting to loop. Lower learning_rate, raise the effective batch towards 128, "
                          "and prefer on-policy pairs (simpo-plugin pairs)."))  # fmt: skip
        dup, dup0 = logs.get("probe/duplicate_rate"), start.get("probe/duplicate_rate")
        new_duplicates = dup0 is not None and dup0 < THRESHOLDS["duplicate_start"]
        if dup is not None and new_duplicates and dup >= THRESHOLDS["duplicate_rate"]:
            found.append(("duplicates", f"{dup:.0%} of the probe prompts got the same answer as another prompt (at "
                          f"the start {dup0:.0%}): the model is collapsing to one answer for everything. Lower "
                          "learning_rate and raise the effective batch towards 128."))  # fmt: skip
        words, words0 = logs.get("probe/words"), start.get("probe/words")
        if words is not None and words0 is not None and words <= THRESHOLDS["few_words"]:
            if words0 >= THRESHOLDS["few_words_start"]:
                found.append(("short_answers", f"probe answers shrank to {words:.1f} words on average (from "
                              f"{words0:.1f} at the start): the model is learning to say as little as possible, "
                              "a collapse that length-normalized rewards allow. Lower learning_rate; check that "
                              f"chosen answers are not systematically shorter than rejected ones {self.lengths}."
                              ))  # fmt: skip
        length, length0 = logs["probe/length"], start["probe/length"]
        ratio = THRESHOLDS["length_ratio"]
        comparable = length0 >= THRESHOLDS["length_min_start"] and eos0 >= THRESHOLDS["length_eos_start"]
        if comparable and not length0 / ratio <= length <= length0 * ratio:
            found.append(("length_drift", f"the mean probe answer length went from {length0:.1f} to {length:.1f} "
                          f"tokens: SimPO is learning a length preference from the data. Compare the chosen and "
                          f"rejected lengths {self.lengths}, raise simpo_gamma_beta_ratio, or lower "
                          "learning_rate."))  # fmt: skip
        for key, high in logs.items():
            if key.startswith("probe/check_change_high/") and high < 0:
                name = key.rsplit("/", 1)[1]
                now, then = logs[f"probe/checks/{name}"], start.get(f"probe/checks/{name}", math.nan)
                found.append((f"check_drop_{name}", f"the `{name}` capability checks fell from {then:.0%} passed at "
                              f"the start to {now:.0%} (the 95% interval of the change ends at {high:+.0%}): SimPO "
                              "can cost skills the pairs do not cover (the paper: GSM8K, JSON). Lower "
                              "learning_rate, add an SFT term (pref_ftx) or pairs that use the skill."))  # fmt: skip
        return found

    def warn(self, name: str, message: str, state: Any, control: Any) -> None:
        if name in self.warned:
            return
        self.warned.add(name)
        step = state.global_step
        logger.warning_rank0(f"simpo-plugin: warning at step {step}: {message}")
        if state.log_history:
            state.log_history[-1][f"warning/{name}"] = 1.0
        if state.is_world_process_zero:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "warning": name, "message": message}) + "\n")
        if self.stop_on_collapse and name in COLLAPSE and self.stopped is None:
            self.stopped = (step, name)
            control.should_save = True
            control.should_training_stop = True
