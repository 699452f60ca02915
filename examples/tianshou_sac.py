"""Stock Tianshou SAC trains a diffusion sampler in the chain MDP: diffrl's Tianshou vector env with a
bounded action box, a stock ``Collector`` and ``OffPolicyTrainer``, and the squashed actor and twin
Q critics of ``diffrl.agents.tianshou``.

The problem is examples/tianshou_ppo.py's (``default_mdp()``: 2-D chains of T = 5 steps, terminal
reward log N(x_T; 0, I); known optimum J* = -2.874 at tau = 0.1, ``diffrl.lq``), chosen for the
same reason: the printed objective is measured against the best possible sampler. The objective
enters SAC as a fixed temperature ``alpha = tau / D`` with gamma = 1 (agents/tianshou.py).

SAC squashes its Gaussian with tanh into the action box (-BOUND, BOUND): the env is made with
``action_bound=BOUND`` and ``SquashedStepActor`` writes the sampler's step N(m, sigma^2) as the
pre-tanh N(atanh(m / b), (sigma / (b (1 - (m / b)^2)))^2), so SAC acts with (to first order) the
sampler's own steps and trains the sampler's own parameters. The objective is reported for the
Gaussian sampler (``policy.sample``: what a user keeps), the mean return for SAC's squashed policy
(a stock test collector); they differ by the curvature of tanh only (|m / b| < 0.4 here).

Run it (prints the objective of 20000 fresh chains and the mean return of 1000 episodes of a stock
test collector, before and after, and the optimum):

    python examples/tianshou_sac.py [--quick] [--epochs N]

Measured on a 2-core CPU, one torch thread, seed 0 (seconds: the script's own count, plus about
7 s of imports): --quick (4 epochs of 20 training steps: one step of 64 chains, then 8 gradient
steps on 256 transitions) objective -4.191 -> -2.981 (J* = -2.874), mean return of SAC's own
policy -3.83 -> -2.25, 46 s; the default 12 epochs -> -2.913, 74 s.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from tianshou.algorithm import SAC
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.trainer import OffPolicyTrainerParams

from diffrl.agents.tianshou import StepPolicyAdam, chain_objective, q_critic, sac_policy
from diffrl.envs import default_mdp
from diffrl.envs.tianshou_env import DiffusionMDPTianshouEnv
from diffrl.lq import gaussian_chain_optimum
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy

__all__ = ["main", "BOUND", "LR_SAMPLER", "LR_SIGMA", "LR_CRITIC"]

BOUND = 10.0
"""The action box (-BOUND, BOUND) of the env: several times the samples' range (standard normal scale)."""
LR_SAMPLER, LR_SIGMA, LR_CRITIC = 1e-3, 1e-2, 1e-3
"""Adam learning rates of the sampler's mean network, its log sigmas and both critics (not tuned beyond a first run)."""
CHAINS = 64
"""Chains stepped together; each training step takes one step of each, then CHAINS / 8 gradient steps."""


def evaluate(algorithm: SAC, policy: GaussianStepPolicy, mdp) -> tuple[float, float]:
    """(objective of 20000 fresh chains of ``policy``, mean return of 1000 episodes of SAC's policy, a stock test collector)."""
    with torch.no_grad():
        chains = policy.sample(20000, generator=torch.Generator().manual_seed(1))
        objective = chain_objective(chains, mdp, policy.log_sigma).mean().item()
    env = DiffusionMDPTianshouEnv(mdp, num_envs=1000, obs_mode="flat", action_bound=BOUND)
    env.seed(1)
    collector = Collector(algorithm, env, VectorReplayBuffer(1000 * mdp.horizon, 1000))
    return objective, float(collector.collect(n_episode=1000, reset_before_collect=True).returns_stat.mean)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stock Tianshou SAC on diffrl's chain MDP (known optimum).")
    parser.add_argument("--quick", action="store_true", help="a short run (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--epochs", type=int, default=None, help="trainer epochs of 20 training steps (default 12, --quick 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (4 if args.quick else 12)
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    mdp = default_mdp()
    policy = GaussianStepPolicy(TimeMLP(mdp.dim, mdp.dim, hidden=64, depth=2, time_dim=16), torch.full((mdp.horizon,), 0.5), mdp.event_shape)
    env = DiffusionMDPTianshouEnv(mdp, num_envs=CHAINS, obs_mode="flat", action_bound=BOUND)
    env.seed(args.seed)
    critics = [q_critic(mdp.event_shape, mdp.horizon, BOUND, hidden=64, depth=2, time_dim=16) for _ in range(2)]
    adam = StepPolicyAdam(policy, LR_SAMPLER, LR_SIGMA, LR_CRITIC)
    algorithm = SAC(policy=sac_policy(policy, BOUND), policy_optim=adam, critic=critics[0], critic_optim=adam,
                    critic2=critics[1], alpha=mdp.tau_entropy / mdp.dim, gamma=1.0, tau=0.005)
    optimum = gaussian_chain_optimum(mdp.velocity_scale_sq, mdp.dim, mdp.tau_velocity, mdp.tau_entropy).objective
    objective_before, return_before = evaluate(algorithm, policy, mdp)

    steps_per_epoch = 20 * CHAINS
    algorithm.run_training(OffPolicyTrainerParams(
        training_collector=Collector(algorithm, env, VectorReplayBuffer(20_000, CHAINS)),
        max_epochs=epochs, epoch_num_steps=steps_per_epoch, collection_step_num_env_steps=CHAINS,
        update_step_num_gradient_steps_per_sample=1 / 8, batch_size=256, verbose=False, show_progress=False,
    ))

    objective_after, return_after = evaluate(algorithm, policy, mdp)
    wall = time.perf_counter() - start
    print(json.dumps({"algorithm": "sac", "epochs": epochs, "env_steps": epochs * steps_per_epoch, "optimum": optimum,
                      "objective_before": objective_before, "objective_after": objective_after,
                      "return_before": return_before, "return_after": return_after, "seconds": round(wall, 1)}))
    print(f"objective (20000 chains): {objective_before:.3f} before -> {objective_after:.3f} after, optimum {optimum:.3f}; "
          f"mean return {return_before:.3f} -> {return_after:.3f}; {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
