"""Train a T-step sampler for an unnormalised density: no teacher, no data, x_0 ~ N(0, I).

The target is a log-density: a built-in name (``diffrl.densities.TARGETS``: gauss, gmm40, gmm25, funnel, manywell)
or ``module:function`` with ``function(x (B, D)) -> (B,)`` (then give --dim). The reward is
``FixedReward(log_p, temperature)``, so the chain targets p^(1/temperature) (docs/rewards.md);
the mean of each step is x + an MLP (``ResidualMean``), trained by DxDP (plain max-entropy RL).
``--scale s`` samples y = x / s (a target spread over tens of units becomes a few units wide).

Printed as JSON: the log-normaliser estimate and the effective sample size of path importance
weights (``diffrl.densities.importance_log_weights``), the sliced Wasserstein-2 distance to exact
samples when the target has them, target evaluations and wall time.

    python examples/sample_density.py gauss --quick
    python examples/sample_density.py gmm40 --start-std 20 --horizon 8 --steps 2000
    python examples/sample_density.py mypackage.targets:log_banana --dim 2
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import time

import torch

from diffrl.agents import DxDP, DxDPConfig
from diffrl.densities import TARGETS, GaussianStart, Target, importance_log_weights, scaled
from diffrl.dxmi import DxMI
from diffrl.mdp import ChainMDP
from diffrl.metrics import sliced_wasserstein
from diffrl.nets import ResidualMean, TimeMLP
from diffrl.policy import GaussianStepPolicy, rollout
from diffrl.rewards import FixedReward

__all__ = ["load_target", "train_sampler"]


def load_target(spec: str, dim: int | None) -> Target:
    """A built-in target by name, or ``module:function`` (a log-density of (B, D) -> (B,); needs dim)."""
    if spec in TARGETS:
        return TARGETS[spec]()
    if ":" not in spec:
        raise ValueError(f"unknown target {spec!r}: a built-in ({', '.join(TARGETS)}) or module:function")
    if dim is None:
        raise ValueError(f"--dim is required for a module:function target ({spec})")
    module, name = spec.split(":", 1)
    fn = getattr(importlib.import_module(module), name)
    return Target(spec, dim, fn, None)


def train_sampler(
    target: Target, horizon: int, steps: int, batch: int = 256, tau_entropy: float = 0.1, ratio: float = 3.0,
    step_scale: float = 0.5, lr: float = 2e-3, hidden: int = 64, temperature: float = 1.0, start_std: float = 1.0,
) -> tuple[GaussianStepPolicy, ChainMDP]:
    """DxDP on ``FixedReward(target.log_prob, temperature)`` from N(0, start_std^2 I): T = horizon steps with fixed
    velocity scales s_t = step_scale, tau_velocity = tau_entropy / ratio (the reference walk's variance
    is ratio * sum s_t^2), the sampler's learning rate decayed linearly to 0 over ``steps``."""
    d = target.dim
    scales = torch.full((horizon,), step_scale)
    start = None if start_std == 1.0 else GaussianStart((d,), start_std)
    mdp = ChainMDP(FixedReward(target.log_prob, temperature), (d,), scales, tau_velocity=tau_entropy / ratio, avr_decay=None,
                   tau_entropy=tau_entropy, start=start)
    policy = GaussianStepPolicy(ResidualMean(TimeMLP(d, d, hidden=hidden, depth=3, time_dim=16)), scales, (d,))
    value = TimeMLP(d, 1, hidden=hidden, depth=3, time_dim=16)
    agent = DxDP(policy, value, mdp, DxDPConfig(lr_sampler=lr, lr_sigma=1e-2, lr_value=1e-2))
    decay = torch.optim.lr_scheduler.LambdaLR(agent.policy_optimizer, lambda i: max(0.0, 1 - i / steps))
    loop = DxMI(agent, mdp, batch_size=batch, lr_schedulers=[decay])
    for _ in range(steps):
        loop.step()
    return policy, mdp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a T-step diffusion sampler for an unnormalised log-density (no data).")
    parser.add_argument("target", help=f"a built-in ({', '.join(TARGETS)}) or module:function")
    parser.add_argument("--dim", type=int, default=None, help="D, for a module:function target")
    parser.add_argument("--scale", type=float, default=1.0, help="sample y = x / scale")
    parser.add_argument("--horizon", type=int, default=6, help="T")
    parser.add_argument("--steps", type=int, default=None, help="training iterations (default 2000, --quick 400)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=3.0, help="tau_entropy / tau_velocity")
    parser.add_argument("--start-std", type=float, default=1.0, help="x_0 ~ N(0, start_std^2 I) (in the scaled units)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=10_000, help="samples scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="400 iterations (well under 5 minutes on one CPU thread)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    target = load_target(args.target, args.dim)
    work = scaled(target, args.scale) if args.scale != 1.0 else target
    calls = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls[0] += x.shape[0]
        return work.log_prob(x)

    steps = args.steps or (400 if args.quick else 2000)
    start = time.perf_counter()
    policy, mdp = train_sampler(Target(work.name, work.dim, counted, work.sample), args.horizon, steps, args.batch,
                                ratio=args.ratio, temperature=args.temperature, start_std=args.start_std)
    train_seconds = time.perf_counter() - start
    train_calls = calls[0]
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        chain = rollout(policy, mdp.reset(args.n, gen), mdp.horizon, gen)
    log_w = importance_log_weights(policy, mdp, chain, work.log_prob)
    weights = torch.softmax(log_w, 0)
    result = {
        "target": target.name, "dim": target.dim, "scale": args.scale, "horizon": args.horizon, "steps": steps,
        "log_z_estimate": float(torch.logsumexp(log_w, 0) - math.log(args.n)) - target.dim * math.log(args.scale),
        "elbo": float(log_w.mean()) - target.dim * math.log(args.scale),
        "ess_fraction": float(1 / (weights.pow(2).sum() * args.n)),
        "target_evaluations_training": train_calls, "train_seconds": round(train_seconds, 1),
    }
    if work.sample is not None:
        exact = work.sample(args.n, torch.Generator().manual_seed(args.seed + 2))
        result["sw2_to_exact"] = sliced_wasserstein(chain[-1] * args.scale, exact * args.scale, num_projections=500)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
