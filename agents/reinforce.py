"""REINFORCE with a baseline: a score-function policy-gradient agent for the chain MDP that maximises
DxDP's maximum-entropy objective (spec sections 2 and 4), per chain x_0 .. x_T of the policy:

    J = E[ sum_t r_t ] + tau_entropy * sum_t log sigma_t,
    r_t = -tau_velocity v_t  (- cost(x_T) added at t = T - 1)          (ChainMDP.step_reward)

The rewards are read from ``mdp.step_reward`` on the chains at every update, so a reward that the
DxMI loop trains between updates is always the current one.

Gradient: grad J = E[ sum_t A_t grad log pi(x_{t+1} | x_t, t) ] + tau_entropy * sum_t grad log sigma_t,
with A_t = G_t - b_t, G_t = sum_{k >= t} r_k the reward-to-go (a step cannot change earlier rewards)
and b_t a baseline that does not depend on x_{t+1}. The loss is its negative, summed over steps and
averaged over chains:

    loss = -mean_b sum_t A_t log pi(x_{t+1} | x_t, t)  -  tau_entropy * sum_t log sigma_t
           (loss_pg)                                       (loss_entropy)

Scales. log pi is the density of the whole step, summed over the D dimensions of a sample
(``GaussianStepPolicy.log_prob(..., reduction="sum")``), and the rewards are ChainMDP's as they are
(velocity cost averaged over dimensions, terminal cost not divided by D). With both, loss_pg's
gradient is an unbiased estimate of the gradient of exactly DxDP's J; a log-prob averaged over
dimensions would estimate grad J / D and weigh the rewards D times less than the entropy term. The
entropy term's gradient on each log sigma_t is tau_entropy. (DxDP's sampler loss averages its
terms over the steps it samples, about 1/T of this scale for every term alike: the same balance
of rewards and entropy, and Adam's steps do not depend on the overall scale.)

Entropy term. The per-dimension entropy of step t, log sigma_t + log(2 pi e) / 2, is the same for
every state x_t, so tau_entropy * sum_t log sigma_t is a known function of the parameters and enters
with its exact gradient: deterministic, no variance, as in DxDP. The alternative, a sampled bonus
-log pi(x_{t+1} | x_t) / D added to each step's reward, has the same expectation up to a constant but
reaches sigma through the score function, with that estimate's noise; it is not used.

Advantages are not normalised by their standard deviation: that would rescale the reward part of
the gradient against the entropy term, i.e. change tau_entropy from batch to batch.

Baselines (``ReinforceConfig.baseline``):
  leave_one_out  b_t = the mean of G_t over the other B - 1 chains: unbiased, no network, any data.
  value          b_t = V(x_t, t), a learned critic of the reward-to-go (a return: higher is better),
                 evaluated before it is fitted to this batch's G_t (one regression step per update),
                 so it never depends on this batch's actions: unbiased.
  none           b_t = 0 (comparisons and tests; high variance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from diffrl.mdp import ChainMDP
from diffrl.optim import OptimizerStep
from diffrl.policy import GaussianStepPolicy

from .losses import entropy_bonus

__all__ = [
    "ReinforceConfig", "Reinforce", "BASELINES", "chain_rewards", "reward_to_go", "leave_one_out_baseline",
    "entropy_loss", "check_pg_config", "check_chain", "step_grid", "critic_values", "PolicyGradientAgent",
]

BASELINES = ("leave_one_out", "value", "none")


def check_pg_config(config: Any, section: str) -> None:
    """The checks both policy-gradient configs share: finite numbers, rates >= 0, positive clips,
    a known baseline. ``section`` names the config in errors (e.g. "reinforce")."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{section}.{f.name} must be a finite number, got {value}")
    for name in ("lr_sampler", "lr_sigma", "lr_value"):
        if getattr(config, name) < 0:
            raise ValueError(f"{section}.{name} must be >= 0, got {getattr(config, name)}")
    for name in ("grad_clip", "value_grad_clip"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"{section}.{name} must be > 0 or null, got {value}")
    if config.baseline not in BASELINES:
        raise ValueError(f"{section}.baseline must be one of {', '.join(BASELINES)}, got {config.baseline!r}")


@dataclass
class ReinforceConfig:
    """Options of ``Reinforce``. Learning rates measured on a 2-D fixed-reward fine-tuning problem
    (benchmarks/pg_defaults.py, 3 seeds, J after 100 / 500 iterations): lr_sampler 1e-4: -2.58 / -2.03,
    3e-4: -2.27 / -2.03, 1e-3: SW to the target 0.34 (from 0.18, 0.21 at 3e-4); lr_sigma 1e-3 / 1e-2 /
    3e-2: J -2.12 / -2.04 / -2.05; baseline value: J as leave_one_out (-2.04) at twice the time. For
    DxMI with a learned energy the app uses smaller rates (``train.reinforce``)."""

    lr_sampler: float = 3e-4
    """Adam learning rate of the policy's mean network."""
    lr_sigma: float = 1e-2
    """Adam learning rate of log sigma_t."""
    lr_value: float = 1e-3
    """Adam learning rate of the critic (baseline=value)."""
    baseline: str = "leave_one_out"
    """leave_one_out, value (a learned V(x_t, t)) or none (see the module docstring)."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip of the policy's step (the score of a step with a small sigma is large), or None."""
    value_grad_clip: float | None = None
    """Gradient-norm clip of the critic's step, or None."""

    def __post_init__(self) -> None:
        check_pg_config(self, "reinforce")


def chain_rewards(mdp: ChainMDP, chain: Tensor) -> Tensor:
    """r_t of every step of chains (T + 1, B, *event) -> (T, B) float32, without gradient (``mdp.step_reward``)."""
    with torch.no_grad():
        return torch.stack([
            mdp.step_reward(chain[t], chain[t + 1], torch.full(chain.shape[1:2], t, dtype=torch.long, device=chain.device)).float()
            for t in range(chain.shape[0] - 1)
        ])


def reward_to_go(rewards: Tensor) -> Tensor:
    """G_t = sum_{k >= t} r_k of rewards (T, B) -> (T, B) (gamma = 1: the finite-horizon return)."""
    return rewards.flip(0).cumsum(0).flip(0)


def leave_one_out_baseline(returns: Tensor) -> Tensor:
    """b[t, i] = mean over the other chains j != i of returns[t, j]; returns (T, B), B >= 2 -> (T, B)."""
    batch = returns.shape[1]
    if batch < 2:
        raise ValueError(f"the leave-one-out baseline needs B >= 2 chains, got {batch}")
    return (returns.sum(1, keepdim=True) - returns) / (batch - 1)


def entropy_loss(policy: GaussianStepPolicy, mdp: ChainMDP) -> Tensor:
    """-sum_t h_t = -mdp.tau_entropy * sum_t log sigma_t (``entropy_bonus`` of every step), a scalar:
    minus the entropy term of J (its gradient on each trainable log sigma_t is -tau_entropy)."""
    log_sigma = policy.log_sigma
    return -entropy_bonus(mdp, log_sigma, torch.arange(policy.horizon, device=log_sigma.device)).sum()


def check_chain(chain: Tensor, mdp: ChainMDP) -> None:
    """Chains must be (T + 1, B, *event_shape) with B >= 1."""
    if chain.ndim < 2 or chain.shape[0] != mdp.horizon + 1 or tuple(chain.shape[2:]) != mdp.event_shape or chain.shape[1] < 1:
        raise ValueError(
            f"expected chains of shape (T + 1, B, *event_shape) = ({mdp.horizon + 1}, B, "
            f"{', '.join(map(str, mdp.event_shape))}), got {tuple(chain.shape)}"
        )


def step_grid(horizon: int, batch: int, device: torch.device) -> Tensor:
    """The step index of every transition of B chains, (T, B) long: row t holds t."""
    return torch.arange(horizon, device=device)[:, None].expand(horizon, batch)


def critic_values(critic: nn.Module, x: Tensor, t: Tensor, event_ndim: int) -> Tensor:
    """V(x, t) (*batch,) float32 for states x (*batch, *event) and steps t (*batch,): the critic sees one
    flat batch, critic(x (N, *event), t (N,)) -> (N,)."""
    batch = t.shape
    return critic(x.reshape(-1, *x.shape[x.ndim - event_ndim :]), t.reshape(-1)).float().reshape(batch)


class PolicyGradientAgent:
    """What REINFORCE and PPO share: an Adam on the policy (mean and log sigma at their own rates),
    an optional critic with its own Adam, acting, and the training state. ``section`` names the
    config in errors ("reinforce", "ppo").

    critic: V(x (N, *event), t (N,) long in 0..T-1) -> (N,), the expected reward-to-go (a return:
    higher is better); required by (and only by) ``config.baseline == "value"``.
    """

    section = "agent"

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, config: Any, critic: nn.Module | None = None) -> None:
        if policy.horizon != mdp.horizon:
            raise ValueError(f"policy horizon {policy.horizon} != MDP horizon {mdp.horizon}")
        if (critic is not None) != (config.baseline == "value"):
            raise ValueError(f"{self.section}.baseline={config.baseline} {'needs' if critic is None else 'takes no'} critic network V(x, t)")
        self.policy, self.mdp, self.config, self.critic = policy, mdp, config, critic
        self.policy_optimizer = torch.optim.Adam([
            {"params": policy.mean_parameters(), "lr": config.lr_sampler},
            {"params": policy.sigma_parameters(), "lr": config.lr_sigma},
        ])
        self.policy_step = OptimizerStep(self.policy_optimizer, config.grad_clip)
        self.critic_optimizer = torch.optim.Adam(critic.parameters(), lr=config.lr_value) if critic is not None else None
        self.critic_step = OptimizerStep(self.critic_optimizer, config.value_grad_clip) if critic is not None else None

    def optimizer_steps(self) -> list[OptimizerStep]:
        """The policy's and (baseline=value) the critic's optimiser steps (set ``grad_reduce`` on them for many processes)."""
        return [self.policy_step] + ([self.critic_step] if self.critic_step is not None else [])

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [step.optimizer for step in self.optimizer_steps()]

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        return self.policy(x, t, noise)

    def training_state(self) -> dict[str, Any]:
        state = {"policy": self.policy.state_dict(), "policy_optimizer": self.policy_optimizer.state_dict()}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        if ("critic" in state) != (self.critic is not None):
            raise ValueError(f"the training state {'holds' if 'critic' in state else 'lacks'} a critic; this agent has "
                             f"{self.section}.baseline={self.config.baseline}")
        self.policy.load_state_dict(state["policy"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])


class Reinforce(PolicyGradientAgent):
    """REINFORCE with a baseline on whole chains of the current policy (see the module docstring):
    one policy step (and, baseline=value, one critic step) per ``update``. ``critic``: see
    ``PolicyGradientAgent``."""

    section = "reinforce"

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, config: ReinforceConfig | None = None,
                 critic: nn.Module | None = None) -> None:
        super().__init__(policy, mdp, config or ReinforceConfig(), critic)

    def loss(self, chain: Tensor) -> dict[str, Tensor]:
        """The named terms on chains (T + 1, B, *event) of the current policy: loss_pg and loss_entropy
        (their sum's gradient is -grad J's estimate), loss_value (baseline=value: the critic's mean
        squared error against G_t), and detached diagnostics: return (mean sum_t r_t), objective (J's
        estimate: return + tau_entropy sum_t log sigma_t)."""
        check_chain(chain, self.mdp)
        chain = chain.detach()
        T, B = self.mdp.horizon, chain.shape[1]
        steps = step_grid(T, B, chain.device)
        rewards = chain_rewards(self.mdp, chain)
        to_go = reward_to_go(rewards)
        out: dict[str, Tensor] = {}
        if self.config.baseline == "value":
            values = critic_values(self.critic, chain[:-1], steps, len(self.mdp.event_shape))
            out["loss_value"] = (values - to_go).pow(2).mean()
            baseline = values.detach()
        elif self.config.baseline == "leave_one_out":
            baseline = leave_one_out_baseline(to_go)
        else:
            baseline = torch.zeros_like(to_go)
        log_prob = self.policy.log_prob(chain[1:], chain[:-1], steps)  # (T, B), summed over the D dimensions
        out["loss_pg"] = -((to_go - baseline) * log_prob).sum(0).mean()
        out["loss_entropy"] = entropy_loss(self.policy, self.mdp)
        out["return"] = to_go[0].mean()
        out["objective"] = out["return"] - out["loss_entropy"].detach()
        return out

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, *event) from the current policy, no grad. One policy step (and critic step);
        returns detached metrics (loss_reinforce = loss_pg + loss_entropy, a surrogate whose gradient,
        not value, matters)."""
        out = self.loss(chain)
        loss = out.pop("loss_pg") + out.pop("loss_entropy")
        self.policy_step(loss, "loss_reinforce")
        if self.critic_step is not None:
            self.critic_step(out["loss_value"], "loss_value")
        return {"loss_reinforce": loss.detach(), **{k: v.detach() for k, v in out.items()}}
