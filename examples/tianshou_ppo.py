"""Stock Tianshou PPO trains a diffusion sampler in the chain MDP: diffrl's Tianshou vector env, a
stock ``Collector`` and ``OnPolicyTrainer``, and the actor and critic of ``diffrl.agents.tianshou``.

The problem: ``diffrl.envs.default_mdp()``, 2-D chains of T = 5 steps from x_0 ~ N(0, I) with the
velocity cost (tau_velocity = 1, s_t = 1) and the terminal reward log N(x_T; 0, I). The objective
is DxDP's maximum-entropy one,

    J = E[ sum_t r_t ] + tau * sum_t log sigma_t,   tau = mdp.tau_entropy = 0.1,      r_t: the env's reward,

which PPO gets through its entropy bonus ``ent_coef = tau / D``, gamma = 1 and unnormalised
advantages (the mapping is explained in agents/tianshou.py). Why this problem: its optimum is known
in closed form (``diffrl.lq``: the linear-Gaussian chain, J* = -2.874 at tau = 0.1), so the printed
objective says how close to the best possible sampler PPO got, which a sample metric such as the
sliced Wasserstein distance cannot say under a fixed reward (the objective is not a distance to a
data set); and a fixed reward is what a stock trainer runs (DxMI changes the reward every
iteration: for that, use ``diffrl.agents.tianshou.tianshou_ppo`` in the DxMI loop).

The sampler is diffrl's ``GaussianStepPolicy`` (a ``TimeMLP`` mean, per-step sigma 0.5, random
weights: J about -4.2); a teacher-initialised one (``DDPM.step_policy``) plugs in the same way.
PPO trains its mean network (LR_SAMPLER), its log sigmas (LR_SIGMA) and the critic V(x, t) (LR_CRITIC).

Run it (prints the objective of 20000 fresh chains and the mean return of 1000 episodes of a stock test
collector,
before and after, and the optimum):

    python examples/tianshou_ppo.py [--quick] [--epochs N]

Measured on a 2-core CPU, one torch thread, seed 0 (seconds: the script's own count, plus about
7 s of imports): --quick (6 epochs of 10 collect-and-update steps of 256 chains) objective
-4.191 -> -2.884 (J* = -2.874), mean return -3.79 -> -2.21, 34 s; the default 20 epochs -> -2.882,
69 s. Most of --quick's time is fixed: Numba compiling Tianshou's return kernels (10-25 s) and
the two evaluations.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from tianshou.algorithm import PPO
from tianshou.data import Collector, VectorReplayBuffer
from tianshou.trainer import OnPolicyTrainerParams

from diffrl.agents.tianshou import StepPolicyAdam, chain_objective, step_policy, value_critic
from diffrl.envs import default_mdp
from diffrl.envs.tianshou_env import DiffusionMDPTianshouEnv
from diffrl.lq import gaussian_chain_optimum
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy

__all__ = ["main", "LR_SAMPLER", "LR_SIGMA", "LR_CRITIC"]

LR_SAMPLER, LR_SIGMA, LR_CRITIC = 1e-3, 1e-2, 1e-3
"""Adam learning rates of the sampler's mean network, its log sigmas and the critic (not tuned beyond a first run)."""
CHAINS = 256
"""Chains stepped together by the env; each training step collects one episode of each."""


def evaluate(algorithm: PPO, policy: GaussianStepPolicy, mdp) -> tuple[float, float]:
    """(objective of 20000 fresh chains of ``policy``, mean return of 1000 episodes of a stock test collector)."""
    with torch.no_grad():
        chains = policy.sample(20000, generator=torch.Generator().manual_seed(1))
        objective = chain_objective(chains, mdp, policy.log_sigma).mean().item()
    env = DiffusionMDPTianshouEnv(mdp, num_envs=1000, obs_mode="flat")
    env.seed(1)
    collector = Collector(algorithm, env, VectorReplayBuffer(1000 * mdp.horizon, 1000))
    return objective, float(collector.collect(n_episode=1000, reset_before_collect=True).returns_stat.mean)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stock Tianshou PPO on diffrl's chain MDP (known optimum).")
    parser.add_argument("--quick", action="store_true", help="a short run (well under 3 minutes on 2 CPU cores)")
    parser.add_argument("--epochs", type=int, default=None, help="trainer epochs of 10 training steps (default 20, --quick 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (6 if args.quick else 20)
    start = time.perf_counter()
    torch.manual_seed(args.seed)

    mdp = default_mdp()
    policy = GaussianStepPolicy(TimeMLP(mdp.dim, mdp.dim, hidden=64, depth=2, time_dim=16), torch.full((mdp.horizon,), 0.5), mdp.event_shape)
    env = DiffusionMDPTianshouEnv(mdp, num_envs=CHAINS, obs_mode="flat")
    env.seed(args.seed)
    algorithm = PPO(
        policy=step_policy(policy),
        critic=value_critic(mdp.event_shape, mdp.horizon, hidden=64, depth=2, time_dim=16),
        optim=StepPolicyAdam(policy, LR_SAMPLER, LR_SIGMA, LR_CRITIC),
        ent_coef=mdp.tau_entropy / mdp.dim, gamma=1.0, advantage_normalization=False, gae_lambda=0.95, max_grad_norm=1.0,
        max_batchsize=CHAINS * mdp.horizon,
    )
    optimum = gaussian_chain_optimum(mdp.velocity_scale_sq, mdp.dim, mdp.tau_velocity, mdp.tau_entropy).objective
    objective_before, return_before = evaluate(algorithm, policy, mdp)

    steps_per_epoch = 10 * CHAINS * mdp.horizon
    algorithm.run_training(OnPolicyTrainerParams(
        training_collector=Collector(algorithm, env, VectorReplayBuffer(CHAINS * mdp.horizon, CHAINS)),
        max_epochs=epochs, epoch_num_steps=steps_per_epoch, collection_step_num_env_steps=None,
        collection_step_num_episodes=CHAINS, batch_size=512, update_step_num_repetitions=4,
        verbose=False, show_progress=False,
    ))

    objective_after, return_after = evaluate(algorithm, policy, mdp)
    wall = time.perf_counter() - start
    print(json.dumps({"algorithm": "ppo", "epochs": epochs, "env_steps": epochs * steps_per_epoch, "optimum": optimum,
                      "objective_before": objective_before, "objective_after": objective_after,
                      "return_before": return_before, "return_after": return_after, "seconds": round(wall, 1)}))
    print(f"objective (20000 chains): {objective_before:.3f} before -> {objective_after:.3f} after, optimum {optimum:.3f}; "
          f"mean return {return_before:.3f} -> {return_after:.3f}; {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
