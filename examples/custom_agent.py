"""A custom RL algorithm for DxMI: REINFORCE with a baseline, in place of DxDP.

DxMI trains a few-step sampler with any agent that follows ``diffrl.agent.Agent``. This module
is one as a user would write it; the pipeline builds it through its factory

    make(policy, mdp, config) -> Agent
        policy: diffrl.policy.GaussianStepPolicy, the T-step sampler to train (already on its device)
        mdp:    diffrl.mdp.ChainMDP, the chain's rewards (velocity cost, terminal reward) and the
                objective's entropy weight mdp.tau_entropy
        config: diffrl.app.ExperimentConfig of the run (this agent reads nothing from it)

and names it on the command line or in Python:

    diffrl train --preset 8gaussians --teacher runs/teacher --out runs/pg --agent examples.custom_agent:make
    diffrl.app.train(load_config("8gaussians", ["train.teacher=runs/teacher"]), "runs/pg", agent=make)

(run from the repository root, so that ``examples`` is importable; config.yaml records
``train.agent: examples.custom_agent:make``, so ``--resume`` and ``from_run`` rebuild it.)

The objective is DxDP's maximum-entropy one, per chain x_0 .. x_T of the policy:

    J = E[ sum_t r_t ] + tau_entropy * sum_t log sigma_t,
    r_t = -tau_velocity * v_t (- E(x_T) at the last step)      (ChainMDP.step_reward)

The entropy term is a known function of the policy's sigma, so its gradient is taken directly;
the expectation gets the score-function (REINFORCE) gradient with the reward-to-go of each step
and a leave-one-out batch-mean baseline (unbiased, no value network):

    loss = -mean_b sum_t (G_t - baseline_t) log pi(x_{t+1} | x_t) - tau_entropy * sum_t log sigma_t

One Adam step per DxMI iteration: LR on the teacher's mean network, LR_SIGMA on log sigma
(DxDP's point-data rate), gradient norm clipped at GRAD_CLIP.

Learning rate, measured. Teacher: ``diffrl pretrain --preset 8gaussians pretrain.steps=2000``
(44 s; its own 100-step chain scores val SW 0.140). Its 5-step VAR chain, where training starts,
scores test SW 0.208 (all 10000 test points). Preset settings (batch 512, tau_entropy 0.1),
LR_SIGMA 1e-3, GRAD_CLIP 1; test SW of the model selected on validation / of the last iterate;
2-core CPU, one torch thread; the wall time is for the whole script (training with 4 validation
evaluations, then scoring), two runs sharing the machine except where marked:

    LR     val SW at iteration 250 / 500 / 750 / 1000   test SW after 1000 (best / last)   wall
    3e-4   0.581 / 0.539 / 0.251 / 0.232                0.208 (step 0 kept) / 0.212       110 s alone
    1e-4   0.413 / 0.296 / 0.202 / 0.289                0.175 / 0.283                     189 s
    3e-5   0.138 / 0.131 / 0.152 / 0.158                0.136 / 0.136                     220 s
    1e-5   0.144 / 0.139 / 0.144 / 0.141                0.131 / 0.133                     198 s
    3e-6   0.159 / 0.146 / 0.144 / 0.145                0.133 / 0.132                     221 s
    (DxDP, the default agent, same teacher and settings: 0.168 / 0.210 / 0.170 / 0.153 -> test 0.141)

3000 iterations change nothing (1e-5: test 0.133 / 0.132; 3e-6: 0.132 / 0.135; 490 s each): the
small rates all level off near the teacher's own 100-step chain (0.140 on validation). A better
teacher lowers the plateau: from the default one (``diffrl pretrain --preset 8gaussians``, 8000
iterations, 75 s; its 100-step chain 0.072 on validation) LR = 1e-5 takes the 5-step chain from
test SW 0.157 to 0.056 (last iterate 0.057) in 1000 iterations, 80 s alone. 1e-4 and above oscillate
(the score function of the fourth step carries a factor 1/sigma_3 = 100: noisy gradients), 3e-5
gets down as fast as 1e-5 but drifts back up after 500 iterations; LR = 1e-5 is the largest rate
that stays down. ``--quick`` (300 iterations, 4000 test points): SW 0.203 -> 0.137, 40-53 s.

Run it (it prints the SW of the starting chain and of the trained sampler):

    diffrl pretrain --preset 8gaussians --out runs/teacher pretrain.steps=2000    # ~1 minute (default 8000: ~75 s, a better start)
    python examples/custom_agent.py --teacher runs/teacher [--quick] [--out runs/pg]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffrl.mdp import ChainMDP
from diffrl.optim import OptimizerStep
from diffrl.policy import GaussianStepPolicy

__all__ = ["Reinforce", "make", "LR", "LR_SIGMA", "GRAD_CLIP"]

LR = 1e-5
"""Adam learning rate of the sampler's mean network (chosen by measurement, see the docstring)."""
LR_SIGMA = 1e-3
"""Adam learning rate of log sigma_t (DxDP's point-data rate)."""
GRAD_CLIP = 1.0
"""Gradient-norm clip of each step (the score function of a step with small sigma is large; not tuned)."""


class Reinforce:
    """REINFORCE with a leave-one-out baseline on whole chains of the current policy, maximising
    the same entropy-regularised return as DxDP (see the module docstring)."""

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP, lr: float,
                 lr_sigma: float = LR_SIGMA, grad_clip: float | None = GRAD_CLIP) -> None:
        if policy.horizon != mdp.horizon:
            raise ValueError(f"policy horizon {policy.horizon} != MDP horizon {mdp.horizon}")
        self.policy, self.mdp, self.tau_entropy = policy, mdp, mdp.tau_entropy
        self.optimizer = torch.optim.Adam([
            {"params": policy.mean_parameters(), "lr": lr},
            {"params": policy.sigma_parameters(), "lr": lr_sigma},
        ])
        self.optimizer_step = OptimizerStep(self.optimizer, grad_clip)  # zero grad, backward, clip, step

    # what the DxMI loop and the pipeline call

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        return self.policy(x, t, noise)

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        """chain: (T + 1, B, ...) of the current policy, without gradient. One optimiser step."""
        T, B = self.mdp.horizon, chain.shape[1]
        if chain.shape[0] != T + 1 or B < 2:
            raise ValueError(f"expected chains of shape (T + 1 = {T + 1}, B >= 2, ...), got {tuple(chain.shape)}")
        chain = chain.detach()
        steps = [torch.full((B,), t, dtype=torch.long, device=chain.device) for t in range(T)]
        log_sigma = self.policy.log_sigma  # (T,), differentiable

        with torch.no_grad():  # the return does not depend on the parameters: no gradient through the reward
            rewards = torch.stack([self.mdp.step_reward(chain[t], chain[t + 1], steps[t]) for t in range(T)])  # (T, B)
            rewards = rewards + self.tau_entropy * log_sigma.detach()[:, None]  # the entropy bonus of each step
            to_go = rewards.flip(0).cumsum(0).flip(0)  # G_t = sum_{k >= t} r_k: a step cannot change earlier rewards
            baseline = (to_go.sum(1, keepdim=True) - to_go) / (B - 1)  # the other chains' mean: unbiased
            advantage = to_go - baseline
            terminal_reward = -self.mdp.terminal_cost(chain[-1]).mean()

        log_prob = torch.stack([self.policy.log_prob(chain[t + 1], chain[t], steps[t]) for t in range(T)])  # (T, B)
        surrogate = (advantage * log_prob).sum(0).mean()  # its gradient: the REINFORCE estimate of grad E[return]
        loss = -surrogate - self.tau_entropy * log_sigma.sum()  # the entropy term, differentiated exactly
        self.optimizer_step(loss, "loss_reinforce")
        return {
            "loss_reinforce": loss.detach(),  # a surrogate: its value is not the objective, its gradient is
            "return": to_go[0].mean(),  # the entropy-regularised return of a chain: what is maximised
            "terminal_reward": terminal_reward,
        }

    def training_state(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])

    # optional hooks: learning-rate decay (train.lr_decay) and many processes (torchrun)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def optimizer_steps(self) -> list[OptimizerStep]:
        return [self.optimizer_step]


def make(policy: GaussianStepPolicy, mdp: ChainMDP, config) -> Reinforce:
    """The agent factory: ``train.agent = examples.custom_agent:make``."""
    return Reinforce(policy, mdp, lr=LR)


# ---------------------------------------------------------------- the script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DxMI on 8 Gaussians with a REINFORCE agent in place of DxDP.")
    parser.add_argument("--teacher", required=True, help="a pretrain run folder (diffrl pretrain --preset 8gaussians)")
    parser.add_argument("--out", default=None, help="the run folder (new); default: a temporary folder")
    parser.add_argument("--quick", action="store_true", help="a short run (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--steps", type=int, default=None, help="training iterations (default 1000, --quick 300)")
    parser.add_argument("--lr", type=float, default=None, help=f"learning rate of the mean network (default {LR:g})")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key.sub=value (e.g. train.batch_size=256)")
    args = parser.parse_args(argv)

    from diffrl.app import evaluate, load_config, train
    from diffrl.app.pipeline import settings_of

    if args.lr is not None:
        globals()["LR"] = args.lr  # read by make() when the run starts (the saved optimiser state keeps it on --resume)
    steps = args.steps or (300 if args.quick else 1000)
    overrides = [f"train.teacher={args.teacher}", f"train.loop.steps={steps}", f"train.loop.eval_every={max(steps // 4, 1)}",
                 f"train.loop.checkpoint_every={steps}", "train.loop.log_every=50", "threads=1"]
    config = load_config("8gaussians", [*settings_of(args.teacher, "data"), *overrides, *args.overrides])
    n = min(4000, config.data.n_eval) if args.quick else None  # test samples scored (default: the whole test split)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="custom_agent_")) / "run"

    start = time.perf_counter()
    before = evaluate(args.teacher, n=n, steps=config.train.horizon, schedule="var")  # the chain training starts from
    train(config, out, agent=make, progress=False)
    best, last = evaluate(out, n=n), evaluate(out, n=n, which="last")
    wall = time.perf_counter() - start
    print(json.dumps({"run": str(out), "steps": steps, "lr": LR, "sw_before": before["sw"], "sw_after_best": best["sw"],
                      "sw_after_last": last["sw"], "seconds": round(wall, 1)}))
    print(f"SW (test, {config.train.horizon} steps): {before['sw']:.3f} before -> {best['sw']:.3f} after "
          f"(selected on validation; last iterate {last['sw']:.3f}), {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
