"""Noise schedules of a DDPM teacher and the T-step chains derived from it.

Time runs from noise to data (spec section 1): a T-step chain visits signal levels
``levels[0] < levels[1] < ... < levels[T] = 1``, where the level of ``x_t`` is the alpha-bar
of the teacher at which ``x_t`` is assumed to sit. All arithmetic is float64: the last
continuous timestep of a short chain is ~2e-4 and float32 gets it badly wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "linear_betas",
    "alpha_bars",
    "continuous_timestep",
    "var_short_betas",
    "ChainSchedule",
]

_F64 = torch.float64


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al. linear betas, shape (num_steps,), float64."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    return torch.linspace(beta_start, beta_end, num_steps, dtype=_F64)


def alpha_bars(betas: Tensor) -> Tensor:
    """alpha_bar[i] = prod_{j<=i} (1 - beta_j), shape like betas; alpha_bar[i] is the level of DDPM timestep i."""
    return torch.cumprod(1.0 - betas.to(_F64), dim=0)


def _log_alpha_bar_continuous(t: Tensor, beta_start: float, beta_end: float, num_steps: int) -> Tensor:
    """log alpha_bar(t) of a linear-beta chain, extended to real t through the Gamma function.

    With beta_i = beta_start + i * d, 1 - beta_i = d * (c - i) where c = (1 - beta_start) / d, so
    prod_{i=0}^{t} (1 - beta_i) = d^(t+1) * Gamma(c + 1) / Gamma(c - t), exact at integers.
    """
    d = (beta_end - beta_start) / (num_steps - 1)
    c = (1.0 - beta_start) / d
    return (t + 1) * math.log(d) + math.lgamma(c + 1) - torch.lgamma(c - t)


def continuous_timestep(
    level: Tensor, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000, iters: int = 200
) -> Tensor:
    """The real timestep t in [0, num_steps - 1] with alpha_bar(t) = level, by bisection (float64).

    ``level`` is any shape of values in (alpha_bar(num_steps - 1), 1); returns the same shape.
    Levels above alpha_bar(0) map to t = 0 (up to the bisection tolerance).
    """
    target = torch.log(level.to(_F64))
    lo = torch.zeros_like(target)
    hi = torch.full_like(target, float(num_steps - 1))
    for _ in range(iters):
        mid = (lo + hi) / 2
        too_noisy = _log_alpha_bar_continuous(mid, beta_start, beta_end, num_steps) < target
        hi = torch.where(too_noisy, mid, hi)
        lo = torch.where(too_noisy, lo, mid)
    return (lo + hi) / 2


def var_short_betas(horizon: int, betas: Tensor, iters: int = 200) -> Tensor:
    """FastDPM's quadratic ("VAR") short schedule, shape (horizon,), float64.

    eta_i = beta_0 * (1 + i * k)^2 with k in (0, 0.95 / sqrt(beta_0) / horizon) chosen by bisection
    so that prod(1 - eta) matches the teacher's final alpha_bar; when that target is out of reach
    (always, for the linear 1000-step schedule) k ends at the upper bound.
    """
    _check_horizon(horizon)
    beta0 = float(betas[0])
    target = float(alpha_bars(betas)[-1])
    i = torch.arange(horizon, dtype=_F64)

    def final_level(k: float) -> float:
        return float(torch.prod(1.0 - beta0 * (1.0 + i * k) ** 2))

    lo, hi = 0.0, 0.95 / math.sqrt(beta0) / horizon
    for _ in range(iters):
        mid = (lo + hi) / 2
        if final_level(mid) > target:
            lo = mid
        else:
            hi = mid
    return beta0 * (1.0 + i * hi) ** 2


@dataclass(frozen=True)
class ChainSchedule:
    """The signal levels a T-step chain visits and the teacher timesteps at which it queries the network.

    levels:    (T + 1,) float64, increasing, ``levels[T] = 1``; ``x_t`` sits at level ``levels[t]``.
    timesteps: (T,) float64, the teacher's (real-valued) timestep for ``x_t``, t = 0..T-1.
    """

    levels: Tensor
    timesteps: Tensor

    def __post_init__(self) -> None:
        if self.levels.ndim != 1 or self.levels.numel() < 2:
            raise ValueError("levels must be a 1-D tensor of length T + 1 >= 2")
        if self.timesteps.shape != (self.levels.numel() - 1,):
            raise ValueError(f"timesteps must have shape ({self.levels.numel() - 1},), got {tuple(self.timesteps.shape)}")
        if not bool((self.levels[1:] > self.levels[:-1]).all()) or float(self.levels[-1]) != 1.0:
            raise ValueError("levels must increase strictly and end at 1")

    @property
    def horizon(self) -> int:
        return self.timesteps.numel()

    @classmethod
    def var(cls, horizon: int, betas: Tensor | None = None) -> "ChainSchedule":
        """FastDPM's VAR chain of ``horizon`` steps from a linear-beta teacher (spec section 7)."""
        betas = linear_betas() if betas is None else betas.to(_F64)
        _check_horizon(horizon)
        if horizon > betas.numel():
            raise ValueError(f"horizon {horizon} exceeds the teacher's {betas.numel()} steps")
        gbar = torch.cumprod(1.0 - var_short_betas(horizon, betas), dim=0)  # Gbar_k, k = 0..T-1
        levels = torch.cat([gbar.flip(0), torch.ones(1, dtype=_F64)])
        beta_start, beta_end, n = float(betas[0]), float(betas[-1]), betas.numel()
        return cls(levels, continuous_timestep(levels[:-1], beta_start, beta_end, n))

    @classmethod
    def strided(cls, horizon: int, betas: Tensor | None = None) -> "ChainSchedule":
        """Every (N / T)-th teacher timestep, "trailing" spacing: starts at N - 1, ends near 0.

        With horizon = N this is the teacher's own ancestral chain.
        """
        betas = linear_betas() if betas is None else betas.to(_F64)
        _check_horizon(horizon)
        n = betas.numel()
        if horizon > n:
            raise ValueError(f"horizon {horizon} exceeds the teacher's {n} steps")
        # [:horizon]: in floating point the arange can overshoot by one element near 0 (e.g. T = 61 of
        # 1000), which became step -1, i.e. alpha_bar[-1], and a schedule that failed its own checks
        steps = torch.round(torch.arange(n, 0, -n / horizon, dtype=_F64)[:horizon]).long() - 1
        levels = torch.cat([alpha_bars(betas)[steps], torch.ones(1, dtype=_F64)])
        return cls(levels, steps.to(_F64))

    def ancestral_sigmas(self) -> Tensor:
        """DDIM eta = 1 noise of each step, (T,): sqrt((1-a')/(1-a) * (1 - a/a')); the last is 0."""
        a, a_next = self.levels[:-1], self.levels[1:]
        return torch.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))

    def ddim_coefficients(self, eta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """(c_x, c_eps, sigma), each (T,): the DDIM step x' = c_x x + c_eps eps_theta(x) + sigma z.

        c_x = sqrt(a'/a), c_eps = sqrt(1 - a' - sigma^2) - sqrt(1 - a) sqrt(a'/a), sigma = eta * ancestral.
        """
        a, a_next = self.levels[:-1], self.levels[1:]
        sigma = eta * self.ancestral_sigmas()
        c_x = torch.sqrt(a_next / a)
        c_eps = torch.sqrt((1 - a_next - sigma**2).clamp_min(0)) - torch.sqrt(1 - a) * c_x
        return c_x, c_eps, sigma


def _check_horizon(horizon: int) -> None:
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"the number of steps T must be an integer >= 1, got {horizon!r}")
