"""Samplers for unnormalised densities: diffrl (DxDP, no data) against annealed importance sampling
with MALA transitions at the same number of target evaluations, on the sampling literature's targets.

    python benchmarks/densities.py                      # gmm40, funnel, manywell; writes docs/results/densities.json
    python benchmarks/densities.py --quick --out /tmp/d.json

Per target (``diffrl.densities``), both methods report:
- ``log_z_error``: estimate - true log-normaliser (diffrl: path importance weights,
  ``importance_log_weights``; AIS: its weights);
- ``ess_fraction``: (sum w)^2 / (n sum w^2) of those weights;
- ``w2``: exact 2-Wasserstein distance between 1000 samples and 1000 exact samples (assignment
  problem), in the target's units (AIS samples resampled by their weights);
- ``modes_covered`` (gmm40: modes whose 3-std ball holds a sample, of 40) or
  ``deep_well_fraction_error`` (manywell: mean over wells of |P(x_{2i} > 0) - exact|);
- ``target_evaluations`` (log-density evaluations; each AIS evaluation includes its gradient) and
  ``seconds``.
AIS gets the total of diffrl's evaluations (training and the scored samples): n particles, K
temperatures (geometric from N(0, I) in the sampler's units), one MALA step each, step size adapted
per temperature towards acceptance 0.6.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffrl.densities import GMM40_STD, TARGETS, Target, gmm40_means, importance_log_weights, scaled  # noqa: E402
from diffrl.policy import rollout  # noqa: E402
from examples.sample_density import train_sampler  # noqa: E402

SETTINGS = {
    "gmm40": {"scale": 20.0, "horizon": 8, "hidden": 128},
    "funnel": {"scale": 3.0, "horizon": 8, "hidden": 128},
    "manywell": {"scale": 1.0, "horizon": 8, "hidden": 128},
}
PUBLISHED: dict[str, dict] = {}
"""Published numbers, filled in only with a paper and table for each (none invented)."""


def w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W2 between two equal-size point clouds (N, D): sqrt of the optimal assignment's mean squared distance."""
    cost = torch.cdist(x.double(), y.double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def shape_metrics(name: str, samples: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """W2 on 1000 vs 1000 points and the target's mode metric; samples and exact (N, D) in target units."""
    out = {"w2": w2(samples[:1000], exact[:1000])}
    if name == "gmm40":
        near = torch.cdist(samples, gmm40_means()) < 3 * GMM40_STD
        out["modes_covered"] = int(near.any(0).sum())
    if name == "manywell":
        out["deep_well_fraction_error"] = float(((samples[:, 0::2] > 0).float().mean(0) - (exact[:, 0::2] > 0).float().mean(0)).abs().mean())
    return out


def ais(target: Target, n: int, temperatures: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """AIS from N(0, I) to ``target`` (in its working units), geometric path pi_k ∝ N(0, I)^(1 - b_k) p~^(b_k),
    one MALA step per temperature: particles (n, D), log weights (n,) (log Z of N(0, I) included), and
    the number of target evaluations (n per temperature plus n at the start; each gives its gradient)."""
    d = target.dim
    betas = torch.cat([torch.zeros(1), torch.logspace(-4, 0, temperatures)])
    evaluations = 0

    def target_and_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal evaluations
        z = z.detach().requires_grad_(True)
        lp = target.log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
        evaluations += z.shape[0]
        return lp.detach(), grad

    def annealed(z: torch.Tensor, lp: torch.Tensor, glp: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_beta (unnormalised) and its gradient from the target's cached value and gradient."""
        return (1 - beta) * -0.5 * z.pow(2).sum(1) + beta * lp, -(1 - beta) * z + beta * glp

    x = torch.randn(n, d, generator=generator)
    lp, glp = target_and_grad(x)
    log_w = torch.zeros(n, dtype=torch.float64)
    step = 0.5
    for k in range(1, temperatures + 1):
        beta, prev = float(betas[k]), float(betas[k - 1])
        log_w += ((beta - prev) * (lp + 0.5 * x.pow(2).sum(1))).double()
        log_pi, grad = annealed(x, lp, glp, beta)
        proposal = x + step * grad + math.sqrt(2 * step) * torch.randn(x.shape, generator=generator)
        lp_new, glp_new = target_and_grad(proposal)
        log_pi_new, grad_new = annealed(proposal, lp_new, glp_new, beta)
        forward = -(proposal - x - step * grad).pow(2).sum(1) / (4 * step)
        backward = -(x - proposal - step * grad_new).pow(2).sum(1) / (4 * step)
        accept = (torch.rand(n, generator=generator).log() < (log_pi_new - log_pi + backward - forward)) & torch.isfinite(log_pi_new)
        x = torch.where(accept[:, None], proposal, x)
        lp, glp = torch.where(accept, lp_new, lp), torch.where(accept[:, None], glp_new, glp)
        step *= 1.1 if float(accept.float().mean()) > 0.6 else 0.9
    return x, log_w + 0.5 * d * math.log(2 * math.pi), evaluations


def run_target(name: str, steps: int, n: int, seed: int) -> dict:
    """diffrl and AIS on one target; every number in the target's own units."""
    s = SETTINGS[name]
    target = TARGETS[name]()
    work = scaled(target, s["scale"])
    log_scale = target.dim * math.log(s["scale"])
    exact = target.sample(n, torch.Generator().manual_seed(seed + 2))
    calls = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls[0] += x.shape[0]
        return work.log_prob(x)

    torch.manual_seed(seed)
    start = time.perf_counter()
    policy, mdp = train_sampler(Target(name, work.dim, counted, None), s["horizon"], steps, hidden=s["hidden"])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        chain = rollout(policy, mdp.reset(n, gen), mdp.horizon, gen)
    log_w = importance_log_weights(policy, mdp, chain, counted)
    seconds = time.perf_counter() - start
    weights = torch.softmax(log_w, 0)
    ours = {
        "log_z_error": float(torch.logsumexp(log_w, 0) - math.log(n)) - log_scale - target.log_z,
        "ess_fraction": float(1 / (weights.pow(2).sum() * n)),
        **shape_metrics(name, chain[-1] * s["scale"], exact),
        "target_evaluations": calls[0], "seconds": round(seconds, 1),
        "settings": {**s, "steps": steps, "batch": 256, "n": n},
    }

    budget = calls[0]
    temperatures = max(budget // n - 1, 2)
    start = time.perf_counter()
    x, log_w_ais, evaluations = ais(work, n, temperatures, torch.Generator().manual_seed(seed + 3))
    seconds = time.perf_counter() - start
    weights = torch.softmax(log_w_ais, 0)
    resampled = x[torch.multinomial(weights.float(), n, replacement=True, generator=torch.Generator().manual_seed(seed + 4))]
    baseline = {
        "log_z_error": float(torch.logsumexp(log_w_ais, 0) - math.log(n)) - log_scale - target.log_z,
        "ess_fraction": float(1 / (weights.pow(2).sum() * n)),
        **shape_metrics(name, resampled.detach() * s["scale"], exact),
        "target_evaluations": evaluations, "seconds": round(seconds, 1),
        "settings": {"particles": n, "temperatures": temperatures, "transition": "MALA, 1 step per temperature"},
    }
    return {"diffrl": ours, "baseline": baseline, "published": PUBLISHED.get(name, {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 iterations, 2000 samples: checks the plumbing")
    parser.add_argument("--out", default="docs/results/densities.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, n = (100, 2000) if args.quick else (args.steps, args.n)
    results = {}
    for name in args.targets:
        results[name] = run_target(name, steps, n, args.seed)
        print(name, json.dumps(results[name]), flush=True)
    results["meta"] = {
        "command": "python benchmarks/densities.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} thread",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
