"""Sampling functions beside a step policy's own ``sample``: guided sampling (value guidance, spec
section 6, and classifier or any reward's guidance: one function) and the deterministic DDIM
baseline (eta = 0) from the same teacher. Both run ``rollout``, so noise is drawn in the same
order as ``GaussianStepPolicy.sample`` with the same generator.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .policy import DDIMMean, GaussianStepPolicy, as_step_index, rollout
from .rewards import RewardModel
from .schedules import ChainSchedule

__all__ = ["guided_sample", "value_guided_sample", "ddim_sample"]


def guided_sample(
    policy: GaussianStepPolicy,
    guide: Callable[[Tensor, int], Tensor] | RewardModel,
    batch: int,
    strength: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Chains (T + 1, B, *event_shape) of ``policy``, each step followed by a gradient step on a cost:

        x_{t+1} <- x_{t+1} - strength * sigma_t * grad_x cost(x_{t+1}, t + 1)

    guide: the cost, lower is better, differentiable in x: a callable ``cost(x (B, ...), t) -> (B,)``
    with t in 1..T (value guidance: the soft value V with V(x, T) = E(x); an image run's
    time-independent value is ``lambda x, t: energy(x)``), or a ``RewardModel``, whose cost
    -reward(x) is used at every t (classifier guidance: ``ClassifierReward(classifier, label)``
    gives cost -log p(label | x), so samples move up the class's log-probability). strength = 0
    gives exactly ``policy.sample``'s chains. No parameter gets a gradient.
    """
    if strength < 0:
        raise ValueError(f"guidance strength must be >= 0, got {strength}")
    if isinstance(guide, RewardModel):
        reward = guide
        cost_to_go = lambda x, t: -reward(x)  # noqa: E731
    elif callable(guide):
        cost_to_go = guide
    else:
        raise TypeError(f"guide must be a callable cost(x, t) -> (B,) or a RewardModel, got {type(guide).__name__}")
    device = device or policy.log_sigma_fixed.device
    sigma = policy.sigma.detach()

    def act(x: Tensor, t: int, noise: Tensor) -> Tensor:
        with torch.no_grad():
            x_next = policy(x, t, noise)
        if strength == 0:
            return x_next
        with torch.enable_grad():
            x_req = x_next.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(cost_to_go(x_req, t + 1).sum(), x_req)
        return x_next - strength * sigma[t] * grad

    x0 = torch.randn((batch, *policy.event_shape), generator=generator, device=device)
    return rollout(act, x0, policy.horizon, generator)


value_guided_sample = guided_sample
"""Value guidance (spec section 6): ``guided_sample`` with the cost-to-go V as the guide."""


@torch.no_grad()
def ddim_sample(
    eps_model: nn.Module,
    schedule: ChainSchedule,
    batch: int,
    event_shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Deterministic DDIM (eta = 0) chains (T + 1, B, *event_shape) over ``schedule`` (e.g.
    ``ChainSchedule.strided(T, betas)``): x_{t+1} = c_x x_t + c_eps eps_theta(x_t, tau_t)."""
    device = device or next(eps_model.parameters()).device
    mean = DDIMMean(eps_model, schedule, eta=0.0).to(device)
    x0 = torch.randn((batch, *event_shape), generator=generator, device=device)
    return rollout(lambda x, t, noise: mean(x, as_step_index(t, x.shape[0], x.device)), x0, schedule.horizon, generator)
