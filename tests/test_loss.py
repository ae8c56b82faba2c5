"""SimPO's loss: hand-worked numbers, an independent re-statement, and cross-checks against TRL and the host.

The loss takes per-sequence SUMS of token log-probs plus response lengths; TRL's ``CPOTrainer.cpo_loss`` and the
host's ``CustomDPOTrainer.simpo_loss`` take the already averaged log-probs, so the cross-checks divide first.
"""

import math
import types
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import CPOConfig, CPOTrainer

from simpo_plugin.lean import SimPOLoss, SimPOLossOutput, SimPOObjective, simpo_loss


ATOL = 1e-6
RTOL = 1e-6  # float32 inputs: values of a few units carry ~1e-7 relative rounding
SEEDS = (0, 1, 2)
BATCH_SIZES = (1, 4, 7)
# (loss_type, label_smoothing); label smoothing is only defined for the sigmoid loss.
OBJECTIVES = (("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0))
SFT_WEIGHTS = (0.0, 0.7)


def t(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def assert_close(actual: torch.Tensor, expected: torch.Tensor | float) -> None:
    """Compare in float64 so that the tolerance, not the dtype of either side, decides."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.detach().double(), expected, atol=ATOL, rtol=RTOL)


def random_batch(seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums of log-probs whose per-token means lie in [-3, -0.05], over lengths 1-24 (float32, like the trainer)."""
    gen = torch.Generator().manual_seed(seed)
    chosen_lengths = torch.randint(1, 25, (batch_size,), generator=gen).float()
    rejected_lengths = torch.randint(1, 25, (batch_size,), generator=gen).float()
    chosen_means = -0.05 - 2.95 * torch.rand(batch_size, generator=gen)
    rejected_means = -0.05 - 2.95 * torch.rand(batch_size, generator=gen)
    return chosen_means * chosen_lengths, rejected_means * rejected_lengths, chosen_lengths, rejected_lengths


def random_hparams(seed: int) -> tuple[float, float]:
    """beta in [1, 10] and gamma = ratio * beta with ratio in [0, 1], so margins fall on both sides of zero."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    beta = 1.0 + 9.0 * torch.rand((), generator=gen).item()
    return beta, beta * torch.rand((), generator=gen).item()


# --------------------------------------------------------------------------------------------------------------------
# 1. Hand-worked numbers
# --------------------------------------------------------------------------------------------------------------------


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two pairs whose mean log-probs are whole numbers (chosen -4/4, -6/2; rejected -9/3, -10/5)."""
    return t(-4.0, -6.0), t(-9.0, -10.0), t(4.0, 2.0), t(3.0, 5.0)


def test_hand_worked_sigmoid() -> None:
    """beta=2, gamma=1 on ``hand_batch``.

    Means: chosen -1, -3; rejected -3, -2. Rewards = 2 * means: chosen [-2, -6], rejected [-6, -4].
    h = r_c - r_r - 1 = [-2 + 6 - 1, -6 + 4 - 1] = [3, -3].
    -log sigmoid(h) = softplus(-h): [log(1 + e^-3), log(1 + e^3)] = [0.0485873516, 3.0485873516]
    (their difference is exactly 3). Mean = log(1 + e^-3) + 1.5 = 1.5485873516.
    """
    out = simpo_loss(*hand_batch(), SimPOObjective(beta=2.0, gamma=1.0))
    assert_close(out.losses, [softplus(-3.0), softplus(3.0)])
    assert_close(out.losses, [0.0485873515737, 3.0485873515737])
    assert_close(out.loss, 1.5485873515737)
    assert_close(out.chosen_rewards, [-2.0, -6.0])
    assert_close(out.rejected_rewards, [-6.0, -4.0])
    assert_close(out.sft_loss, 0.0)


def test_hand_worked_sft_term_is_token_level() -> None:
    """Same pairs, sft_weight=0.5: the NLL is pooled over tokens, not averaged per sequence.

    Token-level NLL = -(-4 - 6) / (4 + 2) = 5/3 (a per-sequence mean would give (1 + 3) / 2 = 2).
    Loss = 1.5485873516 + 0.5 * 5/3 = 2.3819206849; per-pair losses exclude the SFT term.
    """
    out = simpo_loss(*hand_batch(), SimPOObjective(beta=2.0, gamma=1.0, sft_weight=0.5))
    assert_close(out.losses, [0.0485873515737, 3.0485873515737])
    assert_close(out.sft_loss, 5.0 / 3.0)
    assert_close(out.loss, 2.3819206849070)


def test_hand_worked_label_smoothing() -> None:
    """eps=0.2 with h = [3, -3]: (1 - eps) * softplus(-h) + eps * softplus(h).

    Pair 1: 0.8 * log(1 + e^-3) + 0.2 * log(1 + e^3) = log(1 + e^-3) + 0.2 * 3 = 0.6485873516.
    Pair 2: 0.8 * log(1 + e^3) + 0.2 * log(1 + e^-3) = log(1 + e^-3) + 0.8 * 3 = 2.4485873516.
    Mean = 1.5485873516 (the symmetric margins make it equal the unsmoothed mean; the pairs show the difference).
    """
    out = simpo_loss(*hand_batch(), SimPOObjective(beta=2.0, gamma=1.0, label_smoothing=0.2))
    assert_close(out.losses, [0.6485873515737, 2.4485873515737])
    assert_close(out.loss, 1.5485873515737)


def test_hand_worked_hinge() -> None:
    """Hinge with h = [3, -3]: relu(1 - h) = [0, 4], mean 2; rewards do not depend on the loss type."""
    out = simpo_loss(*hand_batch(), SimPOObjective(beta=2.0, gamma=1.0, loss_type="hinge"))
    assert_close(out.losses, [0.0, 4.0])
    assert_close(out.loss, 2.0)
    assert_close(out.chosen_rewards, [-2.0, -6.0])
    assert_close(out.rejected_rewards, [-6.0, -4.0])


def test_gamma_is_absolute_not_a_ratio() -> None:
    """beta=4, gamma=2 on one pair with means -1 / -1.5: h = 4 * 0.5 - 2 = 0, so the loss is log 2.

    Reading gamma as gamma/beta (margin 4 * 2 = 8) would give softplus(6) instead.
    """
    out = simpo_loss(t(-3.0), t(-6.0), t(3.0), t(4.0), SimPOObjective(beta=4.0, gamma=2.0))
    assert_close(out.loss, math.log(2.0))
    assert_close(out.chosen_rewards, [-4.0])
    assert_close(out.rejected_rewards, [-6.0])


# --------------------------------------------------------------------------------------------------------------------
# 2. Random inputs against an independent re-statement
# --------------------------------------------------------------------------------------------------------------------


def reference_loss(
    chosen_sums: torch.Tensor,
    rejected_sums: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
    loss_type: str,
    eps: float,
    sft_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's objective written another way: float64, sigmoid().log(), per-pair loop for the SFT term."""
    chosen_reward = chosen_sums.double() * (beta / chosen_lengths.double())
    rejected_reward = rejected_sums.double() * (beta / rejected_lengths.double())
    h = (chosen_reward - gamma) - rejected_reward
    if loss_type == "sigmoid":
        per_pair = -(1.0 - eps) * torch.sigmoid(h).log() - eps * torch.sigmoid(-h).log()
    else:
        per_pair = torch.clamp(1.0 - h, min=0.0)
    loss = per_pair.sum() / len(per_pair)
    if sft_weight:
        tokens = sum(float(n) for n in chosen_lengths)
        loss = loss - sft_weight * sum(chosen_sums.double()[i] for i in range(len(chosen_sums))) / tokens
    return loss, per_pair, chosen_reward.detach(), rejected_reward.detach()


def analytic_grads(
    chosen_sums: torch.Tensor,
    rejected_sums: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float,
    gamma: float,
    loss_type: str,
    eps: float,
    sft_weight: float,
) -> tuple[list[float], list[float]]:
    """dL/d(chosen sum), dL/d(rejected sum) by hand: dL/dh * (+-beta / |y|), plus -sft_weight / total chosen tokens."""
    n = len(chosen_sums)
    tokens = float(chosen_lengths.sum())
    grad_chosen, grad_rejected = [], []
    for c, r, lc, lr in zip(
        chosen_sums.tolist(), rejected_sums.tolist(), chosen_lengths.tolist(), rejected_lengths.tolist(), strict=True
    ):
        h = beta * c / lc - beta * r / lr - gamma
        if loss_type == "sigmoid":
            sig = 1.0 / (1.0 + math.exp(-h))
            dh = (-(1.0 - eps) * (1.0 - sig) + eps * sig) / n
        else:
            dh = -1.0 / n if h < 1.0 else 0.0
        grad_chosen.append(dh * beta / lc - sft_weight / tokens)
        grad_rejected.append(-dh * beta / lr)
    return grad_chosen, grad_rejected


@pytest.mark.parametrize("sft_weight", SFT_WEIGHTS)
@pytest.mark.parametrize(("loss_type", "eps"), OBJECTIVES)
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_reference(seed: int, batch_size: int, loss_type: str, eps: float, sft_weight: float) -> None:
    """Loss, per-pair losses, rewards and gradients agree with a re-statement written independently of loss.py."""
    chosen, rejected, chosen_lengths, rejected_lengths = random_batch(seed, batch_size)
    beta, gamma = random_hparams(seed)
    config = SimPOObjective(beta=beta, gamma=gamma, loss_type=loss_type, label_smoothing=eps, sft_weight=sft_weight)

    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    out = simpo_loss(chosen, rejected, chosen_lengths, rejected_lengths, config)
    out.loss.backward()

    ref_chosen = chosen.detach().double().requires_grad_(True)
    ref_rejected = rejected.detach().double().requires_grad_(True)
    hp = (beta, gamma, loss_type, eps, sft_weight)
    ref_loss, ref_losses, ref_chosen_rewards, ref_rejected_rewards = reference_loss(
        ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, *hp
    )
    ref_loss.backward()

    assert out.loss.shape == ()
    assert out.losses.shape == (batch_size,)
    assert_close(out.loss, ref_loss)
    assert_close(out.losses, ref_losses)
    assert_close(out.chosen_rewards, ref_chosen_rewards)
    assert_close(out.rejected_rewards, ref_rejected_rewards)
    assert not any(x.requires_grad for x in (out.chosen_rewards, out.rejected_rewards, out.sft_loss))
    assert_close(out.sft_loss, -ref_chosen.detach().sum() / chosen_lengths.double().sum() if sft_weight else 0.0)

    assert_close(chosen.grad, ref_chosen.grad)
    assert_close(rejected.grad, ref_rejected.grad)
    grad_chosen, grad_rejected = analytic_grads(
        chosen.detach(), rejected.detach(), chosen_lengths, rejected_lengths, *hp
    )
    assert_close(chosen.grad, grad_chosen)
    assert_close(rejected.grad, grad_rejected)


# --------------------------------------------------------------------------------------------------------------------
# 3. TRL's CPOTrainer in SimPO mode (a real trainer around the tiny Llama)
# --------------------------------------------------------------------------------------------------------------------

TRL_BETA = 2.5
TRL_GAMMA = 1.375  # absolute; gamma/beta = 0.55


@pytest.fixture(scope="module")
def cpo_trainers(tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple, CPOTrainer]:
    """Real CPOTrainers keyed by (loss_type, label_smoothing, gamma), sharing one tiny model; built once per module.

    TRL's hinge has no margin, so it is compared with our hinge at gamma=0.
    """
    model = AutoModelForCausalLM.from_pretrained(tiny_assets["model"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets["model"])
    model.warnings_issued = {}  # transformers 5.6 dropped the attribute that TRL 0.24 writes to
    train_dataset = Dataset.from_dict(
        {"prompt": ["Tell me about the river."], "chosen": [" river kind."], "rejected": [" river rude."]}
    )
    trainers = {}
    for loss_type, eps, gamma in (("simpo", 0.0, TRL_GAMMA), ("simpo", 0.2, TRL_GAMMA), ("hinge", 0.0, 0.0)):
        args = CPOConfig(
            output_dir=str(tmp_path_factory.mktemp("cpo")),
            loss_type=loss_type,
            cpo_alpha=0.0,
            beta=TRL_BETA,
            simpo_gamma=gamma,
            label_smoothing=eps,
            report_to=[],
            use_cpu=True,
            bf16=False,  # TRL defaults to bf16; the losses are compared in fp32
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "will soon be moved to trl.experimental"
            trainers[(loss_type, eps, gamma)] = CPOTrainer(
                model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer
            )
    return trainers


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("trl_key", "ours"),
    [
        (("simpo", 0.0, TRL_GAMMA), SimPOObjective(beta=TRL_BETA, gamma=TRL_GAMMA)),
        (("simpo", 0.2, TRL_GAMMA), SimPOObjective(beta=TRL_BETA, gamma=TRL_GAMMA, label_smoothing=0.2)),
        (("hinge", 0.0, 0.0), SimPOObjective(beta=TRL_BETA, gamma=0.0, loss_type="hinge")),
    ],
    ids=["sigmoid", "sigmoid-smoothed", "hinge-gamma0"],
)
def test_matches_trl_cpo_simpo(
    cpo_trainers: dict[tuple, CPOTrainer], trl_key: tuple, ours: SimPOObjective, seed: int, batch_size: int
) -> None:
    """TRL's ``cpo_loss`` (beta * (avg_c - avg_r - gamma/beta)) is the same objective on averaged log-probs."""
    trainer = cpo_trainers[trl_key]
    assert (trainer.beta, trainer.label_smoothing, trainer.alpha) == (TRL_BETA, trl_key[1], 0.0)
    chosen, rejected, chosen_lengths, rejected_lengths = random_batch(seed, batch_size)

    chosen_ours = chosen.clone().requires_grad_(True)
    rejected_ours = rejected.clone().requires_grad_(True)
    out = simpo_loss(chosen_ours, rejected_ours, chosen_lengths, rejected_lengths, ours)
    out.loss.backward()

    chosen_trl = chosen.clone().requires_grad_(True)
    rejected_trl = rejected.clone().requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = trainer.cpo_loss(
        chosen_trl / chosen_lengths, rejected_trl / rejected_lengths
    )
    losses.mean().backward()

    assert_close(out.losses, losses)
    assert_close(out.loss, losses.mean())
    assert_close(out.chosen_rewards, chosen_rewards)
    assert_close(out.rejected_rewards, rejected_rewards)
    assert_close(chosen_ours.grad, chosen_trl.grad)
    assert_close(rejected_ours.grad, rejected_trl.grad)


# --------------------------------------------------------------------------------------------------------------------
# 4. The host's built-in `pref_loss: simpo`
# --------------------------------------------------------------------------------------------------------------------


def host_trainer_stub(beta: float, gamma: float) -> types.SimpleNamespace:
    """Just the attributes that CustomDPOTrainer.simpo_loss / compute_preference_loss read, with its own methods."""
    stub = types.SimpleNamespace(
        beta=beta,
        simpo_gamma=gamma,
        loss_type="simpo",
        finetuning_args=types.SimpleNamespace(use_ref_model=False),
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
    )
    stub.simpo_loss = types.MethodType(CustomDPOTrainer.simpo_loss, stub)
    return stub


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_host_builtin_simpo(seed: int, batch_size: int) -> None:
    """The host's sigmoid SimPO on averaged log-probs gives the same per-pair losses and rewards (gamma absolute)."""
    chosen, rejected, chosen_lengths, rejected_lengths = random_batch(seed, batch_size)
    beta, gamma = random_hparams(seed)
    out = simpo_loss(chosen, rejected, chosen_lengths, rejected_lengths, SimPOObjective(beta=beta, gamma=gamma))

    stub = host_trainer_stub(beta, gamma)
    chosen_avg, rejected_avg = chosen / chosen_lengths, rejected / rejected_lengths
    host_losses = CustomDPOTrainer.simpo_loss(stub, chosen_avg, rejected_avg)
    assert_close(out.losses, host_losses)

    losses, chosen_rewards, rejected_rewards = CustomDPOTrainer.compute_preference_loss(
        stub, chosen_avg, rejected_avg, None, None
    )
    assert_close(out.losses, losses)
    assert_close(out.chosen_rewards, chosen_rewards)
    assert_close(out.rejected_rewards, rejected_rewards)


# --------------------------------------------------------------------------------------------------------------------
# 5-6. The wrapper and errors
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss_type", "eps", "sft_weight"), [("sigmoid", 0.1, 0.3), ("hinge", 0.0, 0.0)])
def test_wrapper_is_reference_free_and_equals_function(loss_type: str, eps: float, sft_weight: float) -> None:
    """The trainer asks ``is_reference_free`` to skip the reference model; the call must not alter the math."""
    config = SimPOObjective(beta=2.0, gamma=1.0, loss_type=loss_type, label_smoothing=eps, sft_weight=sft_weight)
    wrapper = SimPOLoss(config)
    assert wrapper.is_reference_free is True
    assert SimPOLoss.is_reference_free is True
    assert wrapper.config is config

    batch = random_batch(3, 5)
    via_wrapper = wrapper(*batch)
    via_function = simpo_loss(*batch, config)
    assert isinstance(via_wrapper, SimPOLossOutput)
    for field in SimPOLossOutput._fields:
        torch.testing.assert_close(getattr(via_wrapper, field), getattr(via_function, field), atol=0.0, rtol=0.0)


@pytest.mark.parametrize("loss_type", ["ipo", "Sigmoid", ""])
def test_unknown_loss_type_raises(loss_type: str) -> None:
    """A typo must fail loudly, naming the bad type, rather than silently fall back to some loss."""
    with pytest.raises(ValueError, match=f"`{loss_type}`"):
        simpo_loss(*hand_batch(), SimPOObjective(beta=2.0, gamma=1.0, loss_type=loss_type))


def test_length_normalization_ablation_uses_summed_logps() -> None:
    """Without length normalization the reward is beta * sum log p: pair (-4 over 4 tokens) vs (-9 over 3).

    h = 2 * (-4 - (-9)) - 1 = 9 -> loss = log(1 + e^-9); rewards -8 and -18.
    """
    cfg = SimPOObjective(beta=2.0, gamma=1.0, length_normalization=False)
    out = simpo_loss(torch.tensor([-4.0]), torch.tensor([-9.0]), torch.tensor([4.0]), torch.tensor([3.0]), cfg)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-9.0)), abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(-8.0) and out.rejected_rewards.item() == pytest.approx(-18.0)
