"""The diffusion chain as an MDP: the one place for its maths (spec sections 1, 2, 5).

State ``s_t = (x_t, t)``, action ``a_t = x_{t+1}``, transition ``s_{t+1} = (a_t, t + 1)``; the
episode ends after T steps. Costs are per dimension (spec section 2):

    velocity cost  v_t = mean_d (x_{t+1} - x_t)^2 / (2 s_t^2)
    step reward    r_t = -tau_velocity * v_t  (-cost(x_T) added at t = T - 1)

The objective every agent maximises is the max-entropy return

    J = E[ sum_t r_t ] + tau_entropy * sum_t log sigma_t

(log sigma_t: the per-dimension entropy of step t's Gaussian, up to a constant). Its weight
``tau_entropy`` is part of the problem and lives here, beside ``tau_velocity``, so that every
agent (DxDP, REINFORCE, PPO, TorchRL or Tianshou ones) optimises the same J. The bonus itself
needs the policy's sigma, which the env cannot see: agents add it
(``diffrl.agents.losses.entropy_bonus``); env rewards are r_t alone. The Gymnasium and TorchRL envs and
DxDP's losses all call this module.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .rewards import RewardModel

__all__ = ["ChainMDP"]


class ChainMDP(nn.Module):
    """Horizon, event shape, velocity-cost scales s_t^2 (with AVR) and the terminal reward model.

    velocity_scale_init: (T,) initial s_t (usually the sampler's initial sigma_t).
    tau_velocity, tau_entropy: the weights of the velocity cost and of the entropy term in J (>= 0).
    avr_decay: alpha of the adaptive velocity regularisation EMA, or None to keep s_t fixed.
    start: the start distribution, a module ``start(batch, generator, device) -> x_0 (batch,
    *event_shape)`` (saved with the MDP; e.g. ``diffrl.anomaly.AutoencoderStart``), or None: N(0, I).
    """

    def __init__(
        self,
        reward: RewardModel,
        event_shape: tuple[int, ...],
        velocity_scale_init: Tensor,
        tau_velocity: float,
        avr_decay: float | None = 0.99,
        start: nn.Module | None = None,
        tau_entropy: float = 0.1,
    ) -> None:
        super().__init__()
        scale = torch.as_tensor(velocity_scale_init, dtype=torch.float32)
        if scale.ndim != 1 or not bool((scale > 0).all()):
            raise ValueError("velocity_scale_init must be a 1-D tensor of positive s_t, one per step")
        if tau_velocity < 0:
            raise ValueError(f"tau_velocity must be >= 0, got {tau_velocity}")
        if tau_entropy < 0:
            raise ValueError(f"tau_entropy must be >= 0, got {tau_entropy}")
        if avr_decay is not None and not 0.0 <= avr_decay < 1.0:
            raise ValueError(f"avr_decay must be in [0, 1) or None, got {avr_decay}")
        self.reward = reward
        self.event_shape = tuple(event_shape)
        self.horizon = scale.numel()
        self.tau_velocity, self.tau_entropy = tau_velocity, tau_entropy
        self.avr_decay = avr_decay
        self.start = start
        self.register_buffer("velocity_scale_sq", scale**2)
        self.avr_reduce: Callable[[Tensor], Tensor] | None = None
        """Optional: maps AVR's batch statistic (T,) to its average over processes (diffrl.distributed)."""

    @property
    def dim(self) -> int:
        """D, the number of scalars in one sample."""
        return int(torch.Size(self.event_shape).numel())

    def reset(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """x_0 (B, *event_shape) from the start distribution: N(0, I) unless the MDP has a ``start``."""
        device = device or self.velocity_scale_sq.device
        if self.start is not None:
            x0 = self.start(batch, generator, device)
            if tuple(x0.shape) != (batch, *self.event_shape):
                raise ValueError(f"the start distribution returned shape {tuple(x0.shape)}, expected {(batch, *self.event_shape)}")
            return x0
        return torch.randn((batch, *self.event_shape), generator=generator, device=device)

    def _flat_events(self, x: Tensor) -> Tensor:
        """x (*batch, *event_shape) -> (*batch, D)."""
        return x.flatten(x.ndim - len(self.event_shape)) if self.event_shape else x[..., None]

    def mean_square_step(self, x: Tensor, x_next: Tensor) -> Tensor:
        """mean_d (x_next - x)^2, (*batch,) for x, x_next (*batch, *event_shape)."""
        return self._flat_events(x_next - x).pow(2).mean(-1)

    def velocity_cost(self, x: Tensor, x_next: Tensor, t: Tensor) -> Tensor:
        """v_t = mean_d (x_next - x)^2 / (2 s_t^2), (*batch,); t (*batch,) long in 0..T-1."""
        return self.mean_square_step(x, x_next) / (2 * self.velocity_scale_sq[t])

    def terminal_cost(self, x_final: Tensor) -> Tensor:
        """cost(x_T) = -reward(x_T), (*batch,) for x_final (*batch, *event_shape): the boundary V(x, T).
        The reward model sees one flat batch (N, *event_shape)."""
        batch = x_final.shape[: x_final.ndim - len(self.event_shape)]
        return self.reward.cost(x_final.reshape(-1, *self.event_shape)).reshape(batch)

    def step_terms(self, x: Tensor, x_next: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The step's costs (higher is worse), each (*batch,); t (*batch,) long in 0..T-1:

        velocity_cost  v_t (unweighted; the reward weighs it by tau_velocity)
        terminal_cost  cost(x_T) = -reward(x_T) on the last step (t = T - 1), 0 on the others
        """
        velocity = self.velocity_cost(x, x_next, t)
        last = t == self.horizon - 1
        terminal = torch.zeros_like(velocity)
        if bool(last.any()):
            terminal = torch.where(last, self.terminal_cost(x_next).to(velocity.dtype), terminal)
        return {"velocity_cost": velocity, "terminal_cost": terminal}

    def step_reward(self, x: Tensor, x_next: Tensor, t: Tensor) -> Tensor:
        """r_t = -(tau_velocity v_t + cost(x_T) on the last step), (*batch,); t (*batch,) long."""
        terms = self.step_terms(x, x_next, t)
        return -(self.tau_velocity * terms["velocity_cost"] + terms["terminal_cost"])

    @torch.no_grad()
    def update_velocity_scale(self, chain: Tensor) -> None:
        """AVR (spec section 5): s_t^2 <- alpha s_t^2 + (1 - alpha) mean_b mean_d (x_{t+1} - x_t)^2.

        chain: (T + 1, B, ...) trajectories of the current sampler. No-op when AVR is off.
        """
        if self.avr_decay is None:
            return
        step_sq = (chain[1:] - chain[:-1]).flatten(2).pow(2).mean((1, 2))
        if self.avr_reduce is not None:
            step_sq = self.avr_reduce(step_sq)
        self.velocity_scale_sq.mul_(self.avr_decay).add_((1 - self.avr_decay) * step_sq)
