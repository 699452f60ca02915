"""Sampling functions beside a step policy's own ``sample``: guided sampling (value guidance, spec
section 6, and classifier or any reward's guidance: one function), ``DenoisedCost`` (a reward's
cost at a teacher's predicted clean sample, a guide for noisy states) and the deterministic DDIM
baseline (eta = 0) from the same teacher. Both samplers run ``rollout``, so noise is drawn in the
same order as ``GaussianStepPolicy.sample`` with the same generator.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .policy import DDIMMean, GaussianStepPolicy, as_step_index, rollout
from .rewards import RewardModel
from .schedules import ChainSchedule

__all__ = ["guided_sample", "value_guided_sample", "DenoisedCost", "ddim_sample"]


def guided_sample(
    policy: GaussianStepPolicy,
    guide: Callable[[Tensor, int], Tensor] | RewardModel,
    batch: int,
    strength: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    step: str = "sigma",
) -> Tensor:
    """Chains (T + 1, B, *event_shape) of ``policy``, each step followed by a gradient step on a cost:

        step="sigma"     x_{t+1} <- x_{t+1} - strength * sigma_t * grad_x cost(x_{t+1}, t + 1)
        step="variance"  x_{t+1} <- x_{t+1} - strength * sigma_t^2 * grad_x cost(x_{t+1}, t + 1)

    "variance" at strength 1 is the step's Gaussian N(mu, sigma_t^2) tilted by exp(-cost) to first
    order (exact for a cost linear in x): with cost = -log p(label | x) / temperature evaluated
    where it is meaningful for noisy states (``DenoisedCost``), the chain approximates
    p_teacher(x) p(label | x)^(1 / temperature), the target of anchored RL (docs/rewards.md). Its
    guidance fades with the step's noise: the nearly noiseless last steps are left alone.

    guide: the cost, lower is better, differentiable in x: a callable ``cost(x (B, ...), t) -> (B,)``
    with t in 1..T (value guidance: the soft value V with V(x, T) = E(x); an image run's
    time-independent value is ``lambda x, t: energy(x)``), or a ``RewardModel``, whose cost
    -reward(x) is used at every t (classifier guidance: ``ClassifierReward(classifier, label)``
    gives cost -log p(label | x), so samples move up the class's log-probability). strength = 0
    gives exactly ``policy.sample``'s chains. No parameter gets a gradient.
    """
    if strength < 0:
        raise ValueError(f"guidance strength must be >= 0, got {strength}")
    if step not in ("sigma", "variance"):
        raise ValueError(f"guidance step must be 'sigma' or 'variance', got {step!r}")
    if isinstance(guide, RewardModel):
        reward = guide
        cost_to_go = lambda x, t: -reward(x)  # noqa: E731
    elif callable(guide):
        cost_to_go = guide
    else:
        raise TypeError(f"guide must be a callable cost(x, t) -> (B,) or a RewardModel, got {type(guide).__name__}")
    device = device or policy.log_sigma_fixed.device
    sigma = policy.sigma.detach()
    factor = sigma if step == "sigma" else sigma**2

    def act(x: Tensor, t: int, noise: Tensor) -> Tensor:
        with torch.no_grad():
            x_next = policy(x, t, noise)
        if strength == 0:
            return x_next
        with torch.enable_grad():
            x_req = x_next.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(cost_to_go(x_req, t + 1).sum(), x_req)
        return x_next - strength * factor[t] * grad

    x0 = torch.randn((batch, *policy.event_shape), generator=generator, device=device)
    return rollout(act, x0, policy.horizon, generator)


value_guided_sample = guided_sample
"""Value guidance (spec section 6): ``guided_sample`` with the cost-to-go V as the guide."""


class DenoisedCost(nn.Module):
    """cost(x_t, t) = -reward(x0_hat(x_t, t)) / temperature, (B,): a reward of clean samples scored
    at a teacher's predicted clean sample, so that it means something at noisy states.

        x0_hat(x_t, t) = (x_t - sqrt(1 - a_t) eps_theta(x_t, tau_t)) / sqrt(a_t),   a_t = schedule.levels[t]

    (x0_hat = x_T at t = T, where a_T = 1). eps_model(x (B, ...), timesteps (B,) float) -> (B, ...)
    and ``schedule`` are the teacher's (``DDIMMean.eps_model``, the run's ``ChainSchedule``).
    A reward without a temperature (a raw one) is used as it is. Differentiable in x; t an int or
    a (B,) long tensor in 0..T. As a guide for ``guided_sample(step="variance")`` it is classifier
    guidance through x0_hat; as V(x, t) up to the MDP's scale tau_entropy / D it is the one-sample
    estimate -log p(label | E[x_T | x_t]) of an anchored chain's soft value.
    """

    def __init__(self, eps_model: nn.Module, schedule: ChainSchedule, reward: RewardModel) -> None:
        super().__init__()
        if not isinstance(reward, RewardModel):
            raise TypeError(f"reward must be a RewardModel, got {type(reward).__name__}")
        self.eps_model, self.reward, self.horizon = eps_model, reward, schedule.horizon
        self.register_buffer("levels", schedule.levels.float())
        self.register_buffer("timesteps", schedule.timesteps.float())

    def clean(self, x: Tensor, t: int | Tensor) -> Tensor:
        """x0_hat (B, ...) of x (B, ...) at steps t (an int or (B,) long) in 0..T."""
        t = as_step_index(t, x.shape[0], x.device, self.horizon, terminal=True)
        noisy = t < self.horizon
        step = t.clamp(max=self.horizon - 1)
        eps = self.eps_model(x, self.timesteps[step])
        level = self.levels[t].view(-1, *([1] * (x.ndim - 1)))
        x0 = (x - (1 - level).sqrt() * eps) / level.sqrt()
        return torch.where(noisy.view_as(level), x0, x)

    def forward(self, x: Tensor, t: int | Tensor) -> Tensor:
        log_p = self.reward(self.clean(x, t))
        return -log_p if self.reward.temperature is None else -log_p / self.reward.temperature


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
