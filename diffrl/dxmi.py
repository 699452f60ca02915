"""The DxMI outer loop (spec section 8), written against the Agent and RewardModel interfaces.

Per data batch: sample B chains from the current sampler (no grad); AVR update of s_t; one
reward step if the reward is learnable (inverse RL), none otherwise (plain max-ent RL); then
``agent.update(chain)``. Chains are dropped afterwards (fresh on-policy data every batch).
``step()`` collects its own chains; ``update(chain, x_data)`` trains on chains collected
elsewhere (a TorchRL or Tianshou collector) exactly the same way.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .agent import Agent
from .mdp import ChainMDP
from .optim import check_finite
from .policy import GaussianStepPolicy, rollout

__all__ = ["DxMI", "ModelEMA"]


class ModelEMA:
    """A frozen copy of ``source`` holding the exponentially weighted average of the parameters seen
    at its n ``update`` calls, normalised so that the weights sum to one (no pull towards the
    initial weights; buffers are copied):

        p_ema = sum_k decay^(n - k) p_k / sum_k decay^(n - k),   k = 1..n

    computed as p_ema <- d_n p_ema + (1 - d_n) p with d_n = decay (1 - decay^(n-1)) / (1 - decay^n).
    """

    def __init__(self, source: nn.Module, decay: float, name: str = "decay") -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"{name} must be in [0, 1) or None, got {decay}")
        self.source, self.decay, self.updates = source, decay, 0
        self.model = copy.deepcopy(source).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = self.decay * (1 - self.decay ** (self.updates - 1)) / (1 - self.decay**self.updates)
        for p_ema, p in zip(self.model.parameters(), self.source.parameters()):
            p_ema.lerp_(p, 1 - d)
        for b_ema, b in zip(self.model.buffers(), self.source.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


class DxMI:
    """Joint training of a sampler (through ``agent``) and ``mdp.reward``.

    data: an iterator of data batches (B, *event_shape), already normalised; required when the
    reward is learnable. With a fixed reward, give ``batch_size`` instead (plain max-ent RL).
    ema_decay: keep an exponential moving average of the policy for evaluation and sampling
    (None: evaluate the raw policy).
    energy_ema_decay: likewise for the learnable reward's energy network, used for evaluation
    only (training keeps using the raw energy as V(x, T)).
    lr_schedulers: learning-rate schedulers of the agent's and the reward's optimisers, stepped
    once per iteration and saved with the training state.
    """

    def __init__(
        self,
        agent: Agent,
        mdp: ChainMDP,
        data: Iterator[Tensor] | None = None,
        batch_size: int | None = None,
        ema_decay: float | None = None,
        energy_ema_decay: float | None = None,
        lr_schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    ) -> None:
        if data is None and (mdp.reward.learnable or batch_size is None):
            raise ValueError("give data batches (a learnable reward needs them) or, for a fixed reward, a batch_size")
        if agent.policy.horizon != mdp.horizon:
            raise ValueError(f"agent horizon {agent.policy.horizon} != MDP horizon {mdp.horizon}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        energy = mdp.reward.energy_network
        if energy_ema_decay is not None and not (mdp.reward.learnable and energy is not None):
            raise ValueError("energy_ema_decay needs a learnable reward with an energy network (reward.energy_network)")
        self.agent, self.mdp, self.data, self.batch_size = agent, mdp, data, batch_size
        self.lr_schedulers = list(lr_schedulers)
        self.ema_policy = ModelEMA(agent.policy, ema_decay, "ema_decay") if ema_decay is not None else None
        self.ema_energy = ModelEMA(energy, energy_ema_decay, "energy_ema_decay") if energy_ema_decay is not None else None

    @property
    def sampling_policy(self) -> GaussianStepPolicy:
        """The policy to sample and evaluate with: the EMA copy when there is one."""
        return self.ema_policy.model if self.ema_policy is not None else self.agent.policy

    @property
    def evaluation_energy(self) -> nn.Module | None:
        """The energy to evaluate with (None when the reward has no ``energy_network``): the EMA copy when there is one."""
        if self.ema_energy is not None:
            return self.ema_energy.model
        return self.mdp.reward.energy_network

    def collect(self, batch: int) -> Tensor:
        """B chains (T + 1, B, ...) of the current policy, without gradient."""
        with torch.no_grad():
            return rollout(self.agent.act, self.mdp.reset(batch), self.mdp.horizon)

    def step(self) -> dict[str, Tensor]:
        """One iteration on one data batch with freshly collected chains; returns detached metrics."""
        x_data = next(self.data) if self.data is not None else None
        return self.update(self.collect(x_data.shape[0] if x_data is not None else self.batch_size), x_data)

    def update(self, chain: Tensor, x_data: Tensor | None = None) -> dict[str, Tensor]:
        """One iteration on chains (T + 1, B, ...) of the current policy, collected anywhere, and a
        data batch (B', ...) (required when the reward is learnable): AVR, the reward step, the
        agent's update, the EMAs and the learning-rate schedulers. Returns detached metrics.

        Non-finite data or chains raise ``NonFiniteError`` before anything changes; a non-finite
        loss raises it before its optimiser steps (see ``diffrl.optim``).
        """
        if chain.ndim < 3 or chain.shape[0] != self.mdp.horizon + 1 or tuple(chain.shape[2:]) != self.mdp.event_shape:
            raise ValueError(
                f"expected chains of shape (T + 1, B, *event_shape) = ({self.mdp.horizon + 1}, B, "
                f"{', '.join(map(str, self.mdp.event_shape))}), got {tuple(chain.shape)}"
            )
        if self.mdp.reward.learnable:
            if x_data is None:
                raise ValueError("a learnable reward needs a data batch: update(chain, x_data)")
            check_finite(x_data, "the data batch")
        check_finite(chain, "the sampled chains")
        metrics: dict[str, Tensor] = {}
        if self.mdp.reward.learnable:
            metrics.update(self.mdp.reward.update(x_data, chain[-1]))
        self.mdp.update_velocity_scale(chain)  # after the reward step (which never reads s_t): a refused reward loss leaves s_t as it was
        metrics.update(self.agent.update(chain))
        for ema in (self.ema_policy, self.ema_energy):
            if ema is not None:
                ema.update()
        for scheduler in self.lr_schedulers:
            scheduler.step()
        return metrics

    def training_state(self) -> dict[str, Any]:
        state = {"agent": self.agent.training_state(), "mdp": self.mdp.state_dict()}
        state["reward"] = self.mdp.reward.training_state()
        for key, ema in (("ema_policy", self.ema_policy), ("ema_energy", self.ema_energy)):
            if ema is not None:
                state[key] = ema.state_dict()
        if hasattr(self.data, "generator"):
            state["data_rng"] = self.data.generator.get_state()
        if self.lr_schedulers:
            state["lr_schedulers"] = [scheduler.state_dict() for scheduler in self.lr_schedulers]
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.agent.load_training_state(state["agent"])
        self.mdp.load_state_dict(state["mdp"])
        self.mdp.reward.load_training_state(state["reward"])
        for key, ema in (("ema_policy", self.ema_policy), ("ema_energy", self.ema_energy)):
            if ema is not None:
                if key not in state:
                    raise ValueError(f"the checkpoint has no {key}: it was saved by a run without that EMA")
                ema.load_state_dict(state[key])
        if "data_rng" in state:
            self.data.generator.set_state(state["data_rng"])
        saved = state.get("lr_schedulers", [])
        if len(saved) != len(self.lr_schedulers):
            raise ValueError(f"the checkpoint holds {len(saved)} learning-rate schedulers, this loop has {len(self.lr_schedulers)}")
        for scheduler, scheduler_state in zip(self.lr_schedulers, saved):
            scheduler.load_state_dict(scheduler_state)
