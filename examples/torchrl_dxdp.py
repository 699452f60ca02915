"""DxMI on 8 Gaussians with the sampler's chains collected by TorchRL: a ``torchrl.collectors.Collector``
steps ``DiffusionMDPEnv`` with the step policy, and each batch of whole chains trains DxMI.

Per collected batch (B chains of T steps, a [B, T] TensorDict):

    chain = rollout_chain(batch)        # (T + 1, B, 2): x_0 .. x_T of the current sampler
    dxmi.update(chain, next(data))      # AVR, the energy's contrastive step, DxDP's value and sampler steps

Why ``DxMI.update`` and not DxDP's LossModules with a SoftUpdate: one DxMI iteration is more than
the agent's losses (AVR, the energy step, EMAs, schedules), and ``update(chain, x_data)`` is the
library's seam for chains collected elsewhere; driving the LossModules here would copy that loop.
The collector only replaces ``DxMI.collect``: on-policy (``frames_per_batch = B * T``, one whole
chain per env row from a fresh reset, checked by ``rollout_chain``), with the policy object
itself (no copy: every batch sees the latest weights). Its noise and x_0 come from the env's own
generator (``step_policy_module(policy, env.generator)``), so ``--seed`` fixes the run; the
global RNG is left to the sampler step's draws.

The sampler, the energy, the MDP and DxDP are the ones ``diffrl train`` composes for the
8gaussians preset (``diffrl.app.pipeline.compose``), started from a teacher run.

Measured (2-core CPU, one torch thread, sharing the machine with other jobs): ``--quick`` (its own
teacher, 1000 pretraining iterations of the preset's; 300 collected batches of 256 chains; 4000
test points) test SW of the 5-step chain 0.224 -> 0.165, energy AUC 0.867; 116-133 s for the whole
script (about 70 s of CPU time).

Run (from the repository root):

    python examples/torchrl_dxdp.py --quick                       # pretrains a small teacher first
    python examples/torchrl_dxdp.py --teacher runs/teacher [--steps 1000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DxMI on 8 Gaussians, chains collected by a TorchRL Collector.")
    parser.add_argument("--teacher", default=None, help="a pretrain run folder (default: pretrain a small one first)")
    parser.add_argument("--quick", action="store_true", help="a short run (under 3 minutes on 2 CPU cores)")
    parser.add_argument("--steps", type=int, default=None, help="collected batches = DxMI iterations (default 1000, --quick 300)")
    parser.add_argument("--batch", type=int, default=256, help="chains per batch (env batch size)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from torchrl.collectors import Collector

    from diffrl.app import evaluate, from_run, load_config, pretrain
    from diffrl.app.pipeline import compose, settings_of
    from diffrl.dxmi import DxMI
    from diffrl.envs.torchrl_env import DiffusionMDPEnv, rollout_chain, step_policy_module

    torch.set_num_threads(1)
    start = time.perf_counter()
    steps = args.steps or (300 if args.quick else 1000)
    teacher = args.teacher
    if teacher is None:
        teacher = str(Path(tempfile.mkdtemp(prefix="torchrl_dxdp_")) / "teacher")
        pretrain(load_config("8gaussians", ["pretrain.steps=1000", "threads=1"]), teacher, progress=False)
    config = load_config("8gaussians", [*settings_of(teacher, "data"), f"train.teacher={teacher}", f"train.batch_size={args.batch}",
                                        f"seed={args.seed}", "threads=1"])
    n = min(4000, config.data.n_eval) if args.quick else None  # test samples scored (default: the whole test split)
    T, device = config.train.horizon, torch.device("cpu")

    before = evaluate(teacher, n=n, steps=T, schedule="var")["sw"]  # the teacher's T-step chain, where training starts
    start_run = from_run(teacher)  # the teacher and the data (its normaliser)
    task = start_run.task
    torch.manual_seed(args.seed)
    c = compose(config, task, start_run.teacher, device)  # sampler, energy reward, chain MDP, DxDP
    dxmi = DxMI(c.agent, c.mdp, task.batches(args.batch, args.seed, device))
    env = DiffusionMDPEnv(c.mdp, args.batch, seed=args.seed)
    collector = Collector(env, step_policy_module(c.policy, env.generator), frames_per_batch=args.batch * T,
                          total_frames=args.batch * T * steps, auto_register_policy_transforms=False)  # the policy needs no env transforms
    for batch in collector:
        dxmi.update(rollout_chain(batch), next(dxmi.data))
    collector.shutdown()

    draw = lambda b, g: dxmi.sampling_policy.sample(b, generator=g, device=device)[-1]  # noqa: E731
    after = task.evaluate(draw, n or task.split("test").shape[0], 1, "test", dxmi.evaluation_energy, device)[0]  # evaluate's seed
    wall = time.perf_counter() - start
    print(json.dumps({"teacher": teacher, "steps": steps, "batch": args.batch, "sw_before": before, "sw_after": after["sw"],
                      "auc_after": after["auc"], "seconds": round(wall, 1)}))
    print(f"SW (test, {T} steps): {before:.3f} before -> {after['sw']:.3f} after {steps} collected batches; {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
