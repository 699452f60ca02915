"""The diffusion chain as an MDP: the one place for its maths (spec sections 1, 2, 5).

State ``s_t = (x_t, t)``, action ``a_t = x_{t+1}``, transition ``s_{t+1} = (a_t, t + 1)``; the
episode ends after T steps. Costs are per dimension (spec section 2):

    velocity cost  v_t = mean_d (x_{t+1} - x_t)^2 / (2 s_t^2)
    anchor cost    a_t = mean_d (x_{t+1} - mu_teacher(x_t, t))^2 / (2 sigma_teacher,t^2)  (only with an anchor)
    step reward    r_t = -(tau_velocity v_t + tau_anchor a_t)  (-cost(x_T) added at t = T - 1)

The objective every agent maximises is the max-entropy return

    J = E[ sum_t r_t ] + tau_entropy * sum_t log sigma_t

(log sigma_t: the per-dimension entropy of step t's Gaussian, up to a constant). Its weight
``tau_entropy`` is part of the problem and lives here, beside ``tau_velocity``, so that every
agent (DxDP, REINFORCE, PPO, TorchRL or Tianshou ones) optimises the same J. The bonus itself
needs the policy's sigma, which the env cannot see: agents add it
(``diffrl.agents.losses.entropy_bonus``); env rewards are r_t alone. The Gymnasium and TorchRL envs and
DxDP's losses all call this module.

A reward with a ``temperature`` is a log-density log p; ``terminal_cost`` converts it so that the
optimum's samples follow p^(1/temperature) (docs/rewards.md derives it and says when it is exact):

    cost(x) = -(tau_entropy / D) (log p(x) / temperature - log rho(x)),
    rho = N(0, (v_0 + (tau_entropy / tau_velocity) sum_t s_t^2) I)

(v_0: the start's variance, 1 for N(0, I), 0 for ``OriginStart``; s_t the current scales). With an
anchor the log rho term is left out: the chain then targets p_teacher(x) p(x)^(1/temperature).
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor, nn

from .rewards import RewardModel

__all__ = ["ChainMDP", "OriginStart", "TeacherAnchor"]


class OriginStart(nn.Module):
    """The start x_0 = 0 (a point mass at the origin, ``variance`` 0) for ``ChainMDP(start=...)``:
    with it a log-density reward's optimum is exactly p^(1/temperature) (docs/rewards.md)."""

    variance = 0.0

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def forward(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        """x_0 = 0, (batch, *event_shape)."""
        return torch.zeros((batch, *self.event_shape), device=device)


class TeacherAnchor(nn.Module):
    """The anchor cost a_t = mean_d (x_{t+1} - mu_teacher(x_t, t))^2 / (2 sigma_t^2), (*batch,), of a
    frozen copy of a step policy's mean (the teacher) and its step sigmas.

    policy: the teacher, a ``GaussianStepPolicy`` (copied now: training the policy afterwards leaves
    the anchor as it is). scale: (T,) sigma_t to use instead of the teacher's (e.g. to soften a
    tiny last-step sigma). With tau_anchor = tau_entropy and tau_velocity = 0,
    tau_entropy sum_t (a_t - log sigma_t) = (tau_entropy / D) KL(policy path || teacher path) + const.
    """

    def __init__(self, policy: nn.Module, scale: Tensor | None = None) -> None:
        super().__init__()
        sigma = policy.sigma.detach().clone() if scale is None else torch.as_tensor(scale, dtype=torch.float32)
        if sigma.ndim != 1 or sigma.numel() != policy.horizon or not bool((sigma > 0).all()):
            raise ValueError(f"the anchor's scale must be {policy.horizon} positive sigma_t, got {sigma.tolist()}")
        self.mean_model = copy.deepcopy(policy.mean_model).requires_grad_(False)
        self.event_shape = tuple(policy.event_shape)
        self.horizon = policy.horizon
        self.register_buffer("scale_sq", sigma.float() ** 2)

    def teacher_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """mu_teacher(x, t) (*batch, *event) for x (*batch, *event), t (*batch,) long in 0..T-1."""
        return self.mean_model(x.reshape(-1, *self.event_shape), t.reshape(-1)).reshape(x.shape)

    def forward(self, x: Tensor, x_next: Tensor, t: Tensor) -> Tensor:
        """a_t (*batch,) for x, x_next (*batch, *event), t (*batch,) long in 0..T-1; differentiable in x_next."""
        return (x_next - self.teacher_mean(x, t)).reshape(*t.shape, -1).pow(2).mean(-1) / (2 * self.scale_sq[t])

    def expected(self, x: Tensor, mean: Tensor, sigma: Tensor, t: Tensor) -> Tensor:
        """E a_t over x_next ~ N(mean, sigma^2 I), (*batch,), in closed form:

            mean_d (mean - mu_teacher(x, t))^2 / (2 s_t^2) + sigma^2 / (2 s_t^2)

        x, mean (*batch, *event); sigma (*batch,) the step's noise; t (*batch,) long. Its gradient
        is the expectation of ``forward``'s without the sampled noise's variance: (x_next - mu) /
        (D s_t^2) carries sigma eps / (D s_t^2), largest at small s_t (docs/rewards.md)."""
        gap = (mean - self.teacher_mean(x, t)).reshape(*t.shape, -1).pow(2).mean(-1)
        return (gap + sigma**2) / (2 * self.scale_sq[t])


class ChainMDP(nn.Module):
    """Horizon, event shape, velocity-cost scales s_t^2 (with AVR) and the terminal reward model.

    velocity_scale_init: (T,) initial s_t (usually the sampler's initial sigma_t).
    tau_velocity, tau_entropy: the weights of the velocity cost and of the entropy term in J (>= 0).
    avr_decay: alpha of the adaptive velocity regularisation EMA, or None to keep s_t fixed.
    start: the start distribution, a module ``start(batch, generator, device) -> x_0 (batch,
    *event_shape)`` (saved with the MDP; e.g. ``diffrl.anomaly.AutoencoderStart``, ``OriginStart``),
    or None: N(0, I).
    anchor, tau_anchor: a ``TeacherAnchor`` and the weight (> 0) of its running cost a_t, or None and 0.

    A reward with a temperature (a log-density) needs tau_entropy > 0 and, without an anchor, a
    start of known variance (None, or a module with a ``variance`` attribute such as
    ``OriginStart``) and tau_velocity > 0 when T > 1 (with tau_velocity = 0 and no anchor the
    intermediate steps' entropy is unbounded: no optimum exists).
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
        anchor: TeacherAnchor | None = None,
        tau_anchor: float = 0.0,
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
        if tau_anchor < 0 or (tau_anchor > 0) != (anchor is not None):
            raise ValueError(f"give an anchor with tau_anchor > 0, or neither; got anchor={type(anchor).__name__}, tau_anchor={tau_anchor}")
        if anchor is not None and (anchor.horizon != scale.numel() or anchor.event_shape != tuple(event_shape)):
            raise ValueError(
                f"the anchor's teacher has T = {anchor.horizon} and event shape {anchor.event_shape}, "
                f"the MDP T = {scale.numel()} and {tuple(event_shape)}"
            )
        if reward.temperature is not None:
            if tau_entropy <= 0:
                raise ValueError("a reward with a temperature (a log-density) needs tau_entropy > 0: it sets the cost's scale")
            if anchor is None and start is not None and getattr(start, "variance", None) is None:
                raise ValueError(
                    f"a reward with a temperature targets p^(1/temperature) from a start of known variance: N(0, I) "
                    f"(start=None) or OriginStart; {type(start).__name__} has no 'variance' (use temperature=None, or an anchor)"
                )
            if anchor is None and tau_velocity == 0 and scale.numel() > 1:
                raise ValueError("a reward with a temperature needs tau_velocity > 0 when T > 1 and there is no anchor (no optimum exists)")
        self.reward = reward
        self.event_shape = tuple(event_shape)
        self.horizon = scale.numel()
        self.tau_velocity, self.tau_entropy = tau_velocity, tau_entropy
        self.avr_decay = avr_decay
        self.start = start
        self.anchor, self.tau_anchor = anchor, tau_anchor
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

    def reference_variance(self) -> float:
        """The per-dimension variance of rho, the reference chain's x_T (module docstring), from the
        current s_t: v_0 + (tau_entropy / tau_velocity) sum_t s_t^2; inf (rho flat) when tau_velocity = 0."""
        if self.tau_velocity == 0:
            return math.inf
        start_variance = 1.0 if self.start is None else float(self.start.variance)
        return start_variance + self.tau_entropy / self.tau_velocity * float(self.velocity_scale_sq.sum())

    def terminal_cost(self, x_final: Tensor) -> Tensor:
        """cost(x_T), (*batch,) for x_final (*batch, *event_shape): the boundary V(x, T). The reward
        model sees one flat batch (N, *event_shape).

        A raw reward (temperature None): cost = -reward(x_T). A log-density log p at a temperature:
        cost = -(tau_entropy / D) (log p(x_T) / temperature - log rho(x_T)), without the log rho term
        when there is an anchor or rho is flat (module docstring)."""
        batch = x_final.shape[: x_final.ndim - len(self.event_shape)]
        flat = x_final.reshape(-1, *self.event_shape)
        if self.reward.temperature is None:
            return self.reward.cost(flat).reshape(batch)
        log_p = self.reward(flat) / self.reward.temperature
        variance = self.reference_variance()
        if self.anchor is None and math.isfinite(variance):
            log_rho = -flat.flatten(1).pow(2).sum(1) / (2 * variance) - 0.5 * self.dim * math.log(2 * math.pi * variance)
            log_p = log_p - log_rho
        return (-(self.tau_entropy / self.dim) * log_p).reshape(batch)

    def running_cost(self, x: Tensor, x_next: Tensor, t: Tensor) -> Tensor:
        """tau_velocity v_t (+ tau_anchor a_t with an anchor), (*batch,); t (*batch,) long in 0..T-1."""
        cost = self.tau_velocity * self.velocity_cost(x, x_next, t)
        if self.anchor is not None:
            cost = cost + self.tau_anchor * self.anchor(x, x_next, t)
        return cost

    def step_terms(self, x: Tensor, x_next: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The step's costs (higher is worse), each (*batch,); t (*batch,) long in 0..T-1:

        velocity_cost  v_t (unweighted; the reward weighs it by tau_velocity)
        terminal_cost  cost(x_T) (``terminal_cost``) on the last step (t = T - 1), 0 on the others;
                       the reward model sees only the rows at the last step
        anchor_cost    a_t (unweighted; only with an anchor)
        """
        velocity = self.velocity_cost(x, x_next, t)
        last = t == self.horizon - 1
        terminal = torch.zeros_like(velocity)
        if bool(last.all()):
            terminal = self.terminal_cost(x_next).to(velocity.dtype)
        elif bool(last.any()):
            terminal[last] = self.terminal_cost(x_next[last]).to(velocity.dtype)
        terms = {"velocity_cost": velocity, "terminal_cost": terminal}
        if self.anchor is not None:
            terms["anchor_cost"] = self.anchor(x, x_next, t)
        return terms

    def reward_of(self, terms: dict[str, Tensor]) -> Tensor:
        """r_t = -(tau_velocity v_t + tau_anchor a_t + cost(x_T) on the last step), (*batch,), from ``step_terms``."""
        if self.anchor is None:
            return -(self.tau_velocity * terms["velocity_cost"] + terms["terminal_cost"])
        return -(self.tau_velocity * terms["velocity_cost"] + self.tau_anchor * terms["anchor_cost"] + terms["terminal_cost"])

    def step_reward(self, x: Tensor, x_next: Tensor, t: Tensor) -> Tensor:
        """r_t (``reward_of``), (*batch,), for x, x_next (*batch, *event) and t (*batch,) long in 0..T-1."""
        return self.reward_of(self.step_terms(x, x_next, t))

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
