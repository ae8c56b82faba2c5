"""Property tests of the SimPO loss: finite at extremes, monotone in the margin, antisymmetric under swapping."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from simpo_plugin.lean import SimPOObjective, simpo_loss


logps = st.floats(min_value=-1e5, max_value=0.0, allow_nan=False)
lengths = st.integers(min_value=1, max_value=100_000)
betas = st.floats(min_value=1e-3, max_value=100.0)
gammas = st.floats(min_value=0.0, max_value=50.0)
losses = st.sampled_from(["sigmoid", "hinge"])


def one_pair(c: float, r: float, lc: int, lr: int, config: SimPOObjective):
    t = lambda x: torch.tensor([x], dtype=torch.float32)  # noqa: E731
    return simpo_loss(t(c), t(r), t(float(lc)), t(float(lr)), config)


@settings(max_examples=300, deadline=None)
@given(logps, logps, lengths, lengths, betas, gammas, losses, st.floats(0.0, 0.49), st.floats(0.0, 10.0))
def test_finite_everywhere(c, r, lc, lr, beta, gamma, loss_type, eps, sft) -> None:
    eps = eps if loss_type == "sigmoid" else 0.0
    config = SimPOObjective(beta=beta, gamma=gamma, loss_type=loss_type, label_smoothing=eps, sft_weight=sft)
    chosen = torch.tensor([c], requires_grad=True)
    out = simpo_loss(chosen, torch.tensor([r]), torch.tensor([float(lc)]), torch.tensor([float(lr)]), config)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(chosen.grad).all()
    assert out.loss >= 0


@settings(max_examples=300, deadline=None)
@given(logps, logps, lengths, lengths, betas, gammas, losses, st.floats(0.0, 100.0))
def test_monotone_in_the_margin(c, r, lc, lr, beta, gamma, loss_type, step) -> None:
    """Raising the chosen response's log-prob never raises the loss (no smoothing, no SFT term)."""
    config = SimPOObjective(beta=beta, gamma=gamma, loss_type=loss_type)
    lower = one_pair(c - step, r, lc, lr, config).loss.item()
    higher = one_pair(c, r, lc, lr, config).loss.item()
    assert higher <= lower + 1e-6 * max(1.0, abs(lower))


@settings(max_examples=300, deadline=None)
@given(logps, logps, lengths, lengths, st.floats(1e-2, 10.0))
def test_swapping_chosen_and_rejected_flips_the_sign(c, r, lc, lr, beta) -> None:
    """With gamma = 0: rewards and margin swap sign, and L(c, r) - L(r, c) = -h (softplus identity)."""
    config = SimPOObjective(beta=beta, gamma=0.0)
    forward, backward = one_pair(c, r, lc, lr, config), one_pair(r, c, lr, lc, config)
    assert torch.equal(forward.chosen_rewards, backward.rejected_rewards)
    margin = (forward.chosen_rewards - forward.rejected_rewards).double()
    difference = forward.loss.double() - backward.loss.double()
    assert torch.allclose(difference, -margin, atol=1e-4 + 1e-5 * margin.abs().item())
