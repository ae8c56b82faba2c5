"""SimPOTrainer: the SimPO loss and its metrics on top of the host's preference trainer.

Everything that is not the objective (optimizer and scheduler choices, BAdam, processor saving, samplers,
DeepSpeed/FSDP wiring, checkpointing) is inherited from LLaMA-Factory's ``CustomDPOTrainer`` constructed
without a reference model, exactly as the host runs its own reference-free losses.
"""

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Literal

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from transformers import Trainer
from typing_extensions import override

from .grad_buffers import GradientBuffers
from .guards import NonFiniteGuard
from .lean import SequenceLogps
from .loss import SimPOLoss
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
        self.add_callback(NonFiniteGuard())
        self.preemption = PreemptionGuard()
        self.add_callback(self.preemption)
        on_cpu = self.args.device.type == "cpu"
        if on_cpu and self.args.world_size > 1:
            load_cpu_rank_locations()
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled  # these keep gradients in their own buffers
        if simpo_config.cpu_gradient_buffers and on_cpu and self.args.world_size == 1 and not sharded:
            self.add_callback(GradientBuffers())
        self._stored_metrics = defaultdict(lambda: defaultdict(list))

    @override
    def get_batch_loss_metrics(
        self,
        model: "PreTrainedModel",
        batch: dict[str, torch.Tensor],
        train_eval: Literal["train", "eval"] = "train",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and detached metrics of one batch laid out as [chosen rows; rejected rows]."""
        logps, lengths = self.sequence_logps(model, self.accelerator.unwrap_model(model), batch)
        if bool((lengths == 0).any()):
            raise ValueError(
                "A preference pair has an empty response after truncation to `cutoff_len`; its mean log-prob is "
                "undefined. Raise `cutoff_len` or shorten the prompts."
            )
        lengths = lengths.to(logps.dtype)
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_lengths, rejected_lengths = lengths.chunk(2)
        out = self.simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)

        prefix = "eval_" if train_eval == "eval" else ""
        metrics = {
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().mean(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).mean(),
            "logps/chosen": (chosen_logps / chosen_lengths).detach().mean(),
            "logps/rejected": (rejected_logps / rejected_lengths).detach().mean(),
            "lengths/chosen": chosen_lengths.mean(),
            "lengths/rejected": rejected_lengths.mean(),
        }
        if self.simpo_loss.config.sft_weight > 0:
            metrics["sft_loss"] = out.sft_loss
        return out.loss, {f"{prefix}{key}": value for key, value in metrics.items()}

    @override
    def compute_loss(
        self, model: "PreTrainedModel", inputs: dict[str, torch.Tensor], return_outputs: bool = False, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="train")
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
        """Evaluation computes the same loss and metrics as training; SimPO has no logits to return."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="eval")
        self.store_metrics(metrics, train_eval="eval")
        return loss.detach(), None, None

    @override
    def store_metrics(self, metrics: dict[str, torch.Tensor], train_eval: Literal["train", "eval"] = "train") -> None:
        # Tensors are kept on device and averaged at logging time: no host sync per step.
        for key, value in metrics.items():
            self._stored_metrics[train_eval][key].append(value.detach().float())

    @override
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the stored metrics, averaged over steps and then over ranks, to ``logs``."""
        train_eval = "train" if "loss" in logs else "eval"
        probing = any(key.startswith("probe/") for key in logs)  # a generation probe logs its own numbers
        stored = {} if probing else self._stored_metrics.pop(train_eval, {})
        if stored:
            keys = list(stored)
            means = torch.stack([torch.stack(stored[key]).mean() for key in keys]).to(self.accelerator.device)
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update(zip(keys, means.tolist(), strict=True))
        return Trainer.log(self, logs, *args, **kwargs)
