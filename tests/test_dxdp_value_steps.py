"""DxDP's update options: value_steps "sequential" (the paper's, the default) or "batched" (one step on
all transitions), and sampler_steps (policy-improvement steps per update; the paper's 1)."""
from __future__ import annotations

import copy

import pytest
import torch

from diffrl.agents.dxdp import DxDP, DxDPConfig
from diffrl.agents.losses import SamplerLoss, ValueTDLoss, time_cost
from test_mdp_losses import make_mdp, make_policy, make_value


def _agent(**cfg) -> DxDP:
    torch.manual_seed(0)
    return DxDP(make_policy(), make_value(), make_mdp(), DxDPConfig(lr_value=1e-2, lr_sampler=0.0, lr_sigma=0.0, **cfg))


def test_default_is_the_papers_sequential_order():
    assert DxDPConfig().value_steps == "sequential"
    with pytest.raises(ValueError, match="value_steps"):
        DxDPConfig(value_steps="parallel")


@pytest.mark.parametrize("value_target", ["running", "sigmoid"])
def test_batched_is_one_adam_step_on_the_mean_td_loss_of_all_transitions(value_target):
    agent = _agent(value_steps="batched", value_target=value_target)
    T = agent.mdp.horizon
    chain = agent.policy.sample(16, generator=torch.Generator().manual_seed(1))
    # the independent computation: one Adam step on the mean over t of each step's mean TD loss (same B per t)
    value = copy.deepcopy(agent.value)
    loss_fn = ValueTDLoss(value, agent.mdp, time_cost(value_target, T))
    log_sigma = agent.policy.log_sigma.detach()
    loss = torch.stack([
        loss_fn(chain[t], chain[t + 1], torch.full((16,), t), log_sigma)["loss_value"] for t in range(T)
    ]).mean()
    optimizer = torch.optim.Adam(value.parameters(), lr=1e-2)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    steps = []
    agent.value_optimizer.register_step_post_hook(lambda *_: steps.append(1))
    metrics = agent.update(chain)
    assert len(steps) == 1
    torch.testing.assert_close(metrics["loss_value"], loss.detach())
    for p_agent, p_ref in zip(agent.value.parameters(), value.parameters()):
        torch.testing.assert_close(p_agent, p_ref)


def test_sequential_takes_one_value_step_per_t():
    agent = _agent()
    steps = []
    agent.value_optimizer.register_step_post_hook(lambda *_: steps.append(1))
    agent.update(agent.policy.sample(16, generator=torch.Generator().manual_seed(1)))
    assert len(steps) == agent.mdp.horizon


def test_soft_value_at_an_int_step_equals_the_tensor_form():
    """DxDP's value targets pass the step as an int (no host sync): the same numbers as a full tensor of it."""
    from diffrl.agents.losses import soft_value

    mdp, value = make_mdp(), make_value()
    T = mdp.horizon
    x = torch.randn(6, 3, *mdp.event_shape)
    for t in (0, T - 1, T):
        assert torch.equal(soft_value(value, mdp, x, t), soft_value(value, mdp, x, torch.full((6, 3), t)))
    loss = ValueTDLoss(value, mdp)
    x, x_next, log_sigma = torch.randn(5, *mdp.event_shape), torch.randn(5, *mdp.event_shape), torch.zeros(T)
    for t in (0, T - 1):
        assert torch.equal(loss(x, x_next, t, log_sigma)["loss_value"], loss(x, x_next, torch.full((5,), t), log_sigma)["loss_value"])
    with pytest.raises(ValueError, match="outside"):
        soft_value(value, mdp, x, T + 1)


@pytest.mark.parametrize("k", [1, 3])
def test_sampler_steps_are_k_clipped_adam_steps_on_fresh_minibatches(k):
    """The independent computation: k plain Adam steps, each on its own uniform draw of (t, b),
    against the value the T value steps left (the sampler steps do not touch it)."""
    torch.manual_seed(0)
    agent = DxDP(make_policy(), make_value(), make_mdp(),
                 DxDPConfig(lr_value=1e-2, lr_sampler=1e-2, lr_sigma=1e-2, sampler_steps=k, sampler_grad_clip=None))
    chain = agent.policy.sample(16, generator=torch.Generator().manual_seed(1))
    T, B = agent.mdp.horizon, 16
    policy = copy.deepcopy(agent.policy)
    optimizer = torch.optim.Adam([{"params": policy.mean_parameters(), "lr": 1e-2}, {"params": policy.sigma_parameters(), "lr": 1e-2}])
    steps = []
    agent.policy_optimizer.register_step_post_hook(lambda *_: steps.append(1))
    torch.manual_seed(5)
    agent.update(chain)
    assert len(steps) == k
    loss_fn = SamplerLoss(policy, agent.value, agent.mdp)  # the value after the update: the sampler steps come last
    torch.manual_seed(5)
    for _ in range(k):
        t_idx, b_idx = torch.randint(0, T, (B,)), torch.randint(0, B, (B,))
        optimizer.zero_grad()
        loss_fn(chain[t_idx, b_idx], t_idx)["loss_sampler"].backward()
        optimizer.step()
    for p_agent, p_ref in zip(agent.policy.parameters(), policy.parameters()):
        torch.testing.assert_close(p_agent, p_ref)
    with pytest.raises(ValueError, match="sampler_steps"):
        DxDPConfig(sampler_steps=0)
