"""Wires the generation probe and the collapse monitor into a ``stage: simpo`` run (the stage's side only).

The probe prompts are the first unique prompts of the eval datasets when the run has any, else of the training
datasets, read and rendered as ``simpo-plugin pairs`` reads them (:func:`load_prompts`), so the same prompts are
probed for the whole run and across resumes.
"""

import copy
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .generation.probes import GenerationProbe, ProbeSettings
from .generation.prompts import load_prompts
from .generation.scorers import check_scorer
from .monitor import CollapseMonitor


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, ModelArguments

    from .hparams import SimPOConfig

ROWS_PER_PROMPT = 4  # rows read per probe prompt: room for duplicates and unusable rows


def probe_scorer(config: "SimPOConfig", template_name: str | None) -> SimpleNamespace | None:
    if not (config.probe_reward_model or config.probe_reward_function):
        return None
    return SimpleNamespace(
        reward_model=config.probe_reward_model,
        reward_function=config.probe_reward_function,
        reward_template=template_name,
        reward_batch_size=8,
    )


def build_probe(
    trainer: Any,
    config: "SimPOConfig",
    model_args: "ModelArguments",
    data_args: "DataArguments",
    template: Any,
    tokenizer: Any,
) -> GenerationProbe:
    source = copy.copy(data_args)
    source.dataset = list(data_args.eval_dataset or data_args.dataset)
    source.max_samples = max(ROWS_PER_PROMPT * config.probe_prompts, 64)
    prompts = load_prompts(model_args, source, template, tokenizer).prompts[: config.probe_prompts]
    scorer = probe_scorer(config, data_args.template)
    if scorer is not None:
        check_scorer(scorer, model_args)
    settings = ProbeSettings(every=config.probe_steps, max_new_tokens=config.probe_max_new_tokens, scorer=scorer)
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
    """Add the monitor, and the probe when ``simpo_probe_steps`` > 0; returns the monitor."""
    monitor = CollapseMonitor(trainer.args.output_dir, config.stop_on_collapse)
    trainer.add_callback(monitor)
    if config.probe_steps > 0:
        trainer.add_callback(build_probe(trainer, config, model_args, data_args, template, tokenizer))
    return monitor
