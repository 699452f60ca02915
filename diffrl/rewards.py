"""Reward models: a batch of final samples x_T (B, ...) -> rewards (B,), higher is better.

``EnergyReward`` wraps a learnable energy E (reward = -E) and owns its contrastive update
(spec section 3); ``FixedReward`` wraps any callable; ``WeightedReward`` sums weighted rewards of
both kinds. The DxMI loop updates a reward only when ``learnable`` is True (inverse RL when it
is, plain max-entropy RL when it is not) and reads nothing but this interface: ``update``,
``training_state`` / ``load_training_state``, ``optimizer_steps`` and ``energy_network``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .optim import OptimizerStep

__all__ = ["RewardModel", "EnergyReward", "FixedReward", "WeightedReward", "contrastive_energy_loss"]


class RewardModel(nn.Module):
    """Base class: ``forward(x (B, ...)) -> (B,)`` reward, higher is better.

    Learnable rewards set ``learnable = True`` and implement ``update`` (one training step on data
    and model samples) and their optimiser state in ``training_state``. ``energy_network`` is the
    module whose weights the DxMI loop may average for evaluation (None: nothing to average).
    """

    learnable: bool = False

    def cost(self, x: Tensor) -> Tensor:
        """The terminal cost -reward(x), (B,): the boundary V(x, T) of the soft value."""
        return -self(x)

    def update(self, x_data: Tensor, x_model: Tensor) -> dict[str, Tensor]:
        raise TypeError(f"{type(self).__name__} is not learnable")

    @property
    def energy_network(self) -> nn.Module | None:
        """A module x (B, ...) -> cost (B,) holding the learnable weights, or None."""
        return None

    def optimizer_steps(self) -> list[OptimizerStep]:
        """The optimiser steps of ``update`` (set ``grad_reduce`` on them for many processes)."""
        return []

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [step.optimizer for step in self.optimizer_steps()]

    def training_state(self) -> dict[str, Any]:
        """Everything besides ``state_dict()`` that an exact resume needs (optimiser states)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        pass


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
        self.energy, self.gamma = energy, gamma
        self.optimizer = optimizer or torch.optim.Adam(self.energy.parameters(), lr=lr)
        self.step = OptimizerStep(self.optimizer, grad_clip)

    @property
    def energy_network(self) -> nn.Module:
        return self.energy

    def optimizer_steps(self) -> list[OptimizerStep]:
        return [self.step]

    def training_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

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
        self.step(out["loss_energy"], "loss_energy (the reward's contrastive loss)")
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


class _WeightedCost(nn.Module):
    """cost(x) = -sum_i w_i reward_i(x), (B,): the energy of a ``WeightedReward``."""

    def __init__(self, rewards: nn.ModuleList, weights: Sequence[float]) -> None:
        super().__init__()
        self.rewards, self.weights = rewards, list(weights)

    def forward(self, x: Tensor) -> Tensor:
        return -sum(w * r(x) for w, r in zip(self.weights, self.rewards))


class WeightedReward(RewardModel):
    """reward(x) = sum_i w_i reward_i(x) over any rewards, learnable and fixed.

    ``update`` steps every learnable term on the same data and model samples (each with its own
    optimiser; their metrics are prefixed ``term<i>/``). ``energy_network`` is the weighted cost
    of all terms, so an energy average covers the learnable terms' weights.
    """

    def __init__(self, terms: Sequence[tuple[float, RewardModel]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedReward needs at least one (weight, reward) term")
        for weight, reward in terms:
            if not isinstance(reward, RewardModel):
                raise TypeError(f"every term must be a RewardModel (wrap callables in FixedReward), got {type(reward).__name__}")
            if not torch.isfinite(torch.tensor(float(weight))):
                raise ValueError(f"reward weights must be finite, got {weight}")
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(r for _, r in terms)
        self.learnable = any(r.learnable for r in self.terms)

    def forward(self, x: Tensor) -> Tensor:
        return sum(w * r(x) for w, r in zip(self.weights, self.terms))

    def update(self, x_data: Tensor, x_model: Tensor) -> dict[str, Tensor]:
        metrics = {}
        for i, reward in enumerate(self.terms):
            if reward.learnable:
                out = reward.update(x_data, x_model)
                metrics.update({(f"{k}_term{i}" if k.startswith("loss") else f"term{i}/{k}"): v for k, v in out.items()})
        return metrics

    @property
    def energy_network(self) -> nn.Module | None:
        return _WeightedCost(self.terms, self.weights) if self.learnable else None

    def optimizer_steps(self) -> list[OptimizerStep]:
        return [step for reward in self.terms for step in reward.optimizer_steps()]

    def training_state(self) -> dict[str, Any]:
        return {"terms": [reward.training_state() for reward in self.terms]}

    def load_training_state(self, state: dict[str, Any]) -> None:
        for reward, term_state in zip(self.terms, state["terms"], strict=True):
            reward.load_training_state(term_state)
