"""Networks: time-conditioned MLPs for point data (epsilon models, values, energies)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_embedding", "TimeMLP", "AtTime", "ResidualMean", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style embedding of real times t, shape (...) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class TimeMLP(nn.Module):
    """f(x, t): an MLP on (..., D) inputs conditioned on real times t (...) through a sinusoidal embedding.

    ``time_scale`` multiplies t before embedding, so small integer step indices (0..T) and DDPM
    timesteps (0..999) both spread over the embedding's frequencies. ``out_dim`` = D for an
    epsilon model, 1 for a value or energy (then the output is squeezed to (...)). ``activation``
    names the hidden non-linearity (a key of ``ACTIVATIONS``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        time_scale: float = 1.0,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or hidden < 1 or depth < 1:
            raise ValueError("in_dim, out_dim, hidden and depth must be positive")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        self.in_dim, self.out_dim, self.time_dim, self.time_scale = in_dim, out_dim, time_dim, time_scale
        self.time_proj = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(act(), nn.Linear(hidden, hidden)) for _ in range(depth - 1))
        self.out = nn.Sequential(act(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (..., D), t (...) or a scalar -> (..., out_dim), or (...) when out_dim = 1; any leading dims."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[:-1])
        h = self.inp(x) + self.time_proj(sinusoidal_embedding(t * self.time_scale, self.time_dim))
        for block in self.blocks:
            h = h + block(h)
        out = self.out(h)
        return out.squeeze(-1) if self.out_dim == 1 else out


class AtTime(nn.Module):
    """g(x) = f(x, t) at a fixed t: the energy E(x) = V(x, T) of a time-dependent value (shared parameters).

    x (*batch, *event) -> (*batch,), where ``event_ndim`` is the number of event dimensions (1 for
    points, 3 for images); f must accept the leading dims (a TimeMLP does).
    """

    def __init__(self, net: nn.Module, t: float, event_ndim: int = 1) -> None:
        super().__init__()
        self.net, self.t, self.event_ndim = net, float(t), event_ndim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, torch.full(x.shape[: x.ndim - self.event_ndim], self.t, device=x.device))


class ResidualMean(nn.Module):
    """mean(x, t) = x + net(x, t), (B, ...): a step-policy mean that starts as a random walk (net ~ 0)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x + self.net(x, t)
