"""DxDP: Diffusion by Dynamic Programming (spec section 4), a max-entropy RL agent for the chain MDP.

Per call of ``update(chain)`` on the current sampler's chains (T + 1, B, ...):
  1. T value steps, t = T-1 down to 0, each one gradient step of ``ValueTDLoss`` on that t's
     transitions (the paper's order: each step's target uses the value the step before left);
     ``value_steps="batched"`` takes instead one step on all B * T transitions (not the paper's
     algorithm: every target comes from the iteration's starting value, and V moves once);
  2. ``sampler_steps`` (the paper: one) sampler steps of ``SamplerLoss``, each on ``sampler_batch``
     states drawn afresh uniformly from the B * T states x_0..x_{T-1}, with gradient-norm clipping;
  3. optionally a Polyak update of the target value network.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from diffrl.mdp import ChainMDP
from diffrl.optim import OptimizerStep
from diffrl.policy import GaussianStepPolicy

from .losses import SamplerLoss, ValueTDLoss, time_cost

__all__ = ["DxDPConfig", "DxDP"]


@dataclass
class DxDPConfig:
    """DxDP's optimisation settings; the objective's weights (tau_entropy, tau_velocity) live on the ChainMDP.

    value_target: "running" (Algorithm 1), or a time cost "sigmoid" / "constant" / "none" (Algorithm 2).
    target_update: Polyak rate of a target value network, or None for none (the paper's default).
    value_steps: "sequential" (the paper's: T steps, t = T-1 .. 0) or "batched" (one step on all
    B * T transitions: fewer, larger passes; a different algorithm, not shown equal, so not the default).
    sampler_steps: policy-improvement steps per update, each on a fresh minibatch of the same chains
    against the same value (the paper's is 1).
    """

    lr_sampler: float = 1e-4
    lr_sigma: float = 1e-2
    lr_value: float = 1e-3
    value_target: str = "running"
    time_cost_scale: float = 1.0
    sampler_grad_clip: float | None = 0.1
    value_grad_clip: float | None = None
    sampler_batch: int | None = None
    target_update: float | None = None
    value_steps: str = "sequential"
    sampler_steps: int = 1

    def __post_init__(self) -> None:
        for name in ("lr_sampler", "lr_sigma", "lr_value"):
            if getattr(self, name) < 0:
                raise ValueError(f"dxdp.{name} must be >= 0, got {getattr(self, name)}")
        if self.target_update is not None and not 0 < self.target_update <= 1:
            raise ValueError(f"dxdp.target_update must be in (0, 1] or None, got {self.target_update}")
        if self.sampler_steps < 1:
            raise ValueError(f"dxdp.sampler_steps must be >= 1, got {self.sampler_steps}")
        if self.value_steps not in ("sequential", "batched"):
            raise ValueError(f"dxdp.value_steps must be 'sequential' or 'batched', got {self.value_steps!r}")
        time_cost(self.value_target, 1)


class DxDP:
    """Trains ``policy`` against the soft value ``value(x (B, ...), t (B,) long) -> (B,)`` in ``mdp``.

    The value is queried for t = 0..T-1; V(x, T) is the mdp's terminal cost, so a value that
    shares its parameters with the energy (2D: E = V(., T)) and a separate one both work. With
    shared parameters, give the energy's optimiser as ``value_optimizer``.
    """

    def __init__(
        self,
        policy: GaussianStepPolicy,
        value: nn.Module,
        mdp: ChainMDP,
        config: DxDPConfig | None = None,
        value_optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.config = config = config or DxDPConfig()
        if policy.horizon != mdp.horizon:
            raise ValueError(f"policy horizon {policy.horizon} != MDP horizon {mdp.horizon}")
        if mdp.reward.temperature is not None and config.value_target != "running":
            raise ValueError(
                f"a reward with a temperature needs dxdp.value_target='running' (got {config.value_target!r}): with a time "
                "cost the value drops the running costs and the sampler no longer maximises J (docs/rewards.md)"
            )
        self.policy, self.value, self.mdp = policy, value, mdp
        self.target_value = copy.deepcopy(value).requires_grad_(False) if config.target_update else None
        fixed = time_cost(config.value_target, mdp.horizon, config.time_cost_scale)
        device = mdp.velocity_scale_sq.device
        self.value_loss = ValueTDLoss(value, mdp, fixed, self.target_value).to(device)
        self.sampler_loss = SamplerLoss(policy, value, mdp)
        self.policy_optimizer = torch.optim.Adam(
            [
                {"params": policy.mean_parameters(), "lr": config.lr_sampler},
                {"params": policy.sigma_parameters(), "lr": config.lr_sigma},
            ]
        )
        self.value_optimizer = value_optimizer or torch.optim.Adam(value.parameters(), lr=config.lr_value)
        self.value_step = OptimizerStep(self.value_optimizer, config.value_grad_clip)
        self.sampler_step = OptimizerStep(self.policy_optimizer, config.sampler_grad_clip)

    def optimizer_steps(self) -> list[OptimizerStep]:
        """The value's and the sampler's optimiser steps (set ``grad_reduce`` on them for many processes)."""
        return [self.value_step, self.sampler_step]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.policy_optimizer, self.value_optimizer]

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        return self.policy(x, t, noise)

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, ...) from the current policy, no grad. Returns detached metrics."""
        T, B = self.mdp.horizon, chain.shape[1]
        if chain.shape[0] != T + 1:
            raise ValueError(f"expected a chain of {T + 1} states, got {chain.shape[0]}")
        chain = chain.detach()
        log_sigma = self.policy.log_sigma.detach()
        value_losses = []
        if self.config.value_steps == "batched":
            steps = torch.arange(T, device=chain.device).repeat_interleave(B)  # matches chain[:-1].flatten(0, 1)
            out = self.value_loss(chain[:-1].flatten(0, 1), chain[1:].flatten(0, 1), steps, log_sigma)
            self.value_step(out["loss_value"], "loss_value (all steps)")
            value_losses.append(out["loss_value"].detach())
        else:
            for t in reversed(range(T)):  # an int step: V(x_{t+1}, t + 1) picks network or terminal cost without a host sync
                out = self.value_loss(chain[t], chain[t + 1], t, log_sigma)
                self.value_step(out["loss_value"], f"loss_value at t = {t}")
                value_losses.append(out["loss_value"].detach())

        n = self.config.sampler_batch or B
        for _ in range(self.config.sampler_steps):
            t_idx = torch.randint(0, T, (n,), device=chain.device)
            b_idx = torch.randint(0, B, (n,), device=chain.device)
            out = self.sampler_loss(chain[t_idx, b_idx], t_idx)
            self.sampler_step(out["loss_sampler"], "loss_sampler")

        if self.target_value is not None:
            with torch.no_grad():
                for p_target, p in zip(self.target_value.parameters(), self.value.parameters()):
                    p_target.lerp_(p, self.config.target_update)
        metrics = {k: v.detach() for k, v in out.items()}
        metrics["loss_value"] = torch.stack(value_losses).mean()
        return metrics

    def training_state(self) -> dict[str, Any]:
        state = {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
        }
        if self.target_value is not None:
            state["target_value"] = self.target_value.state_dict()
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        if self.target_value is not None:
            self.target_value.load_state_dict(state["target_value"])
