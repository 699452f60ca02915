"""The DxMI outer loop (spec section 8), written against the Agent and RewardModel interfaces.

Per data batch: sample B chains from the current sampler (no grad); AVR update of s_t; one
reward step if the reward is learnable (inverse RL), none otherwise (plain max-ent RL); then
``agent.update(chain)``. Chains are dropped afterwards (fresh on-policy data every batch).
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from .agent import Agent
from .mdp import ChainMDP
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
        if energy_ema_decay is not None and not (mdp.reward.learnable and hasattr(mdp.reward, "energy")):
            raise ValueError("energy_ema_decay needs a learnable reward with an energy network (reward.energy)")
        self.agent, self.mdp, self.data, self.batch_size = agent, mdp, data, batch_size
        self.lr_schedulers = list(lr_schedulers)
        self.ema_policy = ModelEMA(agent.policy, ema_decay, "ema_decay") if ema_decay is not None else None
        self.ema_energy = ModelEMA(mdp.reward.energy, energy_ema_decay, "energy_ema_decay") if energy_ema_decay is not None else None

    @property
    def sampling_policy(self) -> GaussianStepPolicy:
        """The policy to sample and evaluate with: the EMA copy when there is one."""
        return self.ema_policy.model if self.ema_policy is not None else self.agent.policy

    @property
    def evaluation_energy(self) -> nn.Module | None:
        """The energy to evaluate with (None without a ``reward.energy``): the EMA copy when there is one."""
        if self.ema_energy is not None:
            return self.ema_energy.model
        return getattr(self.mdp.reward, "energy", None)

    def step(self) -> dict[str, Tensor]:
        """One iteration on one data batch; returns detached metrics (no host sync)."""
        x_data = next(self.data) if self.data is not None else None
        batch = x_data.shape[0] if x_data is not None else self.batch_size
        with torch.no_grad():
            chain = rollout(self.agent.act, self.mdp.reset(batch), self.mdp.horizon)
        self.mdp.update_velocity_scale(chain)
        metrics: dict[str, Tensor] = {}
        if self.mdp.reward.learnable:
            metrics.update(self.mdp.reward.update(x_data, chain[-1]))
        metrics.update(self.agent.update(chain))
        for ema in (self.ema_policy, self.ema_energy):
            if ema is not None:
                ema.update()
        for scheduler in self.lr_schedulers:
            scheduler.step()
        return metrics

    def training_state(self) -> dict[str, Any]:
        state = {"agent": self.agent.training_state(), "mdp": self.mdp.state_dict()}
        if self.mdp.reward.learnable:
            state["reward_optimizer"] = self.mdp.reward.optimizer.state_dict()
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
        if self.mdp.reward.learnable:
            self.mdp.reward.optimizer.load_state_dict(state["reward_optimizer"])
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
