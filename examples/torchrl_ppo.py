"""Stock TorchRL PPO on the diffusion chain: a ``Collector`` steps ``DiffusionMDPEnv`` with the step
policy as a ``ProbabilisticActor``, and TorchRL's ``ClipPPOLoss`` with ``GAE`` (over the
``value_operator`` critic) trains it, through ``diffrl.agents.torchrl.TorchRLPPO``.

The problem: a fixed reward (plain max-ent RL, no inverse RL), the log-density of a Gaussian target
N(c, s^2 I) in 2-D, c = (2, -1), s = 0.5, reached in T = 5 steps from x_0 ~ N(0, I) by a step policy
whose mean is the DDIM mean of a fresh (untrained) epsilon MLP on the VAR schedule. PPO maximises
DxDP's objective, per chain

    J = sum_t (r_t + tau_entropy log sigma_t),   r_t = -tau_velocity v_t (+ log N(x_T; c, s^2 I) at the last step)

(see ``TorchRLPPO``: the entropy term is in every reward and, for its gradient, in ClipPPOLoss's
analytic entropy bonus with coefficient tau_entropy / D). Printed: J per chain and the distance of
the samples' mean from c, before and after, on 4096 fresh chains.

Per collected batch (B chains of T steps from the actor, its log-probs stored by the actor):

    agent.update_tensordict(batch)      # rewards + entropy bonus, GAE (gamma 1), epochs of ClipPPOLoss steps

Measured (2-core CPU, one torch thread, sharing the machine with other jobs): ``--quick`` (150
batches of 256 chains) J per chain -56.2 -> -2.7, the mean's distance from c 2.98 -> 0.06; 23-28 s.

Run (from the repository root): ``python examples/torchrl_ppo.py [--quick] [--steps 400]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

CENTRE = (2.0, -1.0)
"""c, the target's mean."""
SCALE = 0.5
"""s, the target's standard deviation."""


def log_density(x: torch.Tensor) -> torch.Tensor:
    """log N(x; c, s^2 I), (B,) for x (B, 2): the fixed reward of the final sample."""
    z = (x - torch.tensor(CENTRE, device=x.device)) / SCALE
    return -0.5 * z.pow(2).sum(1) - 2 * torch.log(torch.tensor(SCALE * (2 * torch.pi) ** 0.5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TorchRL's ClipPPOLoss + GAE on the diffusion chain, fixed Gaussian reward.")
    parser.add_argument("--quick", action="store_true", help="a short run (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--steps", type=int, default=None, help="collected batches = PPO updates (default 400, --quick 150)")
    parser.add_argument("--batch", type=int, default=256, help="chains per batch (env batch size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from torchrl.collectors import Collector

    from diffrl.agents.torchrl import TorchRLPPO, TorchRLPPOConfig, probabilistic_actor
    from diffrl.envs.torchrl_env import DiffusionMDPEnv, chain_tensordict
    from diffrl.mdp import ChainMDP
    from diffrl.nets import TimeMLP
    from diffrl.policy import GaussianStepPolicy
    from diffrl.rewards import FixedReward
    from diffrl.schedules import ChainSchedule

    torch.set_num_threads(1)
    start = time.perf_counter()
    steps, T = args.steps or (150 if args.quick else 400), 5
    torch.manual_seed(args.seed)
    policy = GaussianStepPolicy.from_schedule(TimeMLP(2, 2, hidden=64, depth=2, time_dim=16), ChainSchedule.var(T), event_shape=(2,))
    mdp = ChainMDP(FixedReward(log_density), (2,), policy.sigma.detach(), tau_velocity=0.1, avr_decay=None, tau_entropy=0.1)
    agent = TorchRLPPO(policy, mdp, TimeMLP(2, 1, hidden=64, depth=2, time_dim=16), TorchRLPPOConfig(lr_sampler=1e-3))

    def scores() -> tuple[float, float]:
        """J per chain and |mean(x_T) - c| on 4096 fresh chains (seeded, the same draws before and after)."""
        with torch.no_grad():
            chain = policy.sample(4096, generator=torch.Generator().manual_seed(args.seed + 1))
            rollout = chain_tensordict(mdp, chain)
            j = rollout["next", "reward"].sum((1, 2)).mean() + mdp.tau_entropy * policy.log_sigma.sum()
            distance = (chain[-1].mean(0) - torch.tensor(CENTRE)).norm()
        return float(j), float(distance)

    before = scores()
    env = DiffusionMDPEnv(mdp, args.batch, seed=args.seed)
    actor = probabilistic_actor(policy, generator=env.generator)
    collector = Collector(env, actor, frames_per_batch=args.batch * T, total_frames=args.batch * T * steps,
                          auto_register_policy_transforms=False)  # the actor needs no env transforms
    for batch in collector:
        agent.update_tensordict(batch)
    collector.shutdown()
    after = scores()
    wall = time.perf_counter() - start
    print(json.dumps({"steps": steps, "batch": args.batch, "objective_before": before[0], "objective_after": after[0],
                      "distance_before": before[1], "distance_after": after[1], "seconds": round(wall, 1)}))
    print(f"J per chain {before[0]:.2f} -> {after[0]:.2f}; |mean(x_T) - c| {before[1]:.3f} -> {after[1]:.3f}; {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
