"""The DxMI outer loop (spec section 8), written against the Agent and RewardModel interfaces.

Per data batch: sample B chains from the current sampler (no grad); AVR update of s_t; one
reward step if the reward is learnable (inverse RL), none otherwise (plain max-ent RL); then
``agent.update(chain)``. Chains are dropped afterwards (fresh on-policy data every batch).
"""
from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from .agent import Agent
from .mdp import ChainMDP
from .policy import GaussianStepPolicy, rollout

__all__ = ["DxMI"]


class DxMI:
    """Joint training of a sampler (through ``agent``) and ``mdp.reward``.

    data: an iterator of data batches (B, *event_shape), already normalised; required when the
    reward is learnable. With a fixed reward, give ``batch_size`` instead (plain max-ent RL).
    ema_decay: keep an exponential moving average of the policy for evaluation and sampling
    (None: evaluate the raw policy).
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
        lr_schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    ) -> None:
        if data is None and (mdp.reward.learnable or batch_size is None):
            raise ValueError("give data batches (a learnable reward needs them) or, for a fixed reward, a batch_size")
        if agent.policy.horizon != mdp.horizon:
            raise ValueError(f"agent horizon {agent.policy.horizon} != MDP horizon {mdp.horizon}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        self.agent, self.mdp, self.data, self.batch_size, self.ema_decay = agent, mdp, data, batch_size, ema_decay
        self.lr_schedulers = list(lr_schedulers)
        self.ema_policy = copy.deepcopy(agent.policy).requires_grad_(False) if ema_decay is not None else None

    @property
    def sampling_policy(self) -> GaussianStepPolicy:
        """The policy to sample and evaluate with: the EMA copy when there is one."""
        return self.ema_policy if self.ema_policy is not None else self.agent.policy

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
        if self.ema_policy is not None:
            with torch.no_grad():
                for p_ema, p in zip(self.ema_policy.parameters(), self.agent.policy.parameters()):
                    p_ema.lerp_(p, 1 - self.ema_decay)
        for scheduler in self.lr_schedulers:
            scheduler.step()
        return metrics

    def training_state(self) -> dict[str, Any]:
        state = {"agent": self.agent.training_state(), "mdp": self.mdp.state_dict()}
        if self.mdp.reward.learnable:
            state["reward_optimizer"] = self.mdp.reward.optimizer.state_dict()
        if self.ema_policy is not None:
            state["ema_policy"] = self.ema_policy.state_dict()
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
        if self.ema_policy is not None:
            self.ema_policy.load_state_dict(state["ema_policy"])
        if "data_rng" in state:
            self.data.generator.set_state(state["data_rng"])
        saved = state.get("lr_schedulers", [])
        if len(saved) != len(self.lr_schedulers):
            raise ValueError(f"the checkpoint holds {len(saved)} learning-rate schedulers, this loop has {len(self.lr_schedulers)}")
        for scheduler, scheduler_state in zip(self.lr_schedulers, saved):
            scheduler.load_state_dict(scheduler_state)
