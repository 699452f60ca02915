"""Reward models: a batch of final samples x_T (B, ...) -> rewards (B,), higher is better.

``EnergyReward`` wraps a learnable energy E (reward = -E) and owns its contrastive update
(spec section 3); ``FixedReward`` wraps any callable. The DxMI loop updates a reward only when
``learnable`` is True: inverse RL when it is, plain max-entropy RL when it is not.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["RewardModel", "EnergyReward", "FixedReward", "contrastive_energy_loss"]


class RewardModel(nn.Module):
    """Base class: ``forward(x) -> (B,)`` reward; learnable rewards also implement ``update``."""

    learnable: bool = False

    def cost(self, x: Tensor) -> Tensor:
        """The terminal cost -reward(x), (B,): the boundary V(x, T) of the soft value."""
        return -self(x)

    def update(self, x_data: Tensor, x_model: Tensor) -> dict[str, Tensor]:
        raise TypeError(f"{type(self).__name__} is not learnable")


def contrastive_energy_loss(e_data: Tensor, e_model: Tensor, gamma: float) -> Tensor:
    """mean E(x_data) - mean E(x_model) + gamma * (mean E(x_data)^2 + mean E(x_model)^2), a scalar."""
    return e_data.mean() - e_model.mean() + gamma * ((e_data**2).mean() + (e_model**2).mean())


class EnergyReward(RewardModel):
    """reward(x) = -E(x) for an energy network E: (B, ...) -> (B,), trained contrastively without MCMC.

    The negatives are the sampler's own final samples. ``optimizer`` (default: Adam at ``lr``)
    steps the energy's parameters; when they are shared with a value network, pass the value's
    optimiser so that one Adam state sees both losses.
    """

    learnable = True

    def __init__(
        self,
        energy: nn.Module,
        lr: float = 1e-3,
        gamma: float = 1.0,
        grad_clip: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.energy, self.gamma, self.grad_clip = energy, gamma, grad_clip
        self.optimizer = optimizer or torch.optim.Adam(self.energy.parameters(), lr=lr)

    def forward(self, x: Tensor) -> Tensor:
        return -self.energy(x)

    def cost(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def loss(self, x_data: Tensor, x_model: Tensor) -> dict[str, Tensor]:
        """The contrastive loss on positives x_data and negatives x_model, both (B, ...), one forward pass."""
        energies = self.energy(torch.cat([x_data, x_model.detach()]))
        e_data, e_model = energies[: x_data.shape[0]], energies[x_data.shape[0] :]
        return {
            "loss_energy": contrastive_energy_loss(e_data, e_model, self.gamma),
            "energy_data": e_data.mean().detach(),
            "energy_model": e_model.mean().detach(),
        }

    def update(self, x_data: Tensor, x_model: Tensor) -> dict[str, Tensor]:
        """One optimiser step on the contrastive loss; returns the detached loss terms."""
        out = self.loss(x_data, x_model)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss_energy"].backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.energy.parameters(), self.grad_clip)
        self.optimizer.step()
        out["loss_energy"] = out["loss_energy"].detach()
        return out


class FixedReward(RewardModel):
    """Any callable x (B, ...) -> (B,) reward as a fixed (non-learnable) reward model."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        r = self.fn(x)
        if r.shape != (x.shape[0],):
            raise ValueError(f"a reward function must return shape ({x.shape[0]},), got {tuple(r.shape)}")
        return r
