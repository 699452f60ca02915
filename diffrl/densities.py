"""Unnormalised target densities for samplers trained without data, with exact samples where they exist.

Each target is a ``Target``: ``log_prob(x (B, D)) -> (B,)`` (normalised here, so log Z = 0) and
``sample(n, generator) -> (n, D)`` exact samples. Built-ins (``TARGETS``):

- ``gauss``: N((1, -0.5), 0.5^2 I) in 2-D (the test target of docs/rewards.md);
- ``gmm40``: the 40-mode 2-D Gaussian mixture of FAB (Midgley et al. 2023) and iDEM (Akhound-Sadegh
  et al. 2024): equal weights, means uniform on [-40, 40]^2 drawn with ``torch.manual_seed(seed)``,
  per-axis std softplus(1) = 1.3133;
- ``funnel``: Neal's funnel in 10-D: v ~ N(0, 3^2), x_i | v ~ N(0, e^v), i = 1..9.

``scaled(target, scale)`` is the density of x / scale (log p(scale y) + D log scale): a sampler
started from N(0, I) then works in units where the target spreads over a few units.
``importance_log_weights`` turns a trained chain into log-normaliser and ESS estimates.
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

__all__ = ["Target", "gauss", "gmm40", "funnel", "scaled", "TARGETS", "importance_log_weights"]


@dataclass(frozen=True)
class Target:
    """A target density in D dimensions: ``log_prob`` (B, D) -> (B,), ``sample`` (n, generator) -> (n, D) or None."""

    name: str
    dim: int
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int, torch.Generator | None], Tensor] | None


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


def gmm40(seed: int = 0) -> Target:
    """FAB's / iDEM's 40-mode mixture in 2-D (module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        means = (torch.rand(40, 2) - 0.5) * 2 * 40
    return _mixture("gmm40", means, float(F.softplus(torch.tensor(1.0))))


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


def scaled(target: Target, scale: float) -> Target:
    """The density of y = x / scale: log p(scale y) + D log scale; exact samples divided by scale."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    sample = None if target.sample is None else (lambda n, generator=None: target.sample(n, generator) / scale)
    return Target(target.name, target.dim, lambda y: target.log_prob(scale * y) + target.dim * math.log(scale), sample)


TARGETS: dict[str, Callable[[], Target]] = {"gauss": gauss, "gmm40": gmm40, "funnel": funnel}
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
