"""run_simpo: the SimPO stage, wired from the host's own building blocks in the order of its ``run_dpo``."""

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from llamafactory.data import PairwiseDataCollatorWithPadding, get_dataset, get_template_and_fix_tokenizer
from llamafactory.extras import logging
from llamafactory.extras.constants import IGNORE_INDEX
from llamafactory.extras.misc import calculate_tps
from llamafactory.extras.ploting import plot_loss
from llamafactory.model import load_config, load_model, load_tokenizer
from llamafactory.train.trainer_utils import create_modelcard_and_push

from ..data import converter_warnings
from ..errors import SimPOArgumentError
from ..exits import record_exit_code
from ..recap import recapped
from .checkpoints import checkpoint_dir
from .collate import LayoutCollator
from .cutoff import check_prompt_cuts
from .data_checks import (
    check_preference_datasets,
    check_raw_datasets,
    drop_empty_pairs,
    has_rows,
    without_blank_responses,
)
from .hparams import SimPOCollapseStop, check_flash_attention
from .optional import optional
from .plots import plot_simpo_curves
from .preemption import SimPOPreempted
from .probing import attach_watchers


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, FinetuningArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments, TrainerCallback

    from .trainer import SimPOTrainer


logger = logging.get_logger("llamafactory.simpo")  # inherit the host's log handler and format


@contextmanager
def explain_dataset_errors(data_args: "DataArguments") -> Iterator[None]:
    """Turn the loader's bare errors on malformed preference data into messages that name dataset and column."""
    names = ", ".join(f"`{name}`" for name in (data_args.dataset or []) + (data_args.eval_dataset or []))
    info = Path(data_args.dataset_dir, "dataset_info.json").resolve()
    try:
        yield
    except KeyError as exc:
        raise SimPOArgumentError(
            f"Dataset {names}: the `columns` mapping in {info} names the column {exc}, which the data file's rows "
            "do not have. SimPO needs a prompt and chosen/rejected responses: make the mapping name the file's "
            "own column names."
        ) from exc
    except ValueError as exc:
        if "corresponds to no data" in str(exc):
            raise SimPOArgumentError(f"Dataset {names} is empty; add preference pairs to its file.") from exc
        raise


def run_simpo(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "FinetuningArguments",
    callbacks: list["TrainerCallback"] | None = None,
) -> None:
    """Train and evaluate, then free the trainer while the interpreter is fully alive.

    The trainer, its DDP wrapper and their process-group work objects sit in reference cycles; left to the
    interpreter's teardown (after the host destroys the process group), gloo can abort the process at exit.
    """
    with recapped(logger):  # the run's last lines say again what it warned about: warnings scroll away in the bars
        preempted = _train_and_evaluate(model_args, data_args, training_args, finetuning_args, callbacks)
    gc.collect()
    if preempted is not None:
        raise preempted


def _train_and_evaluate(
    model_args: "ModelArguments",
    data_args: "DataArguments",
    training_args: "Seq2SeqTrainingArguments",
    finetuning_args: "FinetuningArguments",
    callbacks: list["TrainerCallback"] | None,
) -> SimPOPreempted | None:
    """Returns the stop to raise when a signal ended training (raised by the caller, once the trainer is freed)."""
    simpo_config = finetuning_args.stage_args
    logger.info_rank0(simpo_config.summary())
    check_preference_datasets(data_args)

    tokenizer_module = load_tokenizer(model_args)
    tokenizer = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    with explain_dataset_errors(data_args):
        check_raw_datasets(model_args, data_args, training_args)
        quiet = nullcontext() if data_args.streaming else converter_warnings()  # already reported above, once
        with without_blank_responses(), quiet:
            dataset_module = get_dataset(
                template, model_args, data_args, training_args, stage="rm", **tokenizer_module
            )
    drop_empty_pairs(dataset_module, data_args.cutoff_len)
    if training_args.do_train and not has_rows(dataset_module.get("train_dataset")):
        raise SimPOArgumentError(
            f"No training pairs left in {data_args.dataset} after preprocessing; check that the dataset is not empty "
            f"and that `cutoff_len` ({data_args.cutoff_len}) leaves room for the responses."
        )
    if training_args.do_train:
        check_prompt_cuts(dataset_module.get("train_dataset"), template, tokenizer, model_args, data_args,
                          training_args)  # fmt: skip
    check_flash_attention(model_args, model_type=lambda: getattr(load_config(model_args), "model_type", None))
    model = load_model(tokenizer, model_args, finetuning_args, training_args.do_train)

    data_collator = LayoutCollator(
        PairwiseDataCollatorWithPadding(
            template=template,
            model=model,
            pad_to_multiple_of=8,
            label_pad_token_id=IGNORE_INDEX if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
            **tokenizer_module,
        )
    )

    from .trainer import SimPOTrainer

    trainer = SimPOTrainer(
        model=model,
        simpo_config=simpo_config,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=data_collator,
        callbacks=callbacks,
        **dataset_module,
        **tokenizer_module,
    )

    monitor = attach_watchers(trainer, simpo_config, model_args, data_args, template, tokenizer)
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if trainer.preemption.stopped is not None:
            return _stop_after_preemption(trainer, training_args.output_dir)
        trainer.save_model()
        if finetuning_args.include_effective_tokens_per_second:
            train_result.metrics["effective_tokens_per_sec"] = calculate_tps(
                dataset_module["train_dataset"], train_result.metrics, stage="rm"
            )

        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and finetuning_args.plot_loss:
            optional("Plots", "Set `plot_loss: false` to silence this.", lambda: _plot(training_args.output_dir))

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    create_modelcard_and_push(trainer, model_args, data_args, training_args, finetuning_args)
    trainer.accelerator.wait_for_everyone()  # no rank exits, and tears the group down, while rank 0 still writes
    if monitor.stopped is not None:
        step, name = monitor.stopped
        checkpoint = checkpoint_dir(training_args.output_dir, step)
        raise SimPOCollapseStop(
            f"training stopped at step {step} on the `{name}` warning (simpo_stop_on_collapse). The checkpoint is "
            f"{checkpoint}: resume as is with `resume_from_checkpoint: {checkpoint}`, or start a new run from its "
            f"weights (`model_name_or_path: {checkpoint}`) with a lower learning_rate."
        )
    return None


def _plot(output_dir: str) -> None:
    plot_loss(output_dir, keys=["loss"])  # the host's own figure, kept for familiarity
    for path in plot_simpo_curves(output_dir):
        logger.info_rank0(f"Figure saved at: {path}")


def _stop_after_preemption(trainer: "SimPOTrainer", output_dir: str) -> SimPOPreempted:
    """Once every rank has written its part of the checkpoint, say how to resume (rank 0, one line)."""
    step, signum = trainer.preemption.stopped
    trainer.accelerator.wait_for_everyone()
    preempted = SimPOPreempted(step, signum, checkpoint_dir(output_dir, step))
    record_exit_code(preempted.code)
    if trainer.is_world_process_zero():
        sys.stderr.write(preempted.line + "\n")
        sys.stderr.flush()
    return preempted
