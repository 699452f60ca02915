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
from torch.distributions import Independent, Normal

from .schedules import ChainSchedule

__all__ = ["DDIMMean", "GaussianStepPolicy", "rollout", "as_step_index"]


def as_step_index(
    t: int | Tensor, batch_shape: int | tuple[int, ...], device: torch.device, horizon: int | None = None, terminal: bool = False
) -> Tensor:
    """A step index as a long tensor of ``batch_shape``.

    t: an int, or a tensor of integral values (long, int or float dtype) shaped (), batch_shape,
    or batch_shape + (1,) (TorchRL's column convention). With ``horizon`` the values are checked to
    lie in 0..horizon-1, or 0..horizon when ``terminal`` (t = T is the terminal state): an int at
    once, a tensor without a host sync on GPUs.
    """
    batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
    last = None if horizon is None else horizon if terminal else horizon - 1
    if not isinstance(t, Tensor):
        if last is not None and not 0 <= t <= last:
            raise ValueError(f"step index t = {t} is outside 0..{last}")
        return torch.as_tensor(t, device=device, dtype=torch.long).expand(batch_shape)
    if t.dtype.is_floating_point:
        torch._assert_async((t == t.round()).all(), "a float step index must hold whole numbers")
    elif t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"a step index must be an integer or float tensor, got {t.dtype}")
    if last is not None:
        torch._assert_async(((t >= 0) & (t <= last)).all(), f"a step index is outside 0..{last}")
    if t.ndim == len(batch_shape) + 1 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    if t.ndim > 0 and tuple(t.shape) != batch_shape:
        raise ValueError(f"a step index of shape {tuple(t.shape)} does not fit the batch shape {batch_shape}")
    return t.to(device=device, dtype=torch.long).expand(batch_shape)


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values (T,) gathered at t (*batch,) and shaped (*batch, 1, ..., 1) to broadcast against like (*batch, ...)."""
    return values[t].view(*t.shape, *([1] * (like.ndim - t.ndim)))


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

    mean_model(x (B, *event), t (B,) long in 0..T-1) -> (B, *event). init_sigma (T,) positive;
    ``event_shape`` is the shape of one sample, e.g. (2,) or (1, 8, 8). The policy's methods accept
    any leading batch dims (flattened to one for mean_model) and step indices as ints or tensors
    (``as_step_index``); t = T is the terminal state (see ``dist``).
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

    def _batch_shape(self, x: Tensor) -> torch.Size:
        """The leading dims of x (*batch, *event_shape); a ValueError when x does not end in the event shape."""
        n = len(self.event_shape)
        if x.ndim < n or tuple(x.shape[x.ndim - n :]) != self.event_shape:
            raise ValueError(f"expected samples of shape (*batch, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        return x.shape[: x.ndim - n]

    def _step(self, x: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """The mean (*batch, *event) of step t at x (*batch, *event) and the index (*batch,) long of
        the sigma it uses.

        t = T (the terminal state) keeps x: mean x, with the last step's sigma, so that losses which
        evaluate the policy on terminal next-states (SAC, GAE bootstraps) get finite values to mask.
        """
        batch = self._batch_shape(x)
        t = as_step_index(t, batch, x.device, self.horizon, terminal=True)
        flat_x, flat_t = x.reshape(-1, *self.event_shape), t.reshape(-1)
        step = flat_t.clamp(max=self.horizon - 1)
        mean = self.mean_model(flat_x, step)
        terminal = (flat_t == self.horizon).view(-1, *([1] * len(self.event_shape)))
        mean = torch.where(terminal, flat_x.to(mean.dtype), mean)
        return mean.reshape(x.shape), step.reshape(batch)

    def mean(self, x: Tensor, t: int | Tensor) -> Tensor:
        """The step's mean (*batch, *event) at x (*batch, *event), t in 0..T (see ``dist``)."""
        return self._step(x, t)[0]

    def forward(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        """One reparametrised step x_{t+1} = mean(x_t, t) + sigma_t noise, differentiable.

        x (*batch, *event); t an int in 0..T-1 (the fast path) or a step index tensor (see
        ``as_step_index``; t = T keeps x plus the last sigma's noise); noise defaults to N(0, I).
        """
        noise = torch.randn_like(x) if noise is None else noise
        if isinstance(t, int) and 0 <= t < self.horizon and x.ndim == len(self.event_shape) + 1:
            step = as_step_index(t, x.shape[0], x.device, self.horizon)
            return self.mean_model(x, step) + _per_sample(self.sigma, step, x) * noise
        return self.rsample(x, t, noise)[0]

    def rsample(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x_{t+1}, mean), both (*batch, *event): ``forward``'s reparametrised step and the mean it was
        drawn around, for losses that also need the mean (an anchor's expected cost)."""
        mean, step = self._step(x, t)
        noise = torch.randn_like(mean) if noise is None else noise
        return mean + _per_sample(self.sigma, step, mean) * noise, mean

    def dist(self, x: Tensor, t: int | Tensor) -> Independent:
        """pi(. | x_t, t) as ``Independent(Normal(mean, sigma_t), len(event_shape))``: batch shape
        *batch, event shape ``event_shape``; differentiable in the mean's and sigma's parameters.

        t in 0..T; at t = T (the terminal state) the distribution is centred on x with the last sigma.
        """
        mean, step = self._step(x, t)
        return Independent(Normal(mean, _per_sample(self.sigma, step, mean).expand_as(mean)), len(self.event_shape))

    def log_prob(self, x_next: Tensor, x: Tensor, t: int | Tensor, reduction: str = "sum") -> Tensor:
        """log pi(x_next | x, t) in float32, (*batch,): summed over the event dimensions (the log
        density, ``reduction="sum"``) or averaged over them (``"mean"``, the per-dimension scale of
        the MDP's costs). Equal to ``dist(x, t).log_prob(x_next)`` for "sum"."""
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        mean, step = self._step(x, t)
        log_sigma = self.log_sigma[step]
        z = (x_next.float() - mean.float()).flatten(x.ndim - len(self.event_shape)) / log_sigma.exp()[..., None]
        d = z.shape[-1]
        log_density = -0.5 * (z**2).sum(-1) - d * log_sigma - 0.5 * d * math.log(2 * math.pi)
        return log_density if reduction == "sum" else log_density / d

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
