"""Unnormalised target densities for samplers trained without data, with exact samples where they exist.

Each target is a ``Target``: ``log_prob(x (B, D)) -> (B,)`` (normalised here, so log Z = 0) and
``sample(n, generator) -> (n, D)`` exact samples. Built-ins (``TARGETS``):

- ``gauss``: N((1, -0.5), 0.5^2 I) in 2-D (the test target of docs/rewards.md);
- ``gmm40``: the 40-mode 2-D Gaussian mixture of FAB (Midgley et al. 2023) and iDEM (Akhound-Sadegh
  et al. 2024): equal weights, means uniform on [-40, 40]^2 drawn with ``torch.manual_seed(seed)``,
  per-axis std softplus(1) = 1.3133;
- ``gmm25``: the 25-mode 2-D mixture "25GMM" of Sendera et al. (2024, arXiv:2402.05098, App. B):
  equal weights, means on the grid {-10, -5, 0, 5, 10}^2, covariance 0.3 I (per-axis std 0.5477);
- ``funnel``: Neal's funnel in 10-D: v ~ N(0, 3^2), x_i | v ~ N(0, e^v), i = 1..9;
- ``manywell``: FAB's many-well in 32-D, 16 independent double wells (x_{2i}, x_{2i+1}) with
  log p~ = sum_i (-x_{2i}^4 + 6 x_{2i}^2 + x_{2i} / 2 - x_{2i+1}^2 / 2), unnormalised: ``log_z``
  is computed by quadrature in float64, exact samples by inverse CDF on a fine grid.

``scaled(target, scale)`` is the density of x / scale (log p(scale y) + D log scale): a sampler
started from N(0, I) then works in units where the target spreads over a few units.
``importance_log_weights`` turns a trained chain into log-normaliser and ESS estimates;
``GaussianStart(shape, std)`` is a wider (or narrower) start N(0, std^2 I) of known variance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .mdp import ChainMDP
from .policy import GaussianStepPolicy

__all__ = ["Target", "GaussianStart", "gauss", "gmm40", "gmm40_means", "GMM40_STD", "gmm25", "gmm25_means", "GMM25_STD", "funnel", "manywell", "scaled", "TARGETS", "importance_log_weights"]


@dataclass(frozen=True)
class Target:
    """A target density in D dimensions: ``log_prob`` (B, D) -> (B,), ``sample`` (n, generator) -> (n, D)
    or None, and ``log_z``, the log-normaliser of ``log_prob`` (0 for a normalised one)."""

    name: str
    dim: int
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int, torch.Generator | None], Tensor] | None
    log_z: float | None = 0.0


def _mixture(name: str, means: Tensor, std: float) -> Target:
    k, d = means.shape

    def log_prob(x: Tensor) -> Tensor:
        comp = -0.5 * ((x[:, None, :] - means) / std).pow(2).sum(-1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(comp, 1) - math.log(k)

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        which = torch.randint(0, k, (n,), generator=generator)
        return means[which] + std * torch.randn(n, d, generator=generator)

    return Target(name, d, log_prob, sample)


def gauss() -> Target:
    """N((1, -0.5), 0.5^2 I) in 2-D."""
    return _mixture("gauss", torch.tensor([[1.0, -0.5]]), 0.5)


GMM40_STD = float(F.softplus(torch.tensor(1.0)))
"""The per-axis std of every gmm40 component, softplus(1) = 1.3133."""


def gmm40_means(seed: int = 0) -> Tensor:
    """The 40 means (40, 2) of ``gmm40``: uniform on [-40, 40]^2 after ``torch.manual_seed(seed)`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return (torch.rand(40, 2) - 0.5) * 2 * 40


def gmm40(seed: int = 0) -> Target:
    """FAB's / iDEM's 40-mode mixture in 2-D (module docstring)."""
    return _mixture("gmm40", gmm40_means(seed), GMM40_STD)


GMM25_STD = math.sqrt(0.3)
"""The per-axis std of every gmm25 component: variance 0.3, std 0.5477."""


def gmm25_means() -> Tensor:
    """The 25 means (25, 2) of ``gmm25``: every pair of {-10, -5, 0, 5, 10}."""
    axis = torch.tensor([-10.0, -5.0, 0.0, 5.0, 10.0])
    return torch.cartesian_prod(axis, axis)


def gmm25() -> Target:
    """Sendera et al.'s 25-mode grid mixture in 2-D (module docstring)."""
    return _mixture("gmm25", gmm25_means(), GMM25_STD)


def funnel(dim: int = 10) -> Target:
    """Neal's funnel: x_0 = v ~ N(0, 9), x_i | v ~ N(0, e^v) for i = 1..dim-1."""

    def log_prob(x: Tensor) -> Tensor:
        v, rest = x[:, 0], x[:, 1:]
        log_v = -0.5 * v.pow(2) / 9 - math.log(3) - 0.5 * math.log(2 * math.pi)
        log_rest = (-0.5 * rest.pow(2) * torch.exp(-v)[:, None] - 0.5 * v[:, None] - 0.5 * math.log(2 * math.pi)).sum(1)
        return log_v + log_rest

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        v = 3 * torch.randn(n, 1, generator=generator)
        return torch.cat([v, torch.exp(v / 2) * torch.randn(n, dim - 1, generator=generator)], 1)

    return Target("funnel", dim, log_prob, sample)


def _well_grid() -> tuple[Tensor, Tensor, float]:
    """The double well's first coordinate on a float64 grid: points, CDF and log of its 1-D normaliser."""
    x = torch.linspace(-5.0, 5.0, 400_001, dtype=torch.float64)
    log_density = -x**4 + 6 * x**2 + 0.5 * x
    dx = float(x[1] - x[0])
    peak = float(log_density.max())
    density = torch.exp(log_density - peak)
    cdf = torch.cumsum(density, 0)
    log_z = peak + math.log(float(cdf[-1]) * dx)
    return x, cdf / cdf[-1], log_z


def manywell(dim: int = 32) -> Target:
    """FAB's many-well: dim / 2 independent double wells (module docstring)."""
    if dim % 2:
        raise ValueError(f"many-well needs an even dimension, got {dim}")
    grid, cdf, log_z_well = _well_grid()

    def log_prob(x: Tensor) -> Tensor:
        a, b = x[:, 0::2], x[:, 1::2]
        return (-a**4 + 6 * a**2 + 0.5 * a - 0.5 * b**2).sum(1)

    def sample(n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, dim // 2, generator=generator, dtype=torch.float64)
        a = grid[torch.searchsorted(cdf, u).clamp(max=grid.numel() - 1)].float()
        out = torch.empty(n, dim)
        out[:, 0::2], out[:, 1::2] = a, torch.randn(n, dim // 2, generator=generator)
        return out

    return Target("manywell", dim, log_prob, sample, dim // 2 * (log_z_well + 0.5 * math.log(2 * math.pi)))


def scaled(target: Target, scale: float) -> Target:
    """The density of y = x / scale: log p(scale y) + D log scale; exact samples divided by scale."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    sample = None if target.sample is None else (lambda n, generator=None: target.sample(n, generator) / scale)
    return Target(target.name, target.dim, lambda y: target.log_prob(scale * y) + target.dim * math.log(scale), sample, target.log_z)


class GaussianStart(torch.nn.Module):
    """The start x_0 ~ N(0, std^2 I) for ``ChainMDP(start=...)``; ``variance`` = std^2, so a log-density
    reward's rho and ``importance_log_weights`` account for it (the start's density cancels in the weights)."""

    def __init__(self, event_shape: tuple[int, ...], std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.event_shape, self.std, self.variance = tuple(event_shape), float(std), float(std) ** 2

    def forward(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """x_0 = std * eps, (batch, *event_shape)."""
        return self.std * torch.randn((batch, *self.event_shape), generator=generator, device=device)


TARGETS: dict[str, Callable[[], Target]] = {"gauss": gauss, "gmm40": gmm40, "gmm25": gmm25, "funnel": funnel, "manywell": manywell}
"""Built-in targets by name."""


@torch.no_grad()
def importance_log_weights(policy: GaussianStepPolicy, mdp: ChainMDP, chain: Tensor, log_prob: Callable[[Tensor], Tensor]) -> Tensor:
    """log w (B,) of chains (T + 1, B, D) of ``policy`` for an unnormalised log-density ``log_prob``:

        log w = log p~(x_T) - log rho(x_T) + sum_t [log q(x_{t+1} | x_t) - log pi(x_{t+1} | x_t)],

    q the MDP's reference walk N(x_t, (tau_entropy / tau_velocity) s_t^2 I), rho = N(0, v I) its
    marginal at T (``ChainMDP.reference_variance``; exact for the N(0, I) and origin starts). E[w] = Z
    exactly (importance sampling on paths against q(x_{0..T-1} | x_T) p(x_T)), so logmeanexp(log w)
    estimates log Z and the weights give the effective sample size. Needs tau_velocity > 0, no anchor.
    """
    if mdp.anchor is not None or mdp.tau_velocity <= 0:
        raise ValueError("importance weights need the MDP's reference walk: tau_velocity > 0 and no anchor")
    horizon, batch = chain.shape[0] - 1, chain.shape[1]
    c = mdp.tau_entropy / mdp.tau_velocity
    variance = mdp.reference_variance()
    x_final = chain[-1]
    log_w = log_prob(x_final).double() + (x_final.pow(2).sum(1) / (2 * variance) + 0.5 * mdp.dim * math.log(2 * math.pi * variance)).double()
    for t in range(horizon):
        step = torch.full((batch,), t, dtype=torch.long, device=chain.device)
        std = math.sqrt(c * float(mdp.velocity_scale_sq[t]))
        log_q = torch.distributions.Normal(chain[t], std).log_prob(chain[t + 1]).sum(1)
        log_w = log_w + (log_q - policy.log_prob(chain[t + 1], chain[t], step)).double()
    return log_w
