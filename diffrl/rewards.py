"""Reward models: a batch of final samples x_T (B, ...) -> rewards (B,), higher is better.

``EnergyReward`` wraps a learnable energy E (reward = -E) and owns its contrastive update
(spec section 3); ``FixedReward`` wraps any callable; ``ClassifierReward`` is a classifier's
log-probability of one class; ``WeightedReward`` sums weighted rewards of all kinds.

``temperature``: None (the default) makes the reward a raw one, used as it is (cost = -reward).
A float makes it a log-density log p(x) (up to a constant) and the chain then targets
p^(1/temperature): ``ChainMDP.terminal_cost`` turns it into the cost with the MDP's weights
(docs/rewards.md derives the conversion and says when it is exact). The DxMI loop updates a reward only when ``learnable`` is True (inverse RL when it
is, plain max-entropy RL when it is not) and reads nothing but this interface: ``update``,
``training_state`` / ``load_training_state``, ``optimizer_steps`` and ``energy_network``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .optim import OptimizerStep

__all__ = ["RewardModel", "EnergyReward", "FixedReward", "ClassifierReward", "WeightedReward", "contrastive_energy_loss"]


class RewardModel(nn.Module):
    """Base class: ``forward(x (B, ...)) -> (B,)`` reward, higher is better.

    Learnable rewards set ``learnable = True`` and implement ``update`` (one training step on data
    and model samples) and their optimiser state in ``training_state``. ``energy_network`` is the
    module whose weights the DxMI loop may average for evaluation (None: nothing to average).
    ``temperature``: None (a raw reward) or a float > 0 (the reward is a log-density; module docstring).
    """

    learnable: bool = False
    temperature: float | None = None

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


def _check_temperature(temperature: float | None) -> float | None:
    """temperature unchanged when None or a finite float > 0; a ValueError otherwise."""
    if temperature is None:
        return None
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 or None (a raw reward), got {temperature!r}")
    return float(temperature)


class FixedReward(RewardModel):
    """Any callable x (B, ...) -> (B,) reward as a fixed (non-learnable) reward model.

    temperature None: the callable's value is the reward. A float: the callable is a log-density
    log p(x) (up to a constant) and the chain targets p^(1/temperature) (module docstring).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], temperature: float | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.temperature = _check_temperature(temperature)

    def forward(self, x: Tensor) -> Tensor:
        r = self.fn(x)
        if r.shape != (x.shape[0],):
            raise ValueError(f"a reward function must return shape ({x.shape[0]},), got {tuple(r.shape)}")
        return r


class ClassifierReward(RewardModel):
    """reward(x) = log softmax(classifier(x))[:, label], (B,): the log-probability log p(label | x).

    classifier: x (B, ...) -> logits (B, K), frozen here (its parameters stop requiring gradient;
    gradients still flow to x). With a ``temperature`` (default 1) the reward is a log-likelihood:
    in an MDP anchored to a teacher (``ChainMDP(anchor=...)``, tau_velocity = 0, tau_anchor =
    tau_entropy) the chain targets p_teacher(x) p(label | x)^(1/temperature) (docs/rewards.md).
    """

    def __init__(self, classifier: nn.Module, label: int, temperature: float | None = 1.0) -> None:
        super().__init__()
        if not isinstance(label, int) or label < 0:
            raise ValueError(f"label must be a class index (int >= 0), got {label!r}")
        self.classifier = classifier.requires_grad_(False)
        self.label = label
        self.temperature = _check_temperature(temperature)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(x)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier must return logits (B, K) = ({x.shape[0]}, K), got {tuple(logits.shape)}")
        if not self.label < logits.shape[1]:
            raise ValueError(f"label {self.label} is not one of the classifier's {logits.shape[1]} classes")
        return torch.log_softmax(logits.float(), dim=1)[:, self.label]


class _WeightedCost(nn.Module):
    """cost(x) = -sum_i w_i reward_i(x), (B,): the energy of a ``WeightedReward``."""

    def __init__(self, rewards: nn.ModuleList, weights: Sequence[float]) -> None:
        super().__init__()
        self.rewards, self.weights = rewards, list(weights)

    def forward(self, x: Tensor) -> Tensor:
        return -sum(w * r(x) for w, r in zip(self.weights, self.rewards))


class WeightedReward(RewardModel):
    """reward(x) = sum_i w_i reward_i(x) over any rewards, learnable and fixed.

    Temperatures compose when every term has one: the terms are log-densities log p_i, the sum is
    reward(x) = sum_i w_i log p_i(x) / temperature_i, the log-density of prod_i p_i^(w_i / T_i),
    at temperature 1. When no term has one the sum is a raw reward (temperature None). Raw and
    log-density terms do not mix (a ValueError): their units differ (docs/rewards.md).

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
        temperatures = [r.temperature for _, r in terms]
        if any(t is None for t in temperatures) and any(t is not None for t in temperatures):
            raise ValueError(
                f"WeightedReward cannot mix raw rewards (temperature None) with log-density rewards (a temperature), "
                f"got temperatures {temperatures}: give every term a temperature or none"
            )
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(r for _, r in terms)
        self.learnable = any(r.learnable for r in self.terms)
        self.temperature = None if temperatures[0] is None else 1.0

    def forward(self, x: Tensor) -> Tensor:
        if self.temperature is None:
            return sum(w * r(x) for w, r in zip(self.weights, self.terms))
        return sum(w / r.temperature * r(x) for w, r in zip(self.weights, self.terms))

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
