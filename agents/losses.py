"""DxDP's objective (spec section 4), each formula written once as a function of plain tensors.

Costs, lower is better (the spec's sign convention); V is a cost-to-go with V(x, T) = cost(x_T):

    entropy bonus      h_t = tau_entropy log sigma_t  (tau_entropy: ChainMDP's)  (``entropy_bonus``)
    running cost       c_t = tau_velocity v_t (+ tau_anchor a_t when the MDP has an anchor)  (``ChainMDP.running_cost``)
    TD target          target_t = V(x_{t+1}, t + 1) + c_t - h_t                (running costs, Algorithm 1)
                       target_t = V(x_{t+1}, t + 1) + R(t)                      (time cost, Algorithm 2)
    value loss         (V(x_t, t) - target_t)^2                             (``squared_td_error``)
    sampler objective  V(x', t + 1) + c_t(x_t, x') - h_t,  x' ~ pi(. | x_t, t) reparametrised

With a time cost R(t) the value no longer holds the running costs, so the sampler's objective is
not J (each step weighs only its own running cost): a reward's temperature semantics
(docs/rewards.md) need the running-cost target, and ``DxDP`` refuses the combination.

Two front ends call these functions: ``ValueTDLoss`` and ``SamplerLoss`` here (plain tensors in,
dicts out: the fast path of ``DxDP.update``, where TensorDict bookkeeping would cost more than the
maths) and the TorchRL ``LossModule``s of ``diffrl.agents.torchrl`` (TensorDicts in and out).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from diffrl.mdp import ChainMDP
from diffrl.policy import GaussianStepPolicy

__all__ = [
    "soft_value", "time_cost", "entropy_bonus", "td_target", "squared_td_error", "sampler_terms", "ValueTDLoss", "SamplerLoss",
]


def soft_value(value: nn.Module, mdp: ChainMDP, x: Tensor, t: Tensor | int, dense: bool = False) -> Tensor:
    """V(x, t) with the boundary V(x, T) = cost(x_T); x (*batch, *event), t (*batch,) long in 0..T
    or one int in 0..T for every row -> (*batch,). The value network sees one flat batch:
    value(x (N, *event), t (N,)) -> (N,).

    An int t picks the network or the terminal cost without looking at tensor values (no host
    sync). For a tensor t, dense=False evaluates each row once, with the network or the terminal
    cost (row selection that depends on t's values: a host sync); dense=True evaluates both on
    every row and picks with ``torch.where``: twice the work, no data-dependent control flow (works
    under ``torch.vmap``, as TorchRL's value estimators call value networks).
    """
    if isinstance(t, int):
        if not 0 <= t <= mdp.horizon:
            raise ValueError(f"step index t = {t} is outside 0..{mdp.horizon}")
        if t == mdp.horizon:
            return mdp.terminal_cost(x)
        flat = x.reshape(-1, *mdp.event_shape)
        steps = torch.full((flat.shape[0],), t, device=x.device, dtype=torch.long)
        return value(flat, steps).reshape(x.shape[: x.ndim - len(mdp.event_shape)])
    batch = t.shape
    if len(batch) != 1:
        return soft_value(value, mdp, x.reshape(-1, *mdp.event_shape), t.reshape(-1), dense).reshape(batch)
    last = t == mdp.horizon
    if dense:
        return torch.where(last, mdp.terminal_cost(x), value(x, t.clamp(max=mdp.horizon - 1)))
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


def entropy_bonus(mdp: ChainMDP, log_sigma: Tensor, t: Tensor) -> Tensor:
    """h_t = mdp.tau_entropy log sigma_t, (*batch,), for log_sigma (T,) and t (*batch,) long in 0..T-1.

    The max-entropy term of step t (the per-dimension Gaussian entropy up to a constant): subtracted
    from costs, added to rewards. Differentiable in log_sigma.
    """
    return mdp.tau_entropy * log_sigma[t]


def td_target(
    mdp: ChainMDP, next_value: Tensor, x: Tensor, x_next: Tensor, t: Tensor, log_sigma: Tensor,
    fixed_time_cost: Tensor | None = None,
) -> Tensor:
    """target_t (*batch,) from next_value = V(x_{t+1}, t + 1) (*batch,) (give it without gradient);
    x, x_next (*batch, *event), t (*batch,) long in 0..T-1, log_sigma (T,).

    Running costs: next_value + c_t - h_t (``ChainMDP.running_cost``); with ``fixed_time_cost`` R (T,): next_value + R(t).
    """
    if fixed_time_cost is not None:
        return next_value + fixed_time_cost[t]
    return next_value + mdp.running_cost(x, x_next, t) - entropy_bonus(mdp, log_sigma, t)


def squared_td_error(v: Tensor, target: Tensor) -> Tensor:
    """(V(x_t, t) - target_t)^2 per transition, (*batch,)."""
    return (v - target).pow(2)


def sampler_terms(
    mdp: ChainMDP, cost_to_go: Tensor, x: Tensor, x_next: Tensor, t: Tensor, log_sigma: Tensor, mean: Tensor | None = None,
) -> dict[str, Tensor]:
    """The sampler objective's named terms at states x (*batch, *event), steps t (*batch,) long and
    reparametrised next states x_next, each (*batch,):

        cost_to_go     V(x', t + 1) (given by the caller, with gradient through x')
        velocity       v_t(x_t, x') (unweighted)
        velocity_cost  tau_velocity v_t, the running cost
        anchor_cost    tau_anchor a_t(x_t, x') (only when the MDP has an anchor); with the step's
                       ``mean`` (*batch, *event) given, its expectation over the step's noise in
                       closed form (``TeacherAnchor.expected``): the same objective, without the
                       noise's gradient variance
        entropy_bonus  h_t = mdp.tau_entropy log sigma_t (log_sigma (T,) with gradient)
        objective      cost_to_go + velocity_cost (+ anchor_cost) - entropy_bonus, to minimise
    """
    velocity = mdp.velocity_cost(x, x_next, t)
    velocity_cost = mdp.tau_velocity * velocity
    bonus = entropy_bonus(mdp, log_sigma, t)
    terms = {"cost_to_go": cost_to_go, "velocity": velocity, "velocity_cost": velocity_cost, "entropy_bonus": bonus}
    if mdp.anchor is None:
        terms["objective"] = cost_to_go + velocity_cost - bonus
    else:
        anchor = mdp.anchor(x, x_next, t) if mean is None else mdp.anchor.expected(x, mean, log_sigma.exp()[t], t)
        terms["anchor_cost"] = mdp.tau_anchor * anchor
        terms["objective"] = cost_to_go + velocity_cost + terms["anchor_cost"] - bonus
    return terms


def _per_row(t: Tensor | int, x: Tensor) -> Tensor:
    """t as a (B,) long tensor for x (B, ...): an int repeated, a tensor as it is."""
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long) if isinstance(t, int) else t


class ValueTDLoss(nn.Module):
    """Policy evaluation at step t: ``mean (V(x_t, t) - target_t)^2`` (``td_target``), plain tensors.

    ``target_value`` (default: the value itself) scores x_{t+1}; a separate copy makes it a
    target network.
    """

    def __init__(
        self,
        value: nn.Module,
        mdp: ChainMDP,
        fixed_time_cost: Tensor | None = None,
        target_value: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.value, self.mdp = value, mdp
        self.target_value = value if target_value is None else target_value
        self.register_buffer("fixed_time_cost", fixed_time_cost)

    def td_target(self, x: Tensor, x_next: Tensor, t: Tensor | int, log_sigma: Tensor) -> Tensor:
        """(B,) target, no gradient; t (B,) long, or one int step for every row (no host sync); log_sigma (T,)."""
        steps = _per_row(t, x)
        with torch.no_grad():
            next_value = soft_value(self.target_value, self.mdp, x_next, t + 1)
            return td_target(self.mdp, next_value, x, x_next, steps, log_sigma, self.fixed_time_cost)

    def forward(self, x: Tensor, x_next: Tensor, t: Tensor | int, log_sigma: Tensor) -> dict[str, Tensor]:
        """The mean squared TD error on transitions (x, x_next) (B, ...) at steps t: (B,) long or one int."""
        steps = _per_row(t, x)
        target = self.td_target(x, x_next, t, log_sigma)
        v = self.value(x, steps)
        return {"loss_value": squared_td_error(v, target).mean(), "value": v.mean().detach()}


class SamplerLoss(nn.Module):
    """Policy improvement on states x_t (B, ...) at steps t (B,): one reparametrised step x' and the
    mean of ``sampler_terms``' objective, plain tensors.

    The gradient reaches the policy through V (no back-propagation through time); the value's
    parameters get gradient too, so step only the policy's optimiser on it. With an anchor the
    anchor's cost enters in expectation over the step's noise (``TeacherAnchor.expected``).
    """

    def __init__(self, policy: GaussianStepPolicy, value: nn.Module, mdp: ChainMDP) -> None:
        super().__init__()
        self.policy, self.value, self.mdp = policy, value, mdp

    def forward(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        mean = None
        if self.mdp.anchor is None:
            x_next = self.policy(x, t)
        else:  # the anchor's cost in expectation over the step's noise (``sampler_terms``)
            x_next, mean = self.policy.rsample(x, t)
        cost_to_go = soft_value(self.value, self.mdp, x_next, t + 1)
        terms = sampler_terms(self.mdp, cost_to_go, x, x_next, t, self.policy.log_sigma, mean)
        return {
            "loss_sampler": terms["objective"].mean(),
            "sampler_cost_to_go": terms["cost_to_go"].mean().detach(),
            "sampler_velocity": terms["velocity"].mean().detach(),
        }
