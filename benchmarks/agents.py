"""DxDP against policy gradients on the same max-entropy objective (issue 12).

    python benchmarks/agents.py --seeds 0 1 2 --workers 2

DxMI on 8 Gaussians at T = 5: every agent fine-tunes the same DDPM teacher (one pretrain run)
against the same learnable energy, with the preset's tau and data and BATCH chains per iteration.
Three stages:

1. learning rate: each agent at every rate of GRID (the sampler's mean; sigma and critics keep
   their defaults), seed 0, ITERS iterations; the rate whose selected model has the best
   validation SW (``pipeline.evaluate(split="val")``) is kept. The test split is never read here.
2. equal transitions: every seed at the chosen rate for ITERS iterations of B chains, i.e.
   B * T * ITERS sampled transitions for every agent.
3. equal wall time: every seed for DxDP's median training seconds of stage 2, spent as
   iterations: budget / the agent's own median seconds per iteration in stage 2 (measured, not
   a timer in the loop, so a busy machine shifts every agent alike).

Every number is a test-split metric of the run's selected model (best validation SW), as in
docs/results/toy2d.json. Runs are resumable: finished runs are skipped, and a run that two stages
both ask for (the same agent, rate, iterations and seed) is trained once.
Writes docs/results/agents.json and prints the markdown table of docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from _timing import train_seconds


@dataclass(frozen=True)
class AgentSpec:
    """An agent as ``train.agent`` names it and the override key of its sampler's learning rate."""

    agent: str
    lr_key: str


AGENTS = {
    "dxdp": AgentSpec("dxdp", "train.dxdp.lr_sampler"),
    "reinforce": AgentSpec("reinforce", "train.reinforce.lr_sampler"),
    "ppo": AgentSpec("ppo", "train.ppo.lr_sampler"),
    "torchrl_ppo": AgentSpec("diffrl.agents.torchrl:torchrl_ppo", "train.ppo.lr_sampler"),
    "tianshou_ppo": AgentSpec("diffrl.agents.tianshou:tianshou_ppo", "train.ppo.lr_sampler"),
    "tianshou_sac": AgentSpec("diffrl.agents.tianshou:tianshou_sac", "train.agent_options.lr_sampler"),
}
GRID = (3e-6, 1e-5, 3e-5)
"""The sampler learning rates tried for every agent (the app's fine-tuning default, 1e-5, in the middle)."""
DATASET = "8gaussians"
ITERS = 500
BATCH = 256
"""Chains per iteration: half the preset's 512, so that the 45 runs fit in about 40 minutes of two loaded cores."""
N_EVAL = 2000
"""Samples per evaluation during training (model selection on validation SW) and, doubled, for the final scores."""


def _finished(run: Path) -> bool:
    return (run / "model.pt").is_file()


def _one_thread() -> None:
    """Each worker uses one torch thread, evaluations included (two workers share the 2 cores)."""
    import torch

    torch.set_num_threads(1)


def run_teacher(root: str, overrides: list[str]) -> str:
    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    run = Path(root, "teacher")
    if not _finished(run):
        config = load_config(DATASET, ["seed=0", "threads=1", *overrides])
        pipeline.pretrain(config, run, resume=(run / "config.yaml").is_file(), progress=False)
    return str(run)


def run_agent(root: str, stage: str, name: str, lr: float, seed: int, iters: int, teacher: str, overrides: list[str]) -> dict:
    """One DxMI run; its validation and test scores, training seconds and sampled transitions."""
    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    spec = AGENTS[name]
    run = Path(root, f"{name}-lr{lr:g}-it{iters}-s{seed}")  # stages share a run when its settings agree
    config = load_config(DATASET, [
        f"seed={seed}", "threads=1", f"train.teacher={teacher}", f"train.agent={spec.agent}", f"{spec.lr_key}={lr}",
        f"train.batch_size={BATCH}", f"data.n_eval={N_EVAL}", f"train.loop.steps={iters}", f"train.loop.eval_every={max(iters // 4, 1)}",
        f"train.loop.checkpoint_every={max(iters // 4, 1)}", *overrides,
    ])

    def train() -> None:
        pipeline.train(config, run, resume=(run / "config.yaml").is_file(), progress=False)

    seconds = train_seconds(run, train, finished=_finished(run))
    val = pipeline.evaluate(run, n=2 * N_EVAL, seed=seed, split="val")
    test = pipeline.evaluate(run, n=2 * N_EVAL, seed=seed)
    transitions = iters * config.train.batch_size * config.train.horizon
    return {"agent": name, "stage": stage, "lr": lr, "seed": seed, "iters": iters, "seconds": seconds,
            "transitions": transitions, "val": val, "test": test}


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    return statistics.fmean(known), (statistics.stdev(known) if len(known) > 1 else 0.0)


def summary(runs: list[dict]) -> dict:
    sw, sw_std = mean_std([r["test"]["sw"] for r in runs])
    auc, auc_std = mean_std([r["test"]["auc"] for r in runs])
    seconds, _ = mean_std([r["seconds"] for r in runs])
    return {"sw": sw, "sw_std": sw_std, "auc": auc, "auc_std": auc_std, "seconds": seconds,
            "transitions": statistics.fmean(r["transitions"] for r in runs), "iters": runs[0]["iters"],
            "lr": runs[0]["lr"], "seeds": [r["seed"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--iters", type=int, default=ITERS, help="iterations of the equal-transition stages")
    parser.add_argument("--root", default="runs/bench-agents")
    parser.add_argument("--out", default="docs/results/agents.json")
    parser.add_argument("--quick", action="store_true", help="tiny runs to check the plumbing")
    args = parser.parse_args()
    if "dxdp" not in args.agents:
        parser.error("the wall-time budget is DxDP's: keep dxdp among --agents")
    quick = ["pretrain.steps=200"] if args.quick else []
    iters = 20 if args.quick else args.iters
    start = time.time()

    with ProcessPoolExecutor(args.workers, initializer=_one_thread) as pool:
        teacher = pool.submit(run_teacher, args.root, quick).result()

        def stage(name: str, jobs: list[tuple]) -> list[dict]:
            futures = [pool.submit(run_agent, args.root, name, *job, teacher, quick) for job in jobs]
            return [f.result() for f in futures]

        grid = stage("lr", [(a, lr, args.seeds[0], iters) for a in args.agents for lr in GRID])
        chosen = {a: min((r for r in grid if r["agent"] == a), key=lambda r: r["val"]["sw"])["lr"] for a in args.agents}
        equal_transitions = stage("transitions", [(a, chosen[a], s, iters) for a in args.agents for s in args.seeds])
        per_iter = {a: statistics.median(r["seconds"] / r["iters"] for r in equal_transitions if r["agent"] == a) for a in args.agents}
        budget = statistics.median(r["seconds"] for r in equal_transitions if r["agent"] == "dxdp")
        time_iters = {a: max(1, round(budget / per_iter[a])) for a in args.agents}
        equal_time = stage("time", [(a, chosen[a], s, time_iters[a]) for a in args.agents for s in args.seeds])
    wall = time.time() - start

    def by_agent(runs: list[dict]) -> dict:
        return {a: summary([r for r in runs if r["agent"] == a]) for a in args.agents}

    result = {
        "command": "python benchmarks/agents.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.workers} workers of one thread",
        "wall_seconds_total": wall,
        "dataset": DATASET,
        "lr_grid": {a: {"grid": list(GRID), "chosen": chosen[a],
                        "val_sw": {r["lr"]: r["val"]["sw"] for r in grid if r["agent"] == a}} for a in args.agents},
        "seconds_per_iter": per_iter,
        "wall_budget_seconds": budget,
        "dxmi": by_agent(equal_transitions),
        "dxmi_equal_time": by_agent(equal_time),
        "runs": grid + equal_transitions + equal_time,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    def cell(mean: float | None, std: float | None) -> str:
        return "" if mean is None else f"{mean:.3f} ± {std:.3f}"

    lines = [
        "| agent | lr (chosen on val) | budget | iterations | transitions | train s | SW test | AUC test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget, key in (("equal transitions", "dxmi"), ("equal wall time", "dxmi_equal_time")):
        for agent, row in result[key].items():
            lines.append(f"| {agent} | {row['lr']:g} | {budget} | {row['iters']} | {row['transitions']:.3g} | "
                         f"{row['seconds']:.0f} | {cell(row['sw'], row['sw_std'])} | {cell(row['auc'], row['auc_std'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
