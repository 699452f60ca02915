"""Milliseconds per rollout of B chains through each env interface, as ratios to the plain sampling loop.

    python benchmarks/env_speed.py                 # the table on stdout and docs/results/env_speed.json
    python benchmarks/env_speed.py --rounds 5      # a quicker, noisier look

One policy for every row: the DxMI run's step policy that ``benchmarks/iteration_speed.py`` builds
(``build_library``: 2-D points, T = 5, TimeMLP hidden 128, depth 3), B = 128 chains, one thread.
The MDP is the run's own (its terminal reward is the energy network: every env row pays one
evaluation of it per rollout, the plain loop none). The rows:

  plain loop        ``policy.sample(B, generator=g)``: x_0, then T policy steps (no rewards)
  TorchRL           ``env.rollout(T, step_policy_module(policy, env.generator))`` (``DiffusionMDPEnv``)
  Gymnasium vector  ``DiffusionMDPVectorEnv``: ``reset()``, then T ``step``s with numpy actions
                    ``policy(x, t, noise)`` from the observed x: the loop a Gymnasium user writes
  Tianshou vector   ``DiffusionMDPTianshouEnv`` with a stock ``tianshou.data.Collector`` and the
                    Tianshou policy over the step policy (``diffrl.agents.tianshou.step_policy``):
                    ``collect(n_episode=B)``
and for reference: the plain loop plus ``ChainMDP.step_reward`` at every step (what any env has to
compute, without an env), TorchRL's own ``EnvBase.rollout`` on the same env (the loop before the env's
short route), ``env.rollout`` with the step policy module called through its forward like any
TensorDict policy (a subclass, so not the module the short route calls directly), a Gymnasium
``SyncVectorEnv`` of B single ``DiffusionMDP`` envs (the same loop), and a Tianshou
``DummyVectorEnv`` of B single envs (the same collector and policy).

Timing: each row's calls are timed in blocks of about ``--block-ms`` (calls per block fixed after
warm-up); ``--rounds`` rounds run one block of every row, the order alternating between rounds, all
in this one process. Per row: median wall and thread-CPU milliseconds per rollout over the rounds,
and the median over rounds of the per-round ratio to the plain loop's block of the same round (wall
and CPU time; CPU time is the robust one on a shared machine). Before timing, the TorchRL rollout
must equal ``EnvBase.rollout`` bitwise and reproduce ``policy.sample``, and the Tianshou collectors
must collect B whole episodes, else the script refuses to time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iteration_speed import build_library, cpu_model, make_config, make_data, plain_rollout_with_rewards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
B = 128


def gym_loop(env, policy, horizon: int, generator: torch.Generator) -> None:
    """The Gymnasium user's rollout: reset, then per step t the action x_{t+1} = policy(x, t, noise) as numpy."""
    obs, _ = env.reset()
    for t in range(horizon):
        x = torch.as_tensor(obs["x"])
        noise = torch.randn(x.shape, generator=generator)
        with torch.no_grad():
            action = policy(x, t, noise).numpy()
        obs, _, _, _, _ = env.step(action)


def make_rows(policy, mdp) -> dict:
    """Row name -> a function doing one rollout of B chains, after checking that the TorchRL rollouts agree."""
    import gymnasium
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv
    from torchrl.envs import EnvBase

    from diffrl.agents.tianshou import step_policy
    from diffrl.envs import DiffusionMDP, DiffusionMDPVectorEnv
    from diffrl.envs.tianshou_env import DiffusionMDPTianshouEnv
    from diffrl.envs.torchrl_env import DiffusionMDPEnv, StepPolicyModule, rollout_chain, step_policy_module

    T = mdp.horizon
    env = DiffusionMDPEnv(mdp, B, seed=0)
    module = step_policy_module(policy, env.generator)

    class ThroughForward(StepPolicyModule):
        """The same module; being a subclass, the env calls it through forward like any TensorDict policy."""

    generic = ThroughForward(policy, env.generator)
    for seed in (0, 1):
        env.set_seed(seed)
        short = env.rollout(T, module)
        env.set_seed(seed)
        base = EnvBase.rollout(env, T, module)
        env.set_seed(seed)
        through_forward = env.rollout(T, generic)
        for other in (base, through_forward):
            if list(short.keys(True, True)) != list(other.keys(True, True)) or not all(
                    torch.equal(short.get(k), other.get(k)) for k in other.keys(True, True)):
                raise AssertionError("env.rollout differs from EnvBase.rollout")
        if not torch.equal(rollout_chain(short), policy.sample(B, generator=torch.Generator().manual_seed(seed))):
            raise AssertionError("env.rollout does not reproduce policy.sample")

    g = torch.Generator().manual_seed(0)
    gym_vector = DiffusionMDPVectorEnv(mdp, num_envs=B)
    gym_sync = gymnasium.vector.SyncVectorEnv([lambda: DiffusionMDP(mdp) for _ in range(B)])
    collectors = {}
    for name, ts_env in [("tianshou", DiffusionMDPTianshouEnv(mdp, num_envs=B)),
                         ("dummy", DummyVectorEnv([lambda: DiffusionMDP(mdp) for _ in range(B)]))]:
        collector = Collector(step_policy(policy), ts_env, VectorReplayBuffer(B * T, B))
        collector.reset()
        stats = collector.collect(n_episode=B)
        if stats.n_collected_episodes != B or stats.n_collected_steps != B * T or not (np.asarray(stats.lens) == T).all():
            raise AssertionError(f"{name}: expected {B} episodes of {T} steps, got {stats.n_collected_episodes} episodes, {stats.n_collected_steps} steps")
        collectors[name] = collector

    return {
        "plain loop: policy.sample": lambda: policy.sample(B, generator=g),
        "TorchRL: env.rollout(T, step_policy_module(policy, env.generator))": lambda: env.rollout(T, module),
        "Gymnasium: DiffusionMDPVectorEnv, reset + T steps": lambda: gym_loop(gym_vector, policy, T, g),
        "Tianshou: DiffusionMDPTianshouEnv, Collector.collect(n_episode=B)": lambda: collectors["tianshou"].collect(n_episode=B),
        "reference: plain loop + ChainMDP.step_reward per step (the env's maths, no env)":
            lambda: plain_rollout_with_rewards(policy, mdp, B, g),
        "reference: TorchRL EnvBase.rollout (TorchRL's own loop)": lambda: EnvBase.rollout(env, T, module),
        "reference: TorchRL env.rollout, the module through its forward": lambda: env.rollout(T, generic),
        "reference: Gymnasium SyncVectorEnv of B DiffusionMDP": lambda: gym_loop(gym_sync, policy, T, g),
        "reference: Tianshou DummyVectorEnv of B DiffusionMDP": lambda: collectors["dummy"].collect(n_episode=B),
    }


def time_block(fn, calls: int) -> tuple[float, float]:
    """(wall ms, thread-CPU ms) per call over ``calls`` calls of fn."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        fn()
    return 1e3 * (time.perf_counter() - wall) / calls, 1e3 * (time.thread_time() - cpu) / calls


def measure(rows: dict, rounds: int, block_ms: float, warmup: int) -> list[dict]:
    """Interleaved rounds (order alternating); per row the medians and the per-round ratios to the first row."""
    calls = {}
    for name, fn in rows.items():
        ms = min(time_block(fn, 1)[0] for _ in range(warmup))
        calls[name] = max(1, round(block_ms / ms))
    blocks: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for r in range(rounds):
        for name in (list(rows) if r % 2 == 0 else list(rows)[::-1]):
            blocks[name].append(time_block(rows[name], calls[name]))
    plain = blocks[next(iter(rows))]
    out = []
    for name in rows:
        wall = [w for w, _ in blocks[name]]
        cpu = [c for _, c in blocks[name]]
        out.append({
            "row": name, "calls_per_block": calls[name],
            "ms_per_rollout": statistics.median(wall), "cpu_ms_per_rollout": statistics.median(cpu),
            "us_per_chain": 1e3 * statistics.median(wall) / B,
            "ratio": statistics.median(a[0] / p[0] for a, p in zip(blocks[name], plain)),
            "ratio_cpu": statistics.median(a[1] / p[1] for a, p in zip(blocks[name], plain)),
        })
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25, help="rounds of one block per row")
    parser.add_argument("--block-ms", type=float, default=100.0, help="target milliseconds of one block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per row first (the fastest sets the block size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "env_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = shlex.join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    print(f"command: {command}")
    load_before = os.getloadavg()
    start = time.perf_counter()

    config = make_config(B)
    dxmi = build_library(config, make_data(1000, args.seed), args.seed)
    try:
        rows = make_rows(dxmi.agent.policy, dxmi.mdp)
    except AssertionError as e:
        print(f"CHECK FAILED: {e}\nrefusing to time code that disagrees.")
        sys.exit(1)
    results = measure(rows, args.rounds, args.block_ms, args.warmup)
    load_after = os.getloadavg()

    import gymnasium
    import tensordict
    import tianshou
    import torchrl

    report = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()},
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "versions": {"torch": torch.__version__, "torchrl": torchrl.__version__, "tensordict": tensordict.__version__,
                     "gymnasium": gymnasium.__version__, "tianshou": tianshou.__version__},
        "setup": {"B": B, "D": 2, "T": dxmi.mdp.horizon, "hidden": 128, "depth": 3, "time_dim": 64, "rounds": args.rounds,
                  "block_ms": args.block_ms, "reward": type(dxmi.mdp.reward).__name__},
        "runtime_s": round(time.perf_counter() - start, 1),
        "rows": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nB = {B} chains of D = 2, T = {dxmi.mdp.horizon}; {args.rounds} interleaved rounds; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {cpu_model()}, {os.cpu_count()} CPUs, 1 thread\n")
    print("| rollout of B chains | ms per rollout | µs per chain | ratio to the plain loop (wall) | (CPU time) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['row']} | {r['ms_per_rollout']:.2f} | {r['us_per_chain']:.1f} | {r['ratio']:.2f} | ({r['ratio_cpu']:.2f}) |")
    print(f"\nwrote {out} ({report['runtime_s']} s)")
