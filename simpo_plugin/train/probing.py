"""Wires the generation probe and the collapse monitor into a ``stage: simpo`` run (the stage's side only).

The probe prompts are the first unique prompts of the eval datasets when the run has any, else of the training
datasets, read and rendered as ``simpo-plugin pairs`` reads them (:func:`load_prompts`), so the same prompts are
probed for the whole run and across resumes.
"""

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from llamafactory.extras import logging

from ..evaluation import check_prompts, load_check_set
from ..pairs import check_scorer
from ..sampling import load_prompts
from .monitor import CollapseMonitor
from .optional import guard, optional
from .probes import GenerationProbe, ProbeSettings


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments

    from .hparams import SimPOConfig


logger = logging.get_logger("llamafactory.simpo")
PROBE_ROWS = 1024  # rows read per dataset to find probe prompts that fit cutoff_len
PROBE_FIX = "Set `simpo_probe_steps: 0` to silence this, or fix the cause it names."


def probe_scorer(config: "SimPOConfig", template_name: str | None) -> SimpleNamespace | None:
    if not (config.probe_reward_model or config.probe_reward_function):
        return None
    return SimpleNamespace(
        reward_model=config.probe_reward_model,
        reward_function=config.probe_reward_function,
        reward_template=template_name,
        reward_batch_size=8,
    )


def probe_prompts(
    config: "SimPOConfig", model_args: "ModelArguments", data_args: "DataArguments", template: Any, tokenizer: Any
) -> list:
    """The first ``probe_prompts`` unique prompts that fit ``cutoff_len``, among the first rows of the datasets.

    Prompts longer than ``cutoff_len`` are legal training data (the host truncates them) but are not probed:
    a truncated prompt loses its end, the turn the model answers.
    """
    source = copy.copy(data_args)
    source.dataset = list(data_args.eval_dataset or data_args.dataset)
    source.max_samples = None if data_args.streaming else PROBE_ROWS  # the host's max_samples needs a sized dataset
    prompt_set = load_prompts(model_args, source, template, tokenizer, max_rows=PROBE_ROWS)
    prompts = prompt_set.prompts[: config.probe_prompts]
    if len(prompts) < config.probe_prompts:
        logger.info_rank0(
            f"Generation probes: {len(prompts)} prompts (asked for {config.probe_prompts}) among the first "
            f"{PROBE_ROWS} rows of {', '.join(source.dataset)}: {prompt_set.too_long} longer than cutoff_len="
            f"{data_args.cutoff_len}, {prompt_set.duplicates} duplicates"
        )
    return prompts


def build_probe(
    trainer: Any,
    config: "SimPOConfig",
    model_args: "ModelArguments",
    data_args: "DataArguments",
    template: Any,
    tokenizer: Any,
) -> GenerationProbe:
    prompts = probe_prompts(config, model_args, data_args, template, tokenizer)
    scorer = probe_scorer(config, data_args.template)
    checked = scorer is None or optional("Probe rewards", PROBE_FIX, lambda: check_scorer(scorer, model_args) or True)
    scorer = scorer if checked else None
    checks = []
    for spec in (config.probe_checks or "").split(","):
        if spec.strip():
            name, tasks = load_check_set(spec.strip())
            checks.append((name, tasks, check_prompts(tasks, template, tokenizer, name)))
    settings = ProbeSettings(
        every=config.probe_steps, max_new_tokens=config.probe_max_new_tokens, scorer=scorer,
        judge=config.probe_judge, judge_template=data_args.template, checks=tuple(checks),
    )  # fmt: skip
    stop_ids = template.get_stop_token_ids(tokenizer)
    return GenerationProbe(trainer, prompts, tokenizer, stop_ids, settings, model_args, data_args.template)


def attach_watchers(
    trainer: Any,
    config: "SimPOConfig",
    model_args: "ModelArguments",
    data_args: "DataArguments",
    template: Any,
    tokenizer: Any,
) -> CollapseMonitor:
    """Add the monitor, and the probe when ``simpo_probe_steps`` > 0; returns the monitor.

    Both are optional features: a failure turns the one that failed off with one warning line (its build, or any
    of its events later), and training goes on.
    """
    report = Path(data_args.dataset_dir, "pairs_report.md")  # present when the data came from `simpo-plugin pairs`
    names = ", ".join(f"`{name}`" for name in data_args.dataset or [])
    lengths = f"(the length share in {report})" if report.is_file() else f"in {names}"
    monitor = CollapseMonitor(trainer.args.output_dir, config.stop_on_collapse, lengths)
    guarded = guard(monitor, "The collapse monitor", "Report the cause it names.")
    callbacks = trainer.callback_handler.callbacks  # before the host's LogCallback: its row then has the warnings
    host_log = next((i for i, cb in enumerate(callbacks) if type(cb).__name__ == "LogCallback"), len(callbacks))
    callbacks.insert(host_log, guarded)
    if config.probe_steps > 0:
        build = lambda: build_probe(trainer, config, model_args, data_args, template, tokenizer)  # noqa: E731
        probe = optional("Generation probes", PROBE_FIX, build)
        if probe is not None:
            trainer.add_callback(guard(probe, "Generation probes", PROBE_FIX))
    return monitor
