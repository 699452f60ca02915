"""PPO-clip with generalised advantage estimation and a learned critic, for the chain MDP, maximising
DxDP's maximum-entropy objective J (see ``diffrl.agents.reinforce`` for J, its scales and why the
entropy term enters with its exact gradient).

Per ``update(chain)`` on B chains (T + 1, B, *event) of the current policy (rewards read from
``mdp.step_reward`` then, as in REINFORCE):
  1. without gradient: rewards r_t, log pi_old(x_{t+1} | x_t, t) and advantages A_t of the B * T
     transitions; baseline=value: GAE with gamma = 1 on the critic V(x_t, t) (boundary V(x_T, T) = 0:
     the terminal reward is in r_{T-1}), the critic's targets A_t + V(x_t, t) (lambda-returns);
     baseline=leave_one_out / none: A_t = G_t - b_t as in REINFORCE, no critic;
  2. ``epochs`` passes over the B * T transitions in random minibatches of ``minibatch_size``, each one
     policy step on

        loss = -T * mean_minibatch min(rho A, clip(rho, 1 - eps, 1 + eps) A)  -  tau_entropy * sum_t log sigma_t
               (loss_clip)                                                      (loss_entropy)

     rho = pi(x_{t+1} | x_t, t) / pi_old(x_{t+1} | x_t, t), and (baseline=value) one critic step on the
     mean squared error to its targets.

Scales. The factor T makes loss_clip at rho = 1 the REINFORCE loss of the same transitions (a mean
over the B * T transitions times T is the mean over chains of a sum over steps), so the balance of
rewards and entropy is J's. log pi is summed over the D dimensions of a sample, so rho is the ratio
of the step's densities: on images (D in the thousands) a small change of the mean moves rho far, and
the clip range must be small (DDPO uses 1e-4). gamma is 1: the finite-horizon return that J sums (a
discount would change the objective, not only the variance of its estimate; lambda trades bias for
variance). Advantages are not normalised (see reinforce).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffrl.mdp import ChainMDP
from diffrl.policy import GaussianStepPolicy

from .reinforce import (
    PolicyGradientAgent, chain_rewards, check_chain, check_pg_config, critic_values, entropy_loss, leave_one_out_baseline, reward_to_go, step_grid,
)

__all__ = ["PPOConfig", "PPO", "gae", "clipped_surrogate"]


@dataclass
class PPOConfig:
    """Options of ``PPO``. Learning rates measured on a 2-D fixed-reward fine-tuning problem
    (benchmarks/pg_defaults.py, 3 seeds, 500 iterations, 4 epochs): lr_sampler 1e-4: J -2.01 (SW to the
    target 0.23-0.24), 3e-4: J -2.00 but SW swinging between 0.21 and 0.42; 4 minibatches of 320 instead
    of one: J -1.97 at 2.3 times the time (equal at equal time); baseline leave_one_out: J -2.02. The
    clip, lambda and gradient clip are the usual values, not tuned. For DxMI with a learned energy the
    app uses smaller rates (``train.ppo``)."""

    lr_sampler: float = 1e-4
    """Adam learning rate of the policy's mean network."""
    lr_sigma: float = 1e-2
    """Adam learning rate of log sigma_t."""
    lr_value: float = 1e-3
    """Adam learning rate of the critic (baseline=value)."""
    baseline: str = "value"
    """value (GAE on a learned critic V(x_t, t)), leave_one_out or none (A_t = G_t - b_t, no critic)."""
    gae_lambda: float = 0.95
    """GAE's lambda in [0, 1] (baseline=value): 1 is the Monte-Carlo advantage G_t - V(x_t, t), 0 the TD error."""
    clip: float = 0.2
    """epsilon: the probability ratio is clipped to [1 - clip, 1 + clip]."""
    epochs: int = 4
    """Passes over the B * T transitions per update."""
    minibatch_size: int | None = None
    """Transitions per gradient step; None: all B * T (one step per epoch). At most B * T."""
    grad_clip: float | None = 1.0
    """Gradient-norm clip of each policy step, or None."""
    value_grad_clip: float | None = None
    """Gradient-norm clip of each critic step, or None."""

    def __post_init__(self) -> None:
        check_pg_config(self, "ppo")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"ppo.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if not 0 < self.clip < 1:
            raise ValueError(f"ppo.clip must be in (0, 1), got {self.clip}")
        if self.epochs < 1:
            raise ValueError(f"ppo.epochs must be >= 1, got {self.epochs}")
        if self.minibatch_size is not None and self.minibatch_size < 1:
            raise ValueError(f"ppo.minibatch_size must be >= 1 or null, got {self.minibatch_size}")


def gae(rewards: Tensor, values: Tensor, lam: float) -> Tensor:
    """Generalised advantage estimates with gamma = 1, (T, B), from rewards and values V(x_t, t) (T, B):

        A_t = sum_{k >= t} lam^(k - t) delta_k,   delta_k = r_k + V_{k+1} - V_k,   V_T = 0 (the episode ends).
    """
    delta = rewards + torch.cat([values[1:], torch.zeros_like(values[:1])]) - values
    advantages, running = [], torch.zeros_like(delta[0])
    for t in reversed(range(delta.shape[0])):
        running = delta[t] + lam * running
        advantages.append(running)
    return torch.stack(advantages[::-1])


def clipped_surrogate(log_ratio: Tensor, advantage: Tensor, clip: float) -> Tensor:
    """PPO's clipped objective per transition (to maximise), any shape:
    min(rho A, clip(rho, 1 - clip, 1 + clip) A), rho = exp(log_ratio); differentiable in log_ratio."""
    ratio = log_ratio.exp()
    return torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)


class PPO(PolicyGradientAgent):
    """PPO-clip on whole chains of the current policy (see the module docstring). ``critic``: see
    ``PolicyGradientAgent`` (GAE's V, required by baseline=value)."""

    section = "ppo"

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, config: PPOConfig | None = None,
                 critic: nn.Module | None = None) -> None:
        super().__init__(policy, mdp, config or PPOConfig(), critic)

    def transitions(self, chain: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The B * T transitions of chains (T + 1, B, *event), flat (N = T * B, step-major), no gradient:
        x, x_next (N, *event), t (N,) long, log_prob_old (N,), advantage (N,), target (N,) (baseline=value:
        the critic's regression targets); and the chains' statistics: return (mean sum_t r_t) and
        objective (J's estimate: return + tau_entropy sum_t log sigma_t)."""
        check_chain(chain, self.mdp)
        chain = chain.detach()
        T, B = self.mdp.horizon, chain.shape[1]
        steps = step_grid(T, B, chain.device)
        with torch.no_grad():
            rewards = chain_rewards(self.mdp, chain)
            log_prob_old = self.policy.log_prob(chain[1:], chain[:-1], steps)
            data = {"x": chain[:-1], "x_next": chain[1:], "t": steps, "log_prob_old": log_prob_old}
            if self.config.baseline == "value":
                values = critic_values(self.critic, chain[:-1], steps, len(self.mdp.event_shape))
                data["advantage"] = gae(rewards, values, self.config.gae_lambda)
                data["target"] = data["advantage"] + values
            else:
                to_go = reward_to_go(rewards)
                baseline = leave_one_out_baseline(to_go) if self.config.baseline == "leave_one_out" else torch.zeros_like(to_go)
                data["advantage"] = to_go - baseline
        mean_return = rewards.sum(0).mean()
        stats = {"return": mean_return, "objective": mean_return - entropy_loss(self.policy, self.mdp).detach()}
        return {k: v.reshape(T * B, *v.shape[2:]) for k, v in data.items()}, stats

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The named terms on a minibatch of ``transitions``: loss_clip and loss_entropy (the policy's
        loss is their sum), loss_value (baseline=value), and detached diagnostics: approx_kl (the
        k3 estimate of KL(pi_old || pi): mean (rho - 1) - log rho) and clip_fraction."""
        log_ratio = self.policy.log_prob(batch["x_next"], batch["x"], batch["t"]) - batch["log_prob_old"]
        surrogate = clipped_surrogate(log_ratio, batch["advantage"], self.config.clip)
        out = {"loss_clip": -self.mdp.horizon * surrogate.mean(), "loss_entropy": entropy_loss(self.policy, self.mdp)}
        if self.critic is not None:
            values = critic_values(self.critic, batch["x"], batch["t"], len(self.mdp.event_shape))
            out["loss_value"] = (values - batch["target"]).pow(2).mean()
        with torch.no_grad():
            out["approx_kl"] = (log_ratio.exp() - 1 - log_ratio).mean()
            out["clip_fraction"] = ((log_ratio.exp() - 1).abs() > self.config.clip).float().mean()
        return out

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, *event) from the current policy, no grad. ``epochs`` passes of minibatch
        steps (random order from the global torch RNG); returns detached metrics, each the mean over
        the steps (loss_ppo = loss_clip + loss_entropy), and return / objective of the chains (before the update)."""
        data, stats = self.transitions(chain)
        n = data["t"].shape[0]
        size = self.config.minibatch_size or n
        if size > n:
            raise ValueError(f"ppo.minibatch_size {size} exceeds the B * T = {n} transitions of a batch")
        logged: dict[str, list[Tensor]] = {}
        for _ in range(self.config.epochs):
            for idx in torch.randperm(n, device=data["t"].device).split(size):
                out = self.loss({k: v[idx] for k, v in data.items()})
                loss = out["loss_clip"] + out["loss_entropy"]
                self.policy_step(loss, "loss_ppo")
                if self.critic_step is not None:
                    self.critic_step(out["loss_value"], "loss_value")
                for k, v in {"loss_ppo": loss, **out}.items():
                    logged.setdefault(k, []).append(v.detach())
        return {**{k: torch.stack(v).mean() for k, v in logged.items()}, **stats}
