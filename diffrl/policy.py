"""Gaussian step policies: the sampler of a T-step diffusion chain as an RL policy.

Step t (t = 0..T-1, noise to data): ``x_{t+1} = mean(x_t, t) + sigma_t * eps``, eps ~ N(0, I).
``log sigma_t`` is a trainable parameter per step (its own optimiser group); ``fix_last`` keeps
the last step's sigma at its initial value.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .schedules import ChainSchedule

__all__ = ["DDIMMean", "GaussianStepPolicy", "rollout", "as_step_index"]


def as_step_index(t: int | Tensor, batch: int, device: torch.device, horizon: int | None = None) -> Tensor:
    """A step index given as an int or a (B,) tensor, returned as a (B,) long tensor; with ``horizon``
    checked to lie in 0..horizon-1 (an int at once, a tensor without a host sync on GPUs)."""
    if horizon is not None:
        if isinstance(t, int) and not 0 <= t < horizon:
            raise ValueError(f"step index t = {t} is outside 0..{horizon - 1}")
        if isinstance(t, Tensor):
            torch._assert_async(((t >= 0) & (t < horizon)).all(), f"a step index is outside 0..{horizon - 1}")
    return torch.as_tensor(t, device=device, dtype=torch.long).expand(batch)


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values (T,) gathered at t (B,) and shaped (B, 1, ..., 1) to broadcast against like (B, ...)."""
    return values[t].view(-1, *([1] * (like.ndim - 1)))


class DDIMMean(nn.Module):
    """The mean of step t written through a teacher's epsilon model: ``c_x[t] x + c_eps[t] eps_theta(x, tau_t)``.

    eps_model(x (B, ...), timesteps (B,) float) -> (B, ...). The coefficients come from the
    schedule's DDIM step with ``eta`` (default 1) and stay fixed (spec section 7: the mean always
    uses the schedule sigma, even once the injected noise is trained). With eta = 0 the mean is
    the whole deterministic DDIM step.
    """

    def __init__(self, eps_model: nn.Module, schedule: ChainSchedule, eta: float = 1.0) -> None:
        super().__init__()
        self.eps_model = eps_model
        c_x, c_eps, _ = schedule.ddim_coefficients(eta=eta)
        self.register_buffer("c_x", c_x.float())
        self.register_buffer("c_eps", c_eps.float())
        self.register_buffer("timesteps", schedule.timesteps.float())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, ...), t (B,) long -> mean (B, ...)."""
        eps = self.eps_model(x, self.timesteps[t])
        return _per_sample(self.c_x, t, x) * x + _per_sample(self.c_eps, t, x) * eps


class GaussianStepPolicy(nn.Module):
    """pi(x_{t+1} | x_t) = N(mean(x_t, t), sigma_t^2 I) with a trainable per-step sigma.

    mean_model(x (B, ...), t (B,) long) -> (B, ...). init_sigma (T,) positive; ``event_shape`` is
    the shape of one sample, e.g. (2,) or (1, 8, 8).
    """

    def __init__(
        self, mean_model: nn.Module, init_sigma: Tensor, event_shape: tuple[int, ...], fix_last: bool = False
    ) -> None:
        super().__init__()
        init_sigma = torch.as_tensor(init_sigma, dtype=torch.float32)
        if init_sigma.ndim != 1 or init_sigma.numel() < 1:
            raise ValueError("init_sigma must be a 1-D tensor with one sigma per step")
        if not bool((init_sigma > 0).all()):
            raise ValueError(f"every initial sigma must be positive, got {init_sigma.tolist()}")
        self.mean_model = mean_model
        self.event_shape = tuple(event_shape)
        self.horizon = init_sigma.numel()
        self.fix_last = fix_last
        n_train = self.horizon - 1 if fix_last else self.horizon
        self.log_sigma_train = nn.Parameter(init_sigma[:n_train].log())
        self.register_buffer("log_sigma_fixed", init_sigma[n_train:].log())

    @classmethod
    def from_schedule(
        cls,
        eps_model: nn.Module,
        schedule: ChainSchedule,
        event_shape: tuple[int, ...],
        last_sigma: float = 1e-3,
        fix_last: bool = True,
    ) -> "GaussianStepPolicy":
        """The DDIM eta = 1 chain of ``schedule`` around a teacher's eps model; the last step's sigma
        (0 in the schedule) becomes ``last_sigma``."""
        sigma = schedule.ancestral_sigmas().float().clone()
        sigma[-1] = last_sigma
        return cls(DDIMMean(eps_model, schedule), sigma, event_shape, fix_last=fix_last)

    @property
    def log_sigma(self) -> Tensor:
        """(T,) log sigma_t of every step."""
        return torch.cat([self.log_sigma_train, self.log_sigma_fixed])

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def mean_parameters(self) -> list[nn.Parameter]:
        return list(self.mean_model.parameters())

    def sigma_parameters(self) -> list[nn.Parameter]:
        return [self.log_sigma_train]

    def mean(self, x: Tensor, t: int | Tensor) -> Tensor:
        return self.mean_model(x, as_step_index(t, x.shape[0], x.device, self.horizon))

    def forward(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        """One reparametrised step: x (B, ...), t int or (B,) -> x_{t+1} (B, ...); differentiable."""
        t = as_step_index(t, x.shape[0], x.device, self.horizon)
        noise = torch.randn_like(x) if noise is None else noise
        return self.mean_model(x, t) + _per_sample(self.sigma, t, x) * noise

    def log_prob(self, x_next: Tensor, x: Tensor, t: int | Tensor) -> Tensor:
        """log pi(x_next | x) summed over the event dimensions, (B,)."""
        t = as_step_index(t, x.shape[0], x.device, self.horizon)
        log_sigma = self.log_sigma[t]
        z = (x_next - self.mean_model(x, t)).flatten(1) / log_sigma.exp()[:, None]
        d = z.shape[1]
        return -0.5 * (z**2).sum(1) - d * log_sigma - 0.5 * d * math.log(2 * math.pi)

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """A batch of whole chains from x_0 ~ N(0, I): (T + 1, B, *event_shape); [-1] are the samples."""
        device = device or self.log_sigma_fixed.device
        x0 = torch.randn((batch, *self.event_shape), generator=generator, device=device)
        return rollout(self, x0, self.horizon, generator)


def rollout(
    act: Callable[[Tensor, int, Tensor], Tensor], x0: Tensor, horizon: int, generator: torch.Generator | None = None
) -> Tensor:
    """Run ``act(x_t, t, noise)`` for t = 0..horizon-1 from x0 (B, ...); returns (horizon + 1, B, ...).

    Noise for step t is drawn right before the step, in order, from ``generator`` (or the global
    RNG): a Gymnasium or TorchRL rollout that draws in the same order reproduces it exactly.
    """
    chain = [x0]
    for t in range(horizon):
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        chain.append(act(chain[-1], t, noise))
    return torch.stack(chain)
