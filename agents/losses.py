"""DxDP's losses, shaped like ``torchrl.objectives.LossModule``: modules whose forward returns a dict
of named terms, the optimised ones under ``loss_*`` keys (detached diagnostics beside them).

Plain tensors in and out rather than TensorDicts: the loss sits on the hot path of a 2D
iteration, where TensorDict bookkeeping would cost more than the maths.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from diffrl.mdp import ChainMDP
from diffrl.policy import GaussianStepPolicy

__all__ = ["soft_value", "time_cost", "ValueTDLoss", "SamplerLoss"]


def soft_value(value: nn.Module, mdp: ChainMDP, x: Tensor, t: Tensor) -> Tensor:
    """V(x, t) with the boundary V(x, T) = cost(x_T); x (*batch, *event), t (*batch,) long in 0..T
    -> (*batch,). The value network sees one flat batch: value(x (N, *event), t (N,)) -> (N,)."""
    batch = t.shape
    if len(batch) != 1:
        return soft_value(value, mdp, x.reshape(-1, *mdp.event_shape), t.reshape(-1)).reshape(batch)
    last = t == mdp.horizon
    if not bool(last.any()):
        return value(x, t)
    if bool(last.all()):
        return mdp.terminal_cost(x)
    out = torch.empty(x.shape[0], device=x.device, dtype=x.dtype)
    out[~last] = value(x[~last], t[~last])
    out[last] = mdp.terminal_cost(x[last])
    return out


def time_cost(kind: str, horizon: int, scale: float = 1.0) -> Tensor | None:
    """The fixed value-target cost R(t), (T,), of paper Algorithm 2, or None for running costs.

    "sigmoid":  R(t) = scale * (sigmoid(-t + T//2) - sigmoid(-t - 1 + T//2))
    "constant": R(t) = scale
    "none":     R(t) = 0
    "running":  None: the target keeps the running costs (Algorithm 1).
    """
    t = torch.arange(horizon, dtype=torch.float32)
    if kind == "sigmoid":
        c = horizon // 2
        return scale * (torch.sigmoid(-t + c) - torch.sigmoid(-t - 1 + c))
    if kind == "constant":
        return torch.full((horizon,), float(scale))
    if kind == "none":
        return torch.zeros(horizon)
    if kind == "running":
        return None
    raise ValueError(f"unknown time cost {kind!r}; expected sigmoid, constant, none or running")


class ValueTDLoss(nn.Module):
    """Policy evaluation at step t: ``(V(x_t, t) - target_t)^2`` averaged over the batch.

    target_t = sg[V(x_{t+1}, t + 1)] + tau_velocity v_t - tau_entropy log sigma_t   (running costs)
    target_t = sg[V(x_{t+1}, t + 1)] + R(t)                                          (time cost)

    ``target_value`` (default: the value itself) scores x_{t+1}; a separate copy makes it a
    target network.
    """

    def __init__(
        self,
        value: nn.Module,
        mdp: ChainMDP,
        tau_entropy: float,
        fixed_time_cost: Tensor | None = None,
        target_value: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.value, self.mdp, self.tau_entropy = value, mdp, tau_entropy
        self.target_value = value if target_value is None else target_value
        self.register_buffer("fixed_time_cost", fixed_time_cost)

    def td_target(self, x: Tensor, x_next: Tensor, t: Tensor, log_sigma: Tensor) -> Tensor:
        """(B,) target, no gradient; t (B,) long, log_sigma (T,)."""
        with torch.no_grad():
            target = soft_value(self.target_value, self.mdp, x_next, t + 1)
            if self.fixed_time_cost is not None:
                return target + self.fixed_time_cost[t]
            velocity = self.mdp.velocity_cost(x, x_next, t)
            return target + self.mdp.tau_velocity * velocity - self.tau_entropy * log_sigma[t]

    def forward(self, x: Tensor, x_next: Tensor, t: Tensor, log_sigma: Tensor) -> dict[str, Tensor]:
        target = self.td_target(x, x_next, t, log_sigma)
        v = self.value(x, t)
        return {"loss_value": (v - target).pow(2).mean(), "value": v.mean().detach()}


class SamplerLoss(nn.Module):
    """Policy improvement on states x_t (B, ...) at steps t (B,): one reparametrised step x' and

        loss = mean[ V(x', t + 1) + tau_velocity v_t(x_t, x') - tau_entropy log sigma_t ]

    The gradient reaches the policy through V (no back-propagation through time); the value's
    parameters get gradient too, so step only the policy's optimiser on it.
    """

    def __init__(self, policy: GaussianStepPolicy, value: nn.Module, mdp: ChainMDP, tau_entropy: float) -> None:
        super().__init__()
        self.policy, self.value, self.mdp, self.tau_entropy = policy, value, mdp, tau_entropy

    def forward(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        x_next = self.policy(x, t)
        cost_to_go = soft_value(self.value, self.mdp, x_next, t + 1)
        velocity = self.mdp.velocity_cost(x, x_next, t)
        entropy = self.policy.log_sigma[t]
        loss = cost_to_go + self.mdp.tau_velocity * velocity - self.tau_entropy * entropy
        return {
            "loss_sampler": loss.mean(),
            "sampler_cost_to_go": cost_to_go.mean().detach(),
            "sampler_velocity": velocity.mean().detach(),
        }

