"""ChainMDP costs and AVR, DxDP's losses and update, each against a hand computation."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from diffrl.agents import DxDP, DxDPConfig, SamplerLoss, ValueTDLoss, soft_value, time_cost
from diffrl.mdp import ChainMDP
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy
from diffrl.rewards import FixedReward


T, D = 3, 2
SCALES = torch.tensor([0.8, 0.5, 0.3])  # s_t
SIGMA = torch.tensor([0.7, 0.4, 0.1])
TAU_V, TAU_E = 0.3, 0.2


def energy_fn(x):
    """The terminal cost E(x) = |x - (0.5, -0.25)|^2 / 2."""
    return 0.5 * (x - torch.tensor([0.5, -0.25])).pow(2).sum(1)


def make_mdp(avr_decay=None, tau_v=TAU_V) -> ChainMDP:
    return ChainMDP(FixedReward(lambda x: -energy_fn(x)), (D,), SCALES, tau_velocity=tau_v, avr_decay=avr_decay, tau_entropy=TAU_E)


def make_value(seed=0) -> TimeMLP:
    torch.manual_seed(seed)
    return TimeMLP(D, 1, hidden=16, depth=2, time_dim=8)


def make_policy(seed=1, fix_last=False) -> GaussianStepPolicy:
    torch.manual_seed(seed)
    return GaussianStepPolicy(TimeMLP(D, D, hidden=16, depth=2, time_dim=8), SIGMA, (D,), fix_last=fix_last)


def hand_velocity(x, x_next, t):
    """v = sum_d (x' - x)^2 / D / (2 s_t^2), per sample, with explicit loops."""
    out = []
    for b in range(x.shape[0]):
        sq = sum(float(x_next[b, d] - x[b, d]) ** 2 for d in range(D)) / D
        out.append(sq / (2 * float(SCALES[int(t[b])]) ** 2))
    return torch.tensor(out)


# ------------------------------------------------------------------ ChainMDP


def test_velocity_cost_equals_hand_formula():
    mdp = make_mdp()
    x, x_next = torch.randn(6, D), torch.randn(6, D)
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(mdp.velocity_cost(x, x_next, t), hand_velocity(x, x_next, t), rtol=1e-5, atol=1e-6)


def test_step_rewards_sum_to_minus_running_and_terminal_costs():
    mdp = make_mdp()
    chain = torch.randn(T + 1, 5, D)
    total = sum(mdp.step_reward(chain[t], chain[t + 1], torch.full((5,), t)) for t in range(T))
    velocities = sum(hand_velocity(chain[t], chain[t + 1], torch.full((5,), t)) for t in range(T))
    terminal = torch.tensor([0.5 * ((float(p[0]) - 0.5) ** 2 + (float(p[1]) + 0.25) ** 2) for p in chain[-1]])
    torch.testing.assert_close(total, -(TAU_V * velocities + terminal), rtol=1e-5, atol=1e-5)


def test_step_reward_adds_terminal_cost_only_on_the_last_step():
    mdp = make_mdp()
    x, x_next = torch.randn(4, D), torch.randn(4, D)
    t = torch.tensor([0, 2, 1, 2])
    r = mdp.step_reward(x, x_next, t)
    expected = -TAU_V * hand_velocity(x, x_next, t) - torch.where(t == T - 1, energy_fn(x_next), torch.zeros(4))
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-6)


def test_avr_one_update_is_the_ema_of_the_batch_mean_square_step():
    alpha = 0.9
    mdp = make_mdp(avr_decay=alpha)
    chain = torch.randn(T + 1, 8, D)
    mdp.update_velocity_scale(chain)
    for t in range(T):
        mean_sq = sum(float(chain[t + 1, b, d] - chain[t, b, d]) ** 2 for b in range(8) for d in range(D)) / (8 * D)
        expected = alpha * float(SCALES[t]) ** 2 + (1 - alpha) * mean_sq
        assert float(mdp.velocity_scale_sq[t]) == pytest.approx(expected, rel=1e-5)


def test_avr_converges_to_closed_form_under_a_constant_step_size():
    """Steps dx_t = c_t * z, z ~ N(0, I): the tightest s_t^2 = E|dx_t|^2 / D = c_t^2."""
    torch.manual_seed(0)
    step_size = torch.tensor([1.5, 0.6, 0.05])
    mdp = make_mdp(avr_decay=0.99)
    for _ in range(1500):
        dx = step_size[:, None, None] * torch.randn(T, 256, D)
        x0 = 3 * torch.randn(1, 256, D)
        chain = torch.cat([x0, x0 + dx.cumsum(0)])
        mdp.update_velocity_scale(chain)
    torch.testing.assert_close(mdp.velocity_scale_sq, step_size**2, rtol=0.05, atol=0)


def test_avr_on_a_fixed_chain_converges_exactly():
    chain = torch.randn(T + 1, 4, D)
    mdp = make_mdp(avr_decay=0.9)
    for _ in range(400):
        mdp.update_velocity_scale(chain)
    expected = [sum(float(chain[t + 1, b, d] - chain[t, b, d]) ** 2 for b in range(4) for d in range(D)) / (4 * D) for t in range(T)]
    torch.testing.assert_close(mdp.velocity_scale_sq, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_avr_off_leaves_scales_unchanged():
    mdp = make_mdp(avr_decay=None)
    mdp.update_velocity_scale(10 * torch.randn(T + 1, 8, D))
    torch.testing.assert_close(mdp.velocity_scale_sq, SCALES**2)


@pytest.mark.parametrize("kwargs", [dict(velocity_scale_init=torch.tensor([1.0, 0.0])), dict(tau_velocity=-1.0), dict(avr_decay=1.0)])
def test_chain_mdp_rejects_bad_settings(kwargs):
    args = dict(reward=FixedReward(lambda x: -energy_fn(x)), event_shape=(D,), velocity_scale_init=SCALES, tau_velocity=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError):
        ChainMDP(**args)


# ------------------------------------------------------------------ time costs


@pytest.mark.parametrize("horizon", [10, 5])
def test_sigmoid_time_cost_equals_hand_formula(horizon):
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    c = 1.7
    expected = [c * (sig(-t + horizon // 2) - sig(-t - 1 + horizon // 2)) for t in range(horizon)]
    torch.testing.assert_close(time_cost("sigmoid", horizon, c), torch.tensor(expected), rtol=1e-5, atol=1e-7)
    assert bool((time_cost("sigmoid", horizon) > 0).all())  # sigmoid is increasing, so every cost is positive


def test_constant_none_and_running_time_costs():
    torch.testing.assert_close(time_cost("constant", 4, 0.05), torch.full((4,), 0.05))
    torch.testing.assert_close(time_cost("none", 4), torch.zeros(4))
    assert time_cost("running", 4) is None
    with pytest.raises(ValueError):
        time_cost("linear-ish", 4)


# ------------------------------------------------------------------ soft value and the TD loss


def test_soft_value_uses_terminal_cost_at_T_and_the_network_before():
    mdp, value = make_mdp(), make_value()
    x = torch.randn(5, D)
    t = torch.tensor([3, 0, 2, 3, 1])
    out = soft_value(value, mdp, x, t)
    with torch.no_grad():
        for b in range(5):
            expected = energy_fn(x[b : b + 1])[0] if t[b] == T else value(x[b : b + 1], t[b : b + 1])[0]
            assert float(out[b]) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def hand_target(value, x, x_next, t, log_sigma, fixed=None):
    out = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            tb = int(t[b])
            nxt = energy_fn(x_next[b : b + 1])[0] if tb + 1 == T else value(x_next[b : b + 1], torch.tensor([tb + 1]))[0]
            if fixed is not None:
                out.append(float(nxt) + float(fixed[tb]))
            else:
                v = hand_velocity(x[b : b + 1], x_next[b : b + 1], t[b : b + 1])[0]
                out.append(float(nxt) + TAU_V * float(v) - TAU_E * float(log_sigma[tb]))
    return torch.tensor(out)


def test_td_target_running_costs_equals_hand_formula():
    mdp, value = make_mdp(), make_value()
    loss = ValueTDLoss(value, mdp)
    x, x_next = torch.randn(6, D), torch.randn(6, D)
    t = torch.tensor([0, 1, 2, 2, 1, 0])  # t + 1 == T uses E(x_T)
    log_sigma = SIGMA.log()
    torch.testing.assert_close(loss.td_target(x, x_next, t, log_sigma), hand_target(value, x, x_next, t, log_sigma), rtol=1e-5, atol=1e-5)


def test_td_target_time_cost_equals_hand_formula():
    mdp, value = make_mdp(), make_value()
    fixed = time_cost("sigmoid", T)
    loss = ValueTDLoss(value, mdp, fixed_time_cost=fixed)
    x, x_next = torch.randn(6, D), torch.randn(6, D)
    t = torch.tensor([0, 1, 2, 2, 1, 0])
    got = loss.td_target(x, x_next, t, SIGMA.log())
    torch.testing.assert_close(got, hand_target(value, x, x_next, t, SIGMA.log(), fixed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", [0, 1, 2])
def test_value_loss_gradient_does_not_flow_through_the_target(step):
    mdp, value = make_mdp(), make_value()
    x, x_next = torch.randn(8, D), torch.randn(8, D)
    t = torch.full((8,), step)
    out = ValueTDLoss(value, mdp)(x, x_next, t, SIGMA.log())
    grads = torch.autograd.grad(out["loss_value"], list(value.parameters()))
    target = hand_target(value, x, x_next, t, SIGMA.log())  # a constant
    manual = (value(x, t) - target).pow(2).mean()
    torch.testing.assert_close(out["loss_value"], manual, rtol=1e-5, atol=1e-6)
    manual_grads = torch.autograd.grad(manual, list(value.parameters()))
    for g, h in zip(grads, manual_grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    if step < T - 1:  # the semi-gradient differs from the full gradient when the target holds V
        full = (value(x, t) - (value(x_next, t + 1) + TAU_V * hand_velocity(x, x_next, t) - TAU_E * SIGMA.log()[t])).pow(2).mean()
        full_grads = torch.autograd.grad(full, list(value.parameters()))
        assert any(not torch.allclose(g, f, rtol=1e-3, atol=1e-5) for g, f in zip(grads, full_grads))


def test_value_loss_with_a_target_network_scores_x_next_with_the_copy():
    mdp, value = make_mdp(), make_value()
    target_net = copy.deepcopy(value)
    with torch.no_grad():
        for p in target_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, x_next = torch.randn(6, D), torch.randn(6, D)
    t = torch.tensor([0, 1, 0, 1, 0, 1])
    got = ValueTDLoss(value, mdp, target_value=target_net).td_target(x, x_next, t, SIGMA.log())
    torch.testing.assert_close(got, hand_target(target_net, x, x_next, t, SIGMA.log()), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, hand_target(value, x, x_next, t, SIGMA.log()), atol=1e-3)


# ------------------------------------------------------------------ the sampler loss


def hand_sampler_loss(policy, value, x, t, seed):
    torch.manual_seed(seed)
    noise = torch.randn_like(x)
    sigma = policy.log_sigma.exp()[t][:, None]
    x_next = policy.mean_model(x, t) + sigma * noise
    terms = []
    for b in range(x.shape[0]):
        tb = int(t[b])
        nxt = energy_fn(x_next[b : b + 1])[0] if tb + 1 == T else value(x_next[b : b + 1], torch.tensor([tb + 1]))[0]
        vel = (x_next[b] - x[b]).pow(2).sum() / D / (2 * SCALES[tb] ** 2)
        terms.append(nxt + TAU_V * vel - TAU_E * policy.log_sigma[tb])
    return torch.stack(terms).mean()


def test_sampler_loss_gradient_equals_hand_loss_gradient():
    mdp, value, policy = make_mdp(), make_value(), make_policy()
    loss_fn = SamplerLoss(policy, value, mdp)
    x = torch.randn(9, D)
    t = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    params = list(policy.parameters())
    torch.manual_seed(5)
    out = loss_fn(x, t)
    grads = torch.autograd.grad(out["loss_sampler"], params)
    manual = hand_sampler_loss(policy, value, x, t, seed=5)
    torch.testing.assert_close(out["loss_sampler"], manual, rtol=1e-5, atol=1e-6)
    manual_grads = torch.autograd.grad(manual, params)
    for g, h in zip(grads, manual_grads):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)
    assert all(float(g.abs().sum()) > 0 for g in grads[1:])  # every layer of the mean network gets gradient
    assert bool((grads[0].abs() > 0).all())  # log sigma of every step gets gradient


def test_sampler_loss_sigma_gradient_matches_finite_differences():
    mdp, value, policy = make_mdp(), make_value(), make_policy()
    loss_fn = SamplerLoss(policy, value, mdp)
    x = torch.randn(16, D)
    t = torch.arange(16) % T

    def loss_at(log_sigma):
        with torch.no_grad():
            policy.log_sigma_train.copy_(log_sigma)
        torch.manual_seed(7)
        return loss_fn(x, t)["loss_sampler"]

    base = SIGMA.log().clone()
    (grad,) = torch.autograd.grad(loss_at(base), [policy.log_sigma_train])
    h = 1e-2
    for i in range(T):
        e = torch.zeros(T)
        e[i] = h
        with torch.no_grad():
            fd = (loss_at(base + e) - loss_at(base - e)) / (2 * h)
        assert float(grad[i]) == pytest.approx(float(fd), rel=2e-2, abs=1e-4)


def test_sampler_loss_fixed_last_sigma_gets_no_gradient_parameter():
    mdp, value, policy = make_mdp(), make_value(), make_policy(fix_last=True)
    x = torch.randn(6, D)
    t = torch.full((6,), T - 1)
    SamplerLoss(policy, value, mdp)(x, t)["loss_sampler"].backward()
    assert policy.log_sigma_train.grad is not None and float(policy.log_sigma_train.grad.abs().sum()) == 0.0
    assert policy.log_sigma_fixed.grad is None


# ------------------------------------------------------------------ DxDP.update


def flat(params):
    return torch.cat([p.detach().flatten().clone() for p in params])


def make_agent(**cfg):
    mdp, value, policy = make_mdp(), make_value(), make_policy()
    return DxDP(policy, value, mdp, DxDPConfig(**cfg))


def test_dxdp_update_with_zero_value_lr_changes_only_the_policy():
    agent = make_agent(lr_value=0.0, lr_sampler=1e-2, lr_sigma=1e-2)
    value_before, mean_before, sigma_before = flat(agent.value.parameters()), flat(agent.policy.mean_parameters()), agent.policy.sigma.detach().clone()
    chain = agent.policy.sample(32, generator=torch.Generator().manual_seed(0))
    agent.update(chain)
    assert torch.equal(flat(agent.value.parameters()), value_before)
    assert not torch.allclose(flat(agent.policy.mean_parameters()), mean_before)
    assert bool(((agent.policy.sigma.detach() - sigma_before).abs() > 0).all())


def test_dxdp_update_with_zero_policy_lrs_changes_only_the_value():
    agent = make_agent(lr_value=1e-2, lr_sampler=0.0, lr_sigma=0.0)
    value_before, policy_before = flat(agent.value.parameters()), flat(agent.policy.parameters())
    agent.update(agent.policy.sample(32, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(flat(agent.policy.parameters()), policy_before)
    assert not torch.allclose(flat(agent.value.parameters()), value_before)


def test_dxdp_value_steps_fit_a_fixed_chain():
    """Repeated updates on one fixed chain drive the TD error of every step down."""
    agent = make_agent(lr_value=1e-2, lr_sampler=0.0, lr_sigma=0.0)
    chain = agent.policy.sample(64, generator=torch.Generator().manual_seed(0))
    first = float(agent.update(chain)["loss_value"])
    for _ in range(60):
        last = float(agent.update(chain)["loss_value"])
    assert last < 0.25 * first


def test_dxdp_target_network_is_a_polyak_average():
    rate = 0.25
    agent = make_agent(lr_value=1e-2, target_update=rate)
    assert agent.target_value is not agent.value
    target_before = flat(agent.target_value.parameters())
    assert torch.equal(target_before, flat(agent.value.parameters()))
    agent.update(agent.policy.sample(16, generator=torch.Generator().manual_seed(0)))
    value_after = flat(agent.value.parameters())
    torch.testing.assert_close(flat(agent.target_value.parameters()), target_before + rate * (value_after - target_before))


def test_dxdp_rejects_wrong_chain_length():
    agent = make_agent()
    with pytest.raises(ValueError):
        agent.update(torch.randn(T, 4, D))
