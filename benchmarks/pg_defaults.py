"""Defaults of the policy-gradient agents (ReinforceConfig, PPOConfig), chosen on a 2-D problem of
their own: plain max-entropy RL (a fixed reward) fine-tuning a small DDPM teacher.

    python benchmarks/pg_defaults.py --agent reinforce --lr 1e-4 --lr-sigma 1e-2 --baseline leave_one_out
    python benchmarks/pg_defaults.py --agent ppo --lr 1e-4 --epochs 4 --minibatch 320

Problem: three Gaussians (std 0.3) on a circle of radius 1.5; the reward is their exact log-density.
Teacher: a DDPM (TimeMLP 64 x 3, 1000 steps) trained for 3000 iterations on 20k points (cached in
--cache); the agents start from its 5-step VAR chain (last sigma 0.05, every sigma trainable),
tau_entropy = tau_velocity = 0.1, AVR 0.99, batch 256 chains. Printed, one JSON line: J (the
objective every agent maximises, on 4096 chains) and SW-2 to 4096 fresh target points, before
training and after every fifth of --steps iterations, and the wall time of training (scoring excluded).

Measured (2-core CPU shared with other jobs, one thread, 500 iterations; J before training -8.48,
SW 0.185; J after 100 / 500 iterations, seeds 0 / 1 / 2 where three are given):

    agent      lr     lr_sigma  other                   J at 100              J at 500              SW at 500
    reinforce  3e-5   1e-2      leave_one_out           -                     -2.20                 0.17
    reinforce  1e-4   1e-2      leave_one_out           -2.57 / -2.60 / -2.58 -2.04 / -2.01 / -2.04 0.21 / 0.23 / 0.19
    reinforce  3e-4   1e-2      leave_one_out           -2.23 / -2.32 / -2.27 -2.02 / -2.03 / -2.03 0.20 / 0.24 / 0.22
    reinforce  1e-3   1e-2      leave_one_out           -                     -2.05                 0.34
    reinforce  1e-4   1e-3      leave_one_out           -                     -2.12                 0.21
    reinforce  1e-4   3e-2      leave_one_out           -2.50                 -2.05                 0.20
    reinforce  1e-4   1e-2      value                   -2.62                 -2.04                 0.20
    reinforce  3e-4   1e-2      value                   -                     -2.04                 0.22
    ppo        1e-4   1e-2      value, 4 epochs x 1     -2.13 / -2.14 / -2.15 -2.02 / -2.00 / -2.02 0.23 / 0.24 / 0.23
    ppo        3e-4   1e-2      value, 4 epochs x 1     -2.10 / -2.12 / -2.10 -1.99 / -1.99 / -2.01 0.42 / 0.34 / 0.21
    ppo        1e-4   1e-2      value, 4 epochs x 4     -2.09                 -1.97                 0.34
    ppo        3e-5   1e-2      value, 4 epochs x 4     -2.09                 -1.99                 0.22
    ppo        1e-4   1e-2      leave_one_out, 4 x 1    -2.12                 -2.02                 0.23
    dxdp       1e-4   1e-2      value lr 1e-3           -3.67                 -2.08                 0.16
    dxdp       1e-5   1e-3      value lr 1e-3           -                     -2.69                 0.13

(4 x 4: minibatches of 320 of the 1280 transitions.) Wall time of 500 iterations (the fastest seen on
the shared machine): reinforce about 5 s, with the value baseline 10 s, ppo 4 x 1 about 30 s, 4 x 4 70 s,
dxdp 20 s. SW to the target is not what the agents optimise: the max-entropy optimum at tau = 0.1
is sharper than the target, and SW grows as J rises past about -2.05.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from diffrl.agents import PPO, DxDP, DxDPConfig, PPOConfig, Reinforce, ReinforceConfig
from diffrl.ddpm import DDPM
from diffrl.dxmi import DxMI
from diffrl.mdp import ChainMDP
from diffrl.metrics import sliced_wasserstein
from diffrl.nets import TimeMLP
from diffrl.policy import rollout
from diffrl.rewards import FixedReward

CENTRES = 1.5 * torch.tensor([[math.cos(a), math.sin(a)] for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)])
STD, TAU, BATCH, HORIZON = 0.3, 0.1, 256, 5


def log_density(x: Tensor) -> Tensor:
    """log of the equal mixture of N(centre, STD^2 I), (N,) for x (N, 2)."""
    sq = (x[..., None, :] - CENTRES).pow(2).sum(-1)
    return torch.logsumexp(-sq / (2 * STD**2), -1) - math.log(3 * 2 * math.pi * STD**2)


def target_samples(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return CENTRES[torch.randint(0, 3, (n,), generator=g)] + STD * torch.randn(n, 2, generator=g)


def net(out_dim: int) -> TimeMLP:
    return TimeMLP(2, out_dim, hidden=64, depth=3, time_dim=32)


def teacher(cache: Path) -> DDPM:
    ddpm = DDPM(net(2))
    path = cache / "pg_defaults_teacher.pt"
    if path.is_file():
        ddpm.load_state_dict(torch.load(path, weights_only=True))
        return ddpm
    torch.manual_seed(0)
    data, optimizer = target_samples(20_000, 1), torch.optim.Adam(ddpm.parameters(), lr=1e-3)
    for _ in range(3000):
        loss = ddpm.loss(data[torch.randint(0, data.shape[0], (512,))])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(ddpm.state_dict(), path)
    return ddpm


@torch.no_grad()
def scores(policy, mdp: ChainMDP) -> dict[str, float]:
    """J on 4096 chains and SW-2 of their samples to 4096 target points (fixed seeds)."""
    g = torch.Generator().manual_seed(123)
    chain = rollout(policy, torch.randn(4096, 2, generator=g), HORIZON, g)
    rewards = torch.stack([mdp.step_reward(chain[t], chain[t + 1], torch.full((4096,), t)) for t in range(HORIZON)])
    objective = rewards.sum(0).mean() + TAU * policy.log_sigma.sum()
    return {"J": round(float(objective), 4), "sw": round(sliced_wasserstein(chain[-1], target_samples(4096, 2), 200), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", choices=["reinforce", "ppo", "dxdp"], required=True)
    p.add_argument("--lr", type=float, required=True, help="the mean network's learning rate")
    p.add_argument("--lr-sigma", type=float, default=1e-2)
    p.add_argument("--lr-value", type=float, default=1e-3)
    p.add_argument("--baseline", default=None, help="reinforce / ppo baseline (default: the config's)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatch", type=int, default=None)
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("/tmp/diffrl_bench"))
    args = p.parse_args()
    torch.set_num_threads(1)

    ddpm = teacher(args.cache)
    torch.manual_seed(args.seed)
    policy = ddpm.step_policy(HORIZON, (2,), kind="var", last_sigma=0.05, fix_last=False)
    mdp = ChainMDP(FixedReward(log_density), (2,), policy.sigma.detach(), tau_velocity=TAU, avr_decay=0.99, tau_entropy=TAU)
    rates = {"lr_sampler": args.lr, "lr_sigma": args.lr_sigma, "lr_value": args.lr_value}
    baseline = {"baseline": args.baseline} if args.baseline else {}
    if args.agent == "reinforce":
        config = ReinforceConfig(**rates, **baseline)
        agent = Reinforce(policy, mdp, config, net(1) if config.baseline == "value" else None)
    elif args.agent == "ppo":
        config = PPOConfig(**rates, **baseline, epochs=args.epochs, minibatch_size=args.minibatch, clip=args.clip)
        agent = PPO(policy, mdp, config, net(1) if config.baseline == "value" else None)
    else:
        agent = DxDP(policy, net(1), mdp, DxDPConfig(**rates))
    curve = {0: scores(policy, mdp)}
    dxmi = DxMI(agent, mdp, batch_size=BATCH)
    seconds = 0.0
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        dxmi.step()
        seconds += time.perf_counter() - start
        if step % max(args.steps // 5, 1) == 0:
            curve[step] = scores(policy, mdp)
    print(json.dumps({**{k: v for k, v in vars(args).items() if k != "cache"}, "J": [c["J"] for c in curve.values()],
                      "sw": [c["sw"] for c in curve.values()], "steps_scored": list(curve), "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
