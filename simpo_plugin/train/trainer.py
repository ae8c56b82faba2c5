"""SimPOTrainer: the SimPO loss and its metrics on top of the host's preference trainer.

Everything that is not the objective (optimizer and scheduler choices, BAdam, processor saving, samplers,
DeepSpeed/FSDP wiring, checkpointing) is inherited from LLaMA-Factory's ``CustomDPOTrainer`` constructed
without a reference model, exactly as the host runs its own reference-free losses.
"""

import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from torch.utils.data import IterableDataset
from transformers import Trainer
from typing_extensions import override

from ..lean import EmptyResponseError, SequenceLogps, SimPOLoss
from .checkpoints import checkpoint_dir, unmark, write_manifest
from .collate import LAYOUT_KEY, LayoutCollator
from .grad_buffers import GradientBuffers
from .guards import NonFiniteGuard
from .preemption import PreemptionGuard, load_cpu_rank_locations


if TYPE_CHECKING:
    from llamafactory.hparams import FinetuningArguments
    from transformers import PreTrainedModel, ProcessorMixin

    from .hparams import SimPOConfig


class SimPOTrainer(CustomDPOTrainer):
    """Reference-free preference trainer that optimizes the SimPO objective."""

    def __init__(
        self,
        model: "PreTrainedModel",
        simpo_config: "SimPOConfig",
        finetuning_args: "FinetuningArguments",
        processor: "ProcessorMixin | None",
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, ref_model=None, finetuning_args=finetuning_args, processor=processor, **kwargs)
        self.simpo_loss = SimPOLoss(simpo_config)
        self.sequence_logps = SequenceLogps(simpo_config)
        self.preemption = PreemptionGuard()
        self.add_callback(self.preemption)
        self._grad_norm: torch.Tensor | None = None
        self._keep_grad_norm()
        self.add_callback(NonFiniteGuard(grad_norm=self._take_grad_norm))  # after the preemption's stop: a
        # checkpoint it asks for is checked first
        on_cpu = self.args.device.type == "cpu"
        if on_cpu and self.args.world_size > 1:
            load_cpu_rank_locations()
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled  # these keep gradients in their own buffers
        if simpo_config.cpu_gradient_buffers and on_cpu and self.args.world_size == 1 and not sharded:
            self.add_callback(GradientBuffers())
        self._stored_metrics = defaultdict(lambda: defaultdict(list))
        self._plan_layouts()

    def _keep_grad_norm(self) -> None:
        """Keep the total norm the host's clipping computes (accelerate's ``clip_grad_norm_``) for the guard."""
        clip = self.accelerator.clip_grad_norm_

        def clip_and_keep(*args: Any, **kwargs: Any) -> Any:
            norm = clip(*args, **kwargs)
            self._grad_norm = norm if isinstance(norm, torch.Tensor) and norm.numel() == 1 else None
            return norm

        self.accelerator.clip_grad_norm_ = clip_and_keep

    def _take_grad_norm(self) -> torch.Tensor | None:
        norm, self._grad_norm = self._grad_norm, None
        return norm

    def _plan_layouts(self) -> None:
        """Let the collator build each batch's layout on the CPU, unless accelerate dispatches batches (streaming
        over several processes: the first process collates everyone's rows and slices them, so a layout built by
        the collator would describe rows this process never sees; the step builds it then)."""
        collator = self.data_collator
        if not isinstance(collator, LayoutCollator):
            return
        datasets = [self.train_dataset, *((self.eval_dataset or {}).values() if isinstance(self.eval_dataset, dict)
                                         else [self.eval_dataset])]  # fmt: skip
        streamed = any(isinstance(dataset, IterableDataset) for dataset in datasets)
        dispatch = getattr(getattr(self.accelerator, "dataloader_config", None), "dispatch_batches", None)
        if dispatch or (dispatch is None and streamed):
            collator.plan = None
            return
        collator.plan = self.sequence_logps.plan_for(self.model)

    @override
    def _save_checkpoint(self, model: "PreTrainedModel", trial: Any) -> None:
        """The host's checkpoint, marked complete once every rank has written its part (see .checkpoints)."""
        folder = checkpoint_dir(self.args.output_dir, self.state.global_step)
        if self.is_local_process_zero():
            unmark(folder)
        self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.is_local_process_zero() and os.path.isdir(folder):
            write_manifest(folder)
        self.accelerator.wait_for_everyone()  # no rank stops or resumes before the mark is there

    @override
    def get_batch_loss_metrics(
        self,
        model: "PreTrainedModel",
        batch: dict[str, torch.Tensor],
        train_eval: Literal["train", "eval"] = "train",
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Loss and detached per-pair metrics of one batch laid out as [chosen rows; rejected rows].

        Returns:
            The loss and, per metric name (without a prefix), ``(values, weights)``: (B,) tensors whose weighted mean
            over any set of pairs is the metric over those pairs (weight 1 per pair; response tokens for the
            token-level ``sft_loss``), so that windows and ranks pool by pair, whatever the batch sizes.
        """
        batch = dict(batch)
        prepared = batch.pop(LAYOUT_KEY, None)
        try:
            logps, lengths = self.sequence_logps(model, self.accelerator.unwrap_model(model), batch, prepared)
        except EmptyResponseError as exc:
            raise ValueError(
                "A preference pair has an empty response after truncation to `cutoff_len`; its mean log-prob is "
                "undefined. Raise `cutoff_len` or shorten the prompts."
            ) from exc
        lengths = lengths.to(logps.dtype)
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_lengths, rejected_lengths = lengths.chunk(2)
        out = self.simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)

        per_pair = torch.ones_like(out.losses)
        metrics = {
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
            "rewards/margins": out.chosen_rewards - out.rejected_rewards,
            "logps/chosen": (chosen_logps / chosen_lengths).detach(),
            "logps/rejected": (rejected_logps / rejected_lengths).detach(),
            "lengths/chosen": chosen_lengths,
            "lengths/rejected": rejected_lengths,
        }
        weighted = {key: (value.detach().float(), per_pair) for key, value in metrics.items()}
        weighted["loss"] = (out.losses.detach().float(), per_pair)  # the preference term; evaluation reports it
        if self.simpo_loss.config.sft_weight > 0:  # NLL per chosen token, pooled over tokens
            weighted["sft_loss"] = ((-chosen_logps / chosen_lengths).detach().float(), chosen_lengths.float())
        return out.loss, weighted

    @override
    def compute_loss(
        self, model: "PreTrainedModel", inputs: dict[str, torch.Tensor], return_outputs: bool = False, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="train")
        metrics.pop("loss")  # training logs the host's running loss, the objective as optimized
        self.store_metrics(metrics, train_eval="train")
        return (loss, metrics) if return_outputs else loss

    @override
    def prediction_step(
        self,
        model: "PreTrainedModel",
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation computes the same loss and metrics as training; SimPO has no logits to return.

        The per-pair metrics are gathered from every rank here, without the pairs the sampler repeats to even out
        the last batch (``gather_for_metrics``), exactly as the host's evaluation loop gathers the losses.
        """
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="eval")
        names = list(metrics)
        stacked = torch.stack([torch.stack(metrics[name]) for name in names], dim=-1)  # (2, B, metrics)
        stacked = self.accelerator.gather_for_metrics(stacked.transpose(0, 1)).transpose(0, 1)  # (2, B_all, metrics)
        self.store_metrics({name: (stacked[0, :, i], stacked[1, :, i]) for i, name in enumerate(names)}, "eval")
        return loss.detach(), None, None

    @override
    def store_metrics(
        self, metrics: dict[str, tuple[torch.Tensor, torch.Tensor]], train_eval: Literal["train", "eval"] = "train"
    ) -> None:
        """Keep each metric's weighted sum and weight on device: no host sync per step."""
        for key, (values, weights) in metrics.items():
            self._stored_metrics[train_eval][key].append(torch.stack([(values * weights).sum(), weights.sum()]))

    @override
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:  # fmt: skip
        """As the host's; remembers the prefix (``eval_<dataset>`` with ``eval_on_each_dataset``) for :meth:`log`."""
        self._metric_key_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    @override
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the stored metrics to ``logs``: per-pair means over the logging (or evaluation) window and ranks.

        Training windows are summed over ranks here; evaluation metrics were gathered per batch already. Eval
        metrics carry the evaluation's prefix, so each eval dataset keeps its own numbers, and the eval loss is
        replaced by its mean over the evaluated pairs: the host's averages batch means, which counts the pairs a
        distributed sampler repeats to even out the last batch.
        """
        train_eval = "train" if "loss" in logs else "eval"
        probing = any(key.startswith("probe/") for key in logs)  # a generation probe logs its own numbers
        stored = {} if probing else self._stored_metrics.pop(train_eval, {})
        if stored:
            keys = list(stored)
            totals = torch.stack([torch.stack(stored[key]).sum(0) for key in keys]).to(self.accelerator.device)
            if train_eval == "train":
                totals = self.accelerator.reduce(totals, reduction="sum")
            means = (totals[:, 0] / totals[:, 1].clamp_min(torch.finfo(totals.dtype).tiny)).tolist()
            pooled = dict(zip(keys, means, strict=True))
            if "loss" in pooled:  # evaluation: the loss over the pairs themselves, not over padded batches
                pooled["loss"] += self.simpo_loss.config.sft_weight * pooled.get("sft_loss", 0.0)
            prefix = "" if train_eval == "train" else f"{getattr(self, '_metric_key_prefix', 'eval')}_"
            logs.update({f"{prefix}{key}": mean for key, mean in pooled.items()})
        return Trainer.log(self, logs, *args, **kwargs)
