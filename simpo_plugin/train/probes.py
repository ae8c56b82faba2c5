"""Generation probes during training: the model answers a fixed set of held-out prompts, greedily, every N
optimizer steps (and before the first step and at the end); the answers' health metrics are logged with the
other metrics, and every answer is appended to ``generations.jsonl``.

A Hugging Face ``TrainerCallback`` in the manner of TRL's ``WinRateCallback``: it holds the trainer only to log
through it. Distributed runs split the prompts over the ranks (padded so every rank makes the same generate
call; under DeepSpeed ZeRO-3 ``generate`` then keeps the ranks in step) and gather the answers, so every rank
logs the same numbers. The reference for the win rate is the first probe of the run; a resumed run takes it
back from ``generations.jsonl``.

Options: a judge (``simpo_probe_judge``) compares each answer with the start's answer to the same prompt
(``probe/judge_win_rate``, the mean P(now beats start), 0.5 at the start); capability checks
(``simpo_probe_checks``) are answered with the probe prompts and logged as ``probe/checks/<set>`` (share passed)
with ``probe/check_change_high/<set>``, the upper end of the paired 95% bootstrap interval of the change from the
start (below 0: a significant drop, which the collapse monitor names).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from llamafactory.extras import logging
from transformers import TrainerCallback

from ..errors import FeatureUnavailable, describe
from ..evaluation import Generated, dropped, passes, repeat_rate, summarize, text_units
from ..ranks import agreed
from ..sampling import HFSampler
from .gathering import outside_zero3, whole_for_generation


if TYPE_CHECKING:
    from ..sampling import Prompt


logger = logging.get_logger("llamafactory.simpo")
GENERATIONS_FILE = "generations.jsonl"
PREFIX = "probe/"


class ProbeFailed(FeatureUnavailable):
    """A probe failed on some rank; raised on all ranks together."""


@dataclass(frozen=True)
class ProbeSettings:
    every: int
    max_new_tokens: int
    scorer: Any = None  # an object with reward_model / reward_function / reward_template / reward_batch_size
    judge: str | None = None  # `package.module:function` or a chat model path
    judge_template: str | None = None
    checks: tuple = ()  # ((set name, tasks, check prompts), ...)


class GenerationProbe(TrainerCallback):
    def __init__(
        self,
        trainer: Any,
        prompts: list["Prompt"],
        tokenizer: Any,
        stop_ids: list[int],
        settings: ProbeSettings,
        model_args: Any = None,
        template_name: str | None = None,
    ) -> None:
        self.trainer, self.tokenizer, self.stop_ids = trainer, tokenizer, stop_ids
        self.settings, self.model_args, self.template_name = settings, model_args, template_name
        self.probed = len(prompts)  # prompts[probed:] are the capability checks' prompts
        self.prompts = list(prompts) + [p for _, _, check_prompts in settings.checks for p in check_prompts]
        self.tasks = [(name, task) for name, tasks, _ in settings.checks for task in tasks]  # of prompts[probed:]
        self.reference: list[float] | None = None
        self.reference_texts: dict[int, str] | None = None
        self.check_start: dict[str, list[bool]] | None = None
        self.scorer = None
        self.judge: Any = None
        self.last_step: int | None = None
        self.said_partitioned = False
        self.path = Path(trainer.args.output_dir) / GENERATIONS_FILE

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:  # resumed: the reference is the run's first probe, this step may be probed already
            self._restore_start()
            if any("probe/length" in e and e.get("step") == state.global_step for e in state.log_history):
                self.last_step = state.global_step
                return
        self.probe(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.settings.every and state.global_step % self.settings.every == 0:
            self.probe(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.last_step != state.global_step:
            self.probe(state.global_step)

    def _restore_start(self) -> None:
        """The start's scores (the reference), answers (for the judge) and check outcomes, from the run's first
        probe in ``generations.jsonl``; each stays None when that probe lacks it."""
        if not self.path.is_file():
            return
        records = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        first = min((r["step"] for r in records), default=None)
        by_key = {r["key"]: r for r in records if r["step"] == first}
        found = [by_key.get(prompt.key) for prompt in self.prompts]
        probed = found[: self.probed]
        if all(record is not None for record in probed):
            self.reference_texts = {i: record["response"] for i, record in enumerate(probed)}
            scores = [record.get("score") for record in probed]
            self.reference = None if any(score is None for score in scores) else scores
        if all(record is not None and "passed" in record for record in found[self.probed :]):
            self.check_start = self._check_outcomes({i: found[i]["passed"] for i in range(self.probed, len(found))})

    def _check_outcomes(self, passed: dict[int, bool]) -> dict[str, list[bool]]:
        outcomes: dict[str, list[bool]] = {name: [] for name, _, _ in self.settings.checks}
        for k, (name, _) in enumerate(self.tasks):
            outcomes[name].append(bool(passed[self.probed + k]))
        return outcomes

    def _task(self, index: int) -> dict | None:
        return self.tasks[index - self.probed][1] if index >= self.probed else None

    def _judged(self, indices: list[int], texts: list[str]) -> list[float | None]:
        """P(this answer beats the start's) for probe prompts; 0.5 at the start, None for check prompts."""
        if self.settings.judge is None:
            return [None] * len(indices)
        if self.reference_texts is None:
            return [0.5 if i < self.probed else None for i in indices]
        if self.judge is None:
            from ..evaluation import load_judge

            with outside_zero3():
                self.judge = load_judge(self.settings.judge, self.settings.judge_template, self.trainer.args.device)
        todo = [k for k, i in enumerate(indices) if i < self.probed]
        pairs = [(self.prompts[indices[k]], texts[k], self.reference_texts[indices[k]]) for k in todo]
        judged: list[float | None] = [None] * len(indices)
        for k, judgment in zip(todo, self.judge.judge(pairs), strict=True):
            judged[k] = judgment.p_a
        return judged

    def _my_share(self) -> tuple[list[int], int]:
        """This rank's prompt indices, padded with index 0 so every rank generates the same number of rows, and
        how many of them are its own."""
        accelerator = self.trainer.accelerator
        share = math.ceil(len(self.prompts) / accelerator.num_processes)
        start = accelerator.process_index * share
        mine = list(range(start, min(start + share, len(self.prompts))))
        return mine + [0] * (share - len(mine)), len(mine)

    def _score(self, prompts: list["Prompt"], texts: list[str]) -> list[float] | None:
        if self.settings.scorer is None:
            return None
        if self.scorer is None:
            from ..pairs import load_scorer

            with outside_zero3():
                self.scorer = load_scorer(
                    self.settings.scorer, self.model_args, self.template_name, device=self.trainer.args.device
                )
        return self.scorer.score(list(zip(prompts, texts, strict=True)))

    def probe(self, step: int) -> dict[str, float]:
        """Generate, gather, log; returns the logged metrics.

        Raises:
            ProbeFailed: on every rank together when any rank's generation, scoring or writing failed (the ranks
                agree first, so none is left waiting in a collective), naming the first cause seen here.
        """
        from accelerate.utils import gather_object

        indices, own = self._my_share()
        local = self._agreed(lambda: self._answer(indices, own))
        everything = sorted(gather_object(local))
        gathered = [record for record in everything if record[0] < self.probed]
        answers = [Generated(text, tokens, ended) for _, text, tokens, ended, *_ in gathered]
        all_scores = None if self.settings.scorer is None else [record[4] for record in gathered]
        if all_scores is not None and self.reference is None:
            self.reference = all_scores
        metrics = summarize(answers, all_scores, self.reference if all_scores is not None else None)
        if self.settings.judge is not None:
            metrics["judge_win_rate"] = sum(record[5] for record in gathered) / len(gathered)
        if self.reference_texts is None:
            self.reference_texts = {record[0]: record[1] for record in gathered}
        if self.settings.checks:
            metrics |= self._check_metrics({record[0]: record[6] for record in everything if record[0] >= self.probed})
        if self.trainer.is_world_process_zero():
            self._agreed(lambda: self._write(step, everything))
        else:
            self._agreed(lambda: None)
        logs = {f"{PREFIX}{key}": value for key, value in metrics.items()}
        should_log = self.trainer.control.should_log
        self.trainer.log(logs)
        self.trainer.control.should_log = should_log  # logging clears the flag; the step's own log is still due
        self.last_step = step
        return logs

    def _answer(self, indices: list[int], own: int) -> list[tuple]:
        """This rank's greedy answers (and scores) as (index, text, tokens, ended, score) records."""
        model = self.trainer.model
        decoding = SimpleNamespace(num_samples=1, temperature=0.0, top_p=1.0, seed=0,
                                   max_new_tokens=self.settings.max_new_tokens)  # fmt: skip
        was_training = model.training
        model.eval()
        try:
            with whole_for_generation(model, self.trainer.model_wrapped, self.trainer.args.device) as partitioned:
                if partitioned is not None and not self.said_partitioned:
                    logger.warning_rank0(f"simpo-plugin: generation probes run on ZeRO-3's partitions: {partitioned}")
                    self.said_partitioned = True
                samples = HFSampler(model, self.tokenizer, self.stop_ids, decoding).sample(
                    [self.prompts[i] for i in indices]
                )
        finally:
            model.train(was_training)
        texts = [row[0].text for row in samples]
        probed = [k for k, i in enumerate(indices) if i < self.probed]
        scored = self._score([self.prompts[indices[k]] for k in probed], [texts[k] for k in probed])
        scores = dict(zip(probed, scored, strict=True)) if scored is not None else {}
        judged = self._judged(indices, texts)
        records = []
        for k, (i, row) in enumerate(zip(indices, samples, strict=True)):
            task = self._task(i)
            passed = None if task is None else passes(task, row[0].text)
            records.append((i, row[0].text, row[0].tokens, not row[0].truncated, scores.get(k), judged[k], passed))
        return records[:own]

    def _check_metrics(self, passed: dict[int, bool]) -> dict[str, float]:
        """Each check set's share passed and the upper end of the 95% interval of its change from the start."""
        outcomes = self._check_outcomes(passed)
        if self.check_start is None:
            self.check_start = outcomes
        metrics = {}
        for name, now in outcomes.items():
            metrics[f"checks/{name}"] = sum(now) / len(now)
            _, (_, high), _ = dropped(self.check_start[name], now)
            metrics[f"check_change_high/{name}"] = high / 100
        return metrics

    def _agreed(self, work: Any) -> Any:
        """Run ``work`` here; raise :class:`ProbeFailed` on every rank if it failed on any."""
        try:
            result, error = work(), None
        except Exception as exc:  # noqa: BLE001 - turned into one agreed failure below
            result, error = None, exc
        if not agreed(error is None, self.trainer.args.device):
            raise ProbeFailed(describe(error) if error is not None else "it failed on another rank") from error
        return result

    def _write(self, step: int, gathered: list[tuple]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for index, text, tokens, ended, score, judged, passed in gathered:
                prompt = self.prompts[index]
                record = {
                    "step": step, "index": index, "key": prompt.key, "source": prompt.source,
                    "prompt": prompt.messages[-1]["content"], "response": text, "tokens": tokens, "ended": ended,
                    "repeat_4": repeat_rate(text_units(text)), "score": score,
                }  # fmt: skip
                if judged is not None:
                    record["judge_p"] = judged
                if passed is not None:
                    record["passed"] = passed
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
