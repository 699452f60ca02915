"""The step policy as a distribution (issue 12): leading batch dims everywhere (policy, nets, MDP
costs, soft value), ``dist(x, t)``, float32 log-probs with sum/mean reductions, step indices as
ints, long or float tensors of any batch shape, and the terminal step t = T."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent

from diffrl.agents import soft_value
from diffrl.mdp import ChainMDP
from diffrl.nets import AtTime, TimeMLP
from diffrl.policy import GaussianStepPolicy, as_step_index
from diffrl.rewards import FixedReward

SIGMA = torch.tensor([0.9, 0.5, 0.2, 0.05])
T = SIGMA.numel()


def make_policy(event_shape=(2,)) -> GaussianStepPolicy:
    torch.manual_seed(0)
    if event_shape == (2,):
        return GaussianStepPolicy(TimeMLP(2, 2, hidden=16, depth=2, time_dim=8), SIGMA, (2,))
    mean_model = lambda x, t: 0.5 * x + t.float().view(-1, 1, 1, 1)  # noqa: E731
    return GaussianStepPolicy(mean_model, SIGMA, event_shape)


def grid(batch=(3, 5)):
    """x (*batch, 2) and t (*batch,) with every step 0..T-1 present."""
    x = torch.randn(*batch, 2)
    t = torch.arange(math.prod(batch)).remainder(T).view(batch)
    return x, t


def test_leading_dims_equal_the_flat_batch_for_policy_and_timemlp():
    policy = make_policy()
    x, t = grid()
    noise = torch.randn_like(x)
    with torch.no_grad():
        flat = policy(x.reshape(-1, 2), t.reshape(-1), noise.reshape(-1, 2)).reshape(3, 5, 2)
        assert torch.equal(policy(x, t, noise), flat)
        assert torch.equal(policy.mean(x, t), policy.mean_model(x.reshape(-1, 2), t.reshape(-1)).reshape(3, 5, 2))
        net = TimeMLP(2, 1, hidden=8, depth=2)
        torch.testing.assert_close(net(x, t.float()), net(x.reshape(-1, 2), t.reshape(-1).float()).reshape(3, 5))
        assert AtTime(net, 2.0)(x).shape == (3, 5)


def test_dist_log_prob_equals_policy_log_prob_and_hand_normal():
    policy = make_policy()
    x, t = grid((2, 6))
    x_next = torch.randn_like(x)
    dist = policy.dist(x, t)
    assert isinstance(dist, Independent) and dist.batch_shape == (2, 6) and dist.event_shape == (2,)
    with torch.no_grad():
        mean = policy.mean_model(x.reshape(-1, 2), t.reshape(-1)).reshape(2, 6, 2)
        sigma = SIGMA[t][..., None]
        hand = (-0.5 * ((x_next - mean) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = policy.log_prob(x_next, x, t)
    assert log_prob.dtype == torch.float32 and log_prob.shape == (2, 6)
    torch.testing.assert_close(log_prob, hand)
    torch.testing.assert_close(dist.log_prob(x_next), hand)
    torch.testing.assert_close(policy.log_prob(x_next, x, t, reduction="mean"), hand / 2)
    torch.testing.assert_close(dist.entropy(), (0.5 * math.log(2 * math.pi * math.e) + SIGMA[t].log()) * 2)
    with pytest.raises(ValueError, match="reduction"):
        policy.log_prob(x_next, x, t, reduction="max")


def test_log_prob_is_float32_for_bfloat16_inputs_and_gradients_reach_mean_and_sigma():
    policy = make_policy()
    x, t = grid((4,))
    lp = policy.log_prob(torch.randn(4, 2).bfloat16(), x, t)
    assert lp.dtype == torch.float32
    policy.dist(x, t).rsample().sum().backward()
    assert policy.log_sigma_train.grad.abs().sum() > 0
    assert all(p.grad is not None for p in policy.mean_parameters())


def test_image_events_with_two_batch_dims():
    policy = make_policy((1, 3, 3))
    x, x_next = torch.randn(2, 3, 1, 3, 3), torch.randn(2, 3, 1, 3, 3)
    hand = torch.distributions.Normal(0.5 * x + 1, SIGMA[1]).log_prob(x_next).flatten(2).sum(-1)
    torch.testing.assert_close(policy.log_prob(x_next, x, 1), hand)
    with pytest.raises(ValueError, match=r"\(\*batch, 1, 3, 3\)"):
        policy.mean(torch.randn(2, 3, 3), 0)


@pytest.mark.parametrize("form", ["int", "long", "float", "column", "scalar_tensor"])
def test_step_index_forms_agree(form):
    policy = make_policy()
    x = torch.randn(6, 2)
    t = {"int": 2, "long": torch.full((6,), 2), "float": torch.full((6,), 2.0), "column": torch.full((6, 1), 2),
         "scalar_tensor": torch.tensor(2)}[form]
    noise = torch.randn_like(x)
    with torch.no_grad():
        assert torch.equal(policy(x, t, noise), policy(x, 2, noise))
    assert as_step_index(t, (6,), x.device).dtype == torch.long


def test_bad_step_indices_are_clear_errors():
    policy = make_policy()
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="outside 0..4"):
        policy.mean(x, T + 1)
    with pytest.raises(RuntimeError, match="whole numbers"):
        policy.mean(x, torch.full((6,), 1.5))
    with pytest.raises(RuntimeError, match="outside 0..4"):
        policy.mean(x, torch.full((6,), -1))
    with pytest.raises(ValueError, match="does not fit the batch shape"):
        policy.mean(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer or float"):
        policy.mean(x, torch.zeros(6, dtype=torch.bool))


def test_terminal_step_keeps_x_with_the_last_sigma():
    policy = make_policy()
    x = torch.randn(5, 2)
    t = torch.tensor([T, 0, T, 3, T])
    noise = torch.randn_like(x)
    with torch.no_grad():
        mean = policy.mean(x, t)
        step = policy(x, t, noise)
    terminal = t == T
    assert torch.equal(mean[terminal], x[terminal])
    torch.testing.assert_close(step[terminal], x[terminal] + SIGMA[-1] * noise[terminal])
    torch.testing.assert_close(mean[~terminal], policy.mean_model(x[~terminal], t[~terminal]).detach())
    lp = policy.log_prob(x, x, torch.full((5,), T))
    torch.testing.assert_close(lp, torch.full((5,), -2 * SIGMA[-1].log().item() - math.log(2 * math.pi)))
    with pytest.raises(ValueError, match="outside 0..3"):
        as_step_index(T, 5, x.device, T)  # the MDP's step itself stops at T - 1


def test_mdp_costs_and_soft_value_take_leading_dims():
    scales = torch.tensor([0.5, 1.0, 2.0, 1.5])
    mdp = ChainMDP(FixedReward(lambda x: -(x**2).sum(-1)), (2,), scales, tau_velocity=0.3, avr_decay=None)
    x, t = grid()
    x_next = torch.randn_like(x)
    terms = mdp.step_terms(x, x_next, t)
    hand_v = ((x_next - x) ** 2).mean(-1) / (2 * scales[t] ** 2)
    hand_terminal = torch.where(t == T - 1, (x_next**2).sum(-1), torch.zeros(()))
    torch.testing.assert_close(terms["velocity_cost"], hand_v)
    torch.testing.assert_close(terms["terminal_cost"], hand_terminal)
    torch.testing.assert_close(mdp.step_reward(x, x_next, t), -(0.3 * hand_v + hand_terminal))
    value = TimeMLP(2, 1, hidden=8, depth=2)
    t_value = t + (t == T - 1).long()  # some entries at the terminal step t = T
    flat = soft_value(value, mdp, x.reshape(-1, 2), t_value.reshape(-1)).reshape(3, 5)
    torch.testing.assert_close(soft_value(value, mdp, x, t_value), flat)
    assert torch.equal(flat[t_value == T], (x[t_value == T] ** 2).sum(-1))
