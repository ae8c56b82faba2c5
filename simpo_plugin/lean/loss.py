"""SimPO's objective as pure functions of per-sequence log-probability sums and lengths."""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import SimPOObjective


class SimPOLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar that is optimized
    losses: torch.Tensor  # (B,) preference loss per pair, SFT term excluded
    chosen_rewards: torch.Tensor  # (B,) beta * mean log-prob of the chosen response
    rejected_rewards: torch.Tensor  # (B,)
    sft_loss: torch.Tensor  # scalar mean NLL per chosen token (0 when unused)


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    config: SimPOObjective,
) -> SimPOLossOutput:
    r"""SimPO loss (Meng et al. 2024, Eq. 6) with the official implementation's options.

    With ``r = beta / |y| * log pi(y|x)`` (mean log-prob over response tokens) and
    ``h = r_chosen - r_rejected - gamma``:

    - sigmoid: ``-(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)`` (``eps`` = label smoothing),
    - hinge: ``relu(1 - h)``,

    averaged over pairs, plus ``sft_weight`` times the chosen responses' NLL per token (token-level mean over the
    batch, as the official ``sft_weight`` cross-entropy term). With ``config.length_normalization`` off (an
    ablation), ``r = beta * log pi(y|x)`` uses the summed log-prob instead.

    Args:
        chosen_logps: (B,) sum of token log-probs of each chosen response, fp32.
        rejected_logps: (B,) same for the rejected responses.
        chosen_lengths: (B,) number of response tokens (EOS included), > 0.
        rejected_lengths: (B,) same for the rejected responses.
        config: beta, gamma (absolute), loss type, label smoothing and SFT weight.

    Returns:
        The scalar loss, per-pair losses, rewards (detached) and the SFT term.
    """
    if config.length_normalization:
        chosen_avg, rejected_avg = chosen_logps / chosen_lengths, rejected_logps / rejected_lengths
    else:  # the paper's "w/o length normalization" ablation: rewards from summed log-probs
        chosen_avg, rejected_avg = chosen_logps, rejected_logps
    margin = config.beta * (chosen_avg - rejected_avg) - config.gamma

    if config.loss_type == "sigmoid":
        eps = config.label_smoothing
        losses = -(1.0 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    elif config.loss_type == "hinge":
        losses = torch.relu(1.0 - margin)
    else:
        raise ValueError(f"Unknown SimPO loss type `{config.loss_type}`; use `sigmoid` or `hinge`.")

    loss = losses.mean()
    if config.sft_weight > 0:
        sft_loss = -chosen_logps.sum() / chosen_lengths.sum()
        loss = loss + config.sft_weight * sft_loss
    else:
        sft_loss = torch.zeros((), dtype=losses.dtype, device=losses.device)

    return SimPOLossOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=(config.beta * chosen_avg).detach(),
        rejected_rewards=(config.beta * rejected_avg).detach(),
        sft_loss=sft_loss.detach(),
    )


class SimPOLoss:
    """Callable wrapper that carries the config and declares that no reference model is needed."""

    is_reference_free = True

    def __init__(self, config: SimPOObjective) -> None:
        self.config = config

    def __call__(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        chosen_lengths: torch.Tensor,
        rejected_lengths: torch.Tensor,
    ) -> SimPOLossOutput:
        return simpo_loss(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, self.config)
