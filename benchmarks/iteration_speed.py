"""Seconds per DxMI iteration: the library's ``DxMI.step()`` against the same maths in one plain-torch function.

    python benchmarks/iteration_speed.py                                   # check, timings, memory, docs/results/speed_plain.json
    python benchmarks/iteration_speed.py --batches 128 --iters 50 --mem-iters 300   # one batch size only
    python benchmarks/iteration_speed.py --torchrl-only                    # the TorchRL rows: docs/results/speed_torchrl.json

What it does, top to bottom:
  0. the TorchRL (TensorDict) path against the fast path at batch 128: first one DxDP update through
     the LossModules of ``diffrl.agents.torchrl`` and one through ``DxDP.update`` from identical weights
     and seeds must leave the same parameters; then, interleaved like the timing below, per row the
     median seconds of each and the median of the per-round ratios: ``env.rollout`` with the step
     policy module against ``policy.sample`` and against the same loop plus the env's per-step
     ``ChainMDP.step_reward``; the rollout with the ``ProbabilisticActor``; DxDP's update through the
     LossModules against ``DxDP.update``; a DxMI iteration fed by ``env.rollout`` against ``DxMI.step()``;
     and where a rollout's time goes (``torchrl_rollout_profile``).
  1. equivalence: from identical weights and the same seed, ``--check-iters`` iterations of the
     library and of ``plain_dxmi_iteration`` must leave identical policy, sigma, AVR, value and
     energy parameters (and identical parameter *changes*, so a tiny learning rate cannot hide a
     wrong update). Checked with the default config and with large learning rates. The script
     refuses to time code that disagrees. The library side is built as ``diffrl.app.pipeline.train``
     builds a 2-D run from scratch (``build_library``: ``make_task``, ``task.load_teacher(None)``,
     ``compose``, ``_dxmi``); the plain side starts from deep copies of its initial weights.
  2. timing: per batch size, warm-up, then ``--rounds`` blocks of ``--iters`` iterations of each,
     interleaved in alternating order in this one process; median wall-clock seconds per
     iteration, and median CPU seconds of this thread (robust to other jobs on a shared machine).
  3. memory: ru_maxrss of a fresh child process that runs ``--mem-iters`` iterations of one
     version, and the peak RSS of those iterations alone (VmHWM reset before the run).
  4. a markdown table on stdout and ``docs/results/speed_plain.json``.

The plain function mirrors the library's order of random draws exactly (global RNG):
x_0 ~ randn(B, D); per step t the noise randn(B, D) (``diffrl.policy.rollout``); then in the
sampler step ``randint(T, (B,))`` for t, ``randint(B, (B,))`` for b and ``randn_like`` for the
reparametrised noise. Data batches come from their own generator (``diffrl.data.BatchSampler``).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the plain version


@dataclass
class PlainState:
    """Everything one plain DxMI iteration reads and writes; no diffrl objects except TimeMLP nets."""

    # networks (diffrl.nets.TimeMLP) and the trainable log sigma_t
    eps_model: nn.Module  # eps_theta(x, tau) -> (B, D)
    value: nn.Module  # V(x, t) -> (B,), t = 0..T-1
    energy: nn.Module  # E(x) = energy(x, energy_time) -> (B,)
    log_sigma_train: nn.Parameter  # (T,) or (T - 1,) with fix_last
    log_sigma_fixed: Tensor  # (0,) or (1,)
    velocity_scale_sq: Tensor  # (T,) s_t^2, updated in place by AVR
    # the schedule's numbers: x_{t+1} = c_x[t] x + c_eps[t] eps(x, tau[t]) + sigma_t z
    c_x: Tensor
    c_eps: Tensor
    tau: Tensor
    energy_time: float
    # hyperparameters
    tau_velocity: float
    tau_entropy: float
    gamma: float
    avr_decay: float
    sampler_grad_clip: float
    # optimisers
    energy_opt: torch.optim.Optimizer
    value_opt: torch.optim.Optimizer  # the same object as energy_opt when the energy is V(., T) of the value net
    policy_opt: torch.optim.Optimizer  # groups: [eps_model params], [log_sigma_train]
    # data: minibatches with replacement from their own generator
    data: Tensor
    batch_size: int
    data_generator: torch.Generator


def plain_dxmi_iteration(s: PlainState) -> dict[str, Tensor]:
    """One DxMI iteration (spec section 8) in plain torch: sample, AVR, energy step, T value steps, sampler step."""
    T, B = s.c_x.numel(), s.batch_size
    x_data = s.data[torch.randint(0, s.data.shape[0], (B,), generator=s.data_generator)]

    # 1. B chains x_0..x_T from the current sampler, no grad
    with torch.no_grad():
        sigma = torch.cat([s.log_sigma_train, s.log_sigma_fixed]).exp()
        x = torch.randn(x_data.shape)
        chain = [x]
        for t in range(T):
            z = torch.randn(x.shape)
            x = s.c_x[t] * x + s.c_eps[t] * s.eps_model(x, s.tau[t]) + sigma[t] * z
            chain.append(x)
        chain = torch.stack(chain)  # (T + 1, B, D)

    # 2. AVR: s_t^2 <- alpha s_t^2 + (1 - alpha) mean_b mean_d (x_{t+1} - x_t)^2
    with torch.no_grad():
        step_sq = (chain[1:] - chain[:-1]).flatten(2).pow(2).mean((1, 2))
        s.velocity_scale_sq.mul_(s.avr_decay).add_((1 - s.avr_decay) * step_sq)
    s2 = s.velocity_scale_sq

    def energy(x: Tensor) -> Tensor:
        return s.energy(x, torch.full((x.shape[0],), s.energy_time))

    # 3. one contrastive energy step: mean E(data) - mean E(x_T) + gamma (mean E(data)^2 + mean E(x_T)^2)
    e = energy(torch.cat([x_data, chain[-1]]))
    e_data, e_model = e[:B], e[B:]
    loss_energy = e_data.mean() - e_model.mean() + s.gamma * ((e_data**2).mean() + (e_model**2).mean())
    s.energy_opt.zero_grad(set_to_none=True)
    loss_energy.backward()
    s.energy_opt.step()

    # 4. T value TD steps, t = T-1 .. 0; target sg[V(x_{t+1}, t+1)] + tau_v v_t - tau_e log sigma_t, V(., T) = E
    log_sigma = torch.cat([s.log_sigma_train, s.log_sigma_fixed]).detach()
    value_losses = []
    for t in reversed(range(T)):
        x, x_next = chain[t], chain[t + 1]
        with torch.no_grad():
            v_next = energy(x_next) if t == T - 1 else s.value(x_next, torch.full((B,), t + 1.0))
            velocity = (x_next - x).flatten(1).pow(2).mean(1) / (2 * s2[t])
            target = v_next + s.tau_velocity * velocity - s.tau_entropy * log_sigma[t]
        loss_value = (s.value(x, torch.full((B,), float(t))) - target).pow(2).mean()
        s.value_opt.zero_grad(set_to_none=True)
        loss_value.backward()
        s.value_opt.step()
        value_losses.append(loss_value.detach())

    # 5. one sampler step on B states drawn uniformly over (t, b): reparametrised x', loss V(x', t+1) + tau_v v - tau_e log sigma_t
    t_idx = torch.randint(0, T, (B,))
    b_idx = torch.randint(0, B, (B,))
    x = chain[t_idx, b_idx]
    log_sigma = torch.cat([s.log_sigma_train, s.log_sigma_fixed])
    z = torch.randn_like(x)
    mean = s.c_x[t_idx].view(-1, 1) * x + s.c_eps[t_idx].view(-1, 1) * s.eps_model(x, s.tau[t_idx])
    x_next = mean + log_sigma.exp()[t_idx].view(-1, 1) * z
    t_next = t_idx + 1
    last = t_next == T  # V(x', T) = E(x'), V(x', t+1) = value otherwise
    i_last, i_value = last.nonzero().squeeze(1), (~last).nonzero().squeeze(1)
    cost_to_go = torch.empty(B)
    cost_to_go[i_value] = s.value(x_next[i_value], t_next[i_value].float())
    cost_to_go[i_last] = energy(x_next[i_last])
    velocity = (x_next - x).flatten(1).pow(2).mean(1) / (2 * s2[t_idx])
    loss_sampler = (cost_to_go + s.tau_velocity * velocity - s.tau_entropy * log_sigma[t_idx]).mean()
    policy_params = [p for group in s.policy_opt.param_groups for p in group["params"]]
    s.policy_opt.zero_grad(set_to_none=True)
    loss_sampler.backward(inputs=policy_params)
    nn.utils.clip_grad_norm_(policy_params, s.sampler_grad_clip)
    s.policy_opt.step()

    return {"loss_energy": loss_energy.detach(), "loss_value": torch.stack(value_losses).mean(), "loss_sampler": loss_sampler.detach()}


# ----------------------------------------------------------------------------- building both from one config


def build_library(config, data: Tensor | None = None, seed: int | None = None):
    """The library's DxMI exactly as ``diffrl.app.pipeline.train`` composes a 2-D run from scratch
    (CPU): global seed, the task, a fresh teacher (``task.load_teacher(None)``), ``compose`` (sampler,
    reward, MDP, agent: the energy is initialised before the value) and ``_dxmi``.

    seed: the run's seed (default ``config.seed``). data: the training split in model units to draw
    batches from (default: the task's own, ``task.batches``; ``make_data`` gives the same tensor).
    """
    from diffrl.app.pipeline import _dxmi, compose
    from diffrl.app.tasks import make_task
    from diffrl.data import BatchSampler

    config = copy.deepcopy(config)
    if seed is not None:
        config.seed = seed
    t, device = config.train, torch.device("cpu")
    torch.manual_seed(config.seed)  # pipeline.setup
    task = make_task(config)
    teacher = task.load_teacher(t.teacher)  # None: the teacher's network freshly initialised
    c = compose(config, task, teacher, device)
    batches = task.batches(t.batch_size, config.seed, device) if data is None else BatchSampler(data, t.batch_size, config.seed)
    # the energy's evaluation EMA (a default) runs on the library side only: the ratio includes its cost
    c.dxmi = _dxmi(config, c, batches)
    return c.dxmi


def plain_from_library(dxmi, config, data: Tensor | None = None, seed: int | None = None) -> PlainState:
    """A PlainState with a deep copy of the library's initial weights and AVR buffer, and fresh optimisers
    with the library's learning rates. data: the training split (default: the one ``dxmi`` draws from);
    seed: of the data batches' generator (default ``config.seed``)."""
    t, d = config.train, config.train.dxdp
    covered = (
        d.value_target == "running" and d.target_update is None and d.sampler_batch is None and d.value_grad_clip is None
        and t.ema_decay is None and t.avr_decay is not None and t.lr_decay == "none" and t.reward == "energy" and t.agent == "dxdp"
    )
    if not covered:
        raise ValueError("the plain version covers DxDP with running-cost targets, no target network, no sampler_batch, no value "
                         "clip, no sampler EMA, no lr decay, AVR on and the energy reward")
    data = dxmi.data.data if data is None else data
    seed = config.seed if seed is None else seed
    policy, mdp = dxmi.agent.policy, dxmi.mdp
    energy_at = mdp.reward.energy  # AtTime(net, time)
    nets = copy.deepcopy({"eps": policy.mean_model.eps_model, "value": dxmi.agent.value, "energy": energy_at.net})
    log_sigma_train = nn.Parameter(policy.log_sigma_train.detach().clone())
    agent, lr = dxmi.agent, lambda optimizer, group: optimizer.param_groups[group]["lr"]  # the library's learning rates
    energy_opt = torch.optim.Adam(nets["energy"].parameters(), lr=lr(mdp.reward.optimizer, 0))
    shared = agent.value_optimizer is mdp.reward.optimizer
    value_opt = energy_opt if shared else torch.optim.Adam(nets["value"].parameters(), lr=lr(agent.value_optimizer, 0))
    if shared != (nets["energy"] is nets["value"]):
        raise ValueError("one optimiser for value and energy exactly when they share a network")
    return PlainState(
        eps_model=nets["eps"], value=nets["value"], energy=nets["energy"],
        log_sigma_train=log_sigma_train, log_sigma_fixed=policy.log_sigma_fixed.clone(),
        velocity_scale_sq=mdp.velocity_scale_sq.clone(),
        c_x=policy.mean_model.c_x.clone(), c_eps=policy.mean_model.c_eps.clone(), tau=policy.mean_model.timesteps.clone(),
        energy_time=energy_at.t,
        tau_velocity=t.tau_velocity, tau_entropy=t.tau_entropy, gamma=t.gamma, avr_decay=t.avr_decay,
        sampler_grad_clip=d.sampler_grad_clip,
        energy_opt=energy_opt, value_opt=value_opt,
        policy_opt=torch.optim.Adam([{"params": list(nets["eps"].parameters()), "lr": lr(agent.policy_optimizer, 0)},
                                     {"params": [log_sigma_train], "lr": lr(agent.policy_optimizer, 1)}]),
        data=data, batch_size=t.batch_size, data_generator=torch.Generator().manual_seed(seed),
    )


def make_config(batch: int, hidden: int = 128, depth: int = 3, time_dim: int = 64, overrides: list[str] | None = None):
    from diffrl.app.config import load_config

    return load_config(None, [f"train.batch_size={batch}", f"net.hidden={hidden}", f"net.depth={depth}", f"net.time_dim={time_dim}", *(overrides or [])])


def make_data(n: int, seed: int) -> Tensor:
    """The training split of 8 Gaussians in model units, as the pipeline's task loads it (n points, ``seed``)."""
    from diffrl.app.config import load_config
    from diffrl.app.tasks import make_task

    return make_task(load_config(None, ["data.name=8gaussians", f"data.n_train={n}", f"seed={seed}"])).split("train")


def named_state(dxmi) -> dict[str, Tensor]:
    policy, mdp = dxmi.agent.policy, dxmi.mdp
    out = {f"eps.{k}": v for k, v in policy.mean_model.eps_model.state_dict().items()}
    out.update({f"value.{k}": v for k, v in dxmi.agent.value.state_dict().items()})
    out.update({f"energy.{k}": v for k, v in mdp.reward.energy.net.state_dict().items()})
    out["log_sigma"] = policy.log_sigma.detach()
    out["velocity_scale_sq"] = mdp.velocity_scale_sq
    return {k: v.detach().clone() for k, v in out.items()}


def named_state_plain(s: PlainState) -> dict[str, Tensor]:
    out = {f"eps.{k}": v for k, v in s.eps_model.state_dict().items()}
    out.update({f"value.{k}": v for k, v in s.value.state_dict().items()})
    out.update({f"energy.{k}": v for k, v in s.energy.state_dict().items()})
    out["log_sigma"] = torch.cat([s.log_sigma_train, s.log_sigma_fixed]).detach()
    out["velocity_scale_sq"] = s.velocity_scale_sq
    return {k: v.detach().clone() for k, v in out.items()}


def check_equivalence(config, data: Tensor, iters: int, seed: int = 0, rtol: float = 1e-6, atol: float = 1e-7) -> dict:
    """Run both from identical weights and seed; assert identical parameters and parameter changes.

    Returns {"iters", "bitwise": bool, "max_abs_diff": float, "min_rel_change": ...}; raises AssertionError on mismatch.
    """
    dxmi = build_library(config, data, seed)
    plain = plain_from_library(dxmi, config, data, seed)
    start = named_state(dxmi)
    assert named_state_plain(plain).keys() == start.keys()
    torch.manual_seed(seed + 1)
    for _ in range(iters):
        dxmi.step()
    torch.manual_seed(seed + 1)
    for _ in range(iters):
        plain_dxmi_iteration(plain)
    lib, pln = named_state(dxmi), named_state_plain(plain)
    bitwise, max_diff, moved = True, 0.0, []
    for k in start:
        torch.testing.assert_close(pln[k], lib[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        torch.testing.assert_close(pln[k] - start[k], lib[k] - start[k], rtol=1e-5, atol=atol, msg=lambda m, k=k: f"change of {k}: {m}")
        bitwise &= torch.equal(pln[k], lib[k])
        max_diff = max(max_diff, float((pln[k] - lib[k]).abs().max()))
        moved.append(float((lib[k] - start[k]).abs().max()))
    return {"iters": iters, "bitwise": bitwise, "max_abs_diff": max_diff, "smallest_max_change": min(moved)}


# ----------------------------------------------------------------------------- timing and memory


def time_block(step, iters: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) per iteration over ``iters`` calls of ``step``."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(iters):
        step()
    return (time.perf_counter() - wall) / iters, (time.thread_time() - cpu) / iters


def child_memory(kind: str, batch: int, iters: int, threads: int) -> dict:
    """Peak RSS of a fresh process that builds one version and runs ``iters`` iterations."""
    cmd = [sys.executable, __file__, "--mem-child", kind, "--batches", str(batch), "--mem-iters", str(iters), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux): VmRSS (resident now) or VmHWM (its high-water mark), MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def mem_child(kind: str, batch: int, iters: int) -> None:
    """Build one version, then run ``iters`` iterations. Reports the process's ru_maxrss (imports and
    set-up included) and the peak RSS of the run alone: VmHWM, the same high-water mark, reset with
    /proc/self/clear_refs just before the run (ru_maxrss itself cannot be reset once a thread exited)."""
    config = make_config(batch)
    data = make_data(config.data.n_train, 0)
    dxmi = build_library(config, data, 0)
    step = dxmi.step
    if kind == "plain":
        plain = plain_from_library(dxmi, config, data, 0)
        del dxmi, step
        step = lambda: plain_dxmi_iteration(plain)  # noqa: E731
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    start = proc_status_mib("VmRSS")
    for _ in range(iters):
        step()
    print(json.dumps({
        "kind": kind, "batch": batch, "iters": iters,
        "ru_maxrss_process_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_run_mib": start, "peak_rss_run_mib": proc_status_mib("VmHWM"), "rss_after_run_mib": proc_status_mib("VmRSS"),
    }))


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


# ----------------------------------------------------------------------------- the TorchRL (TensorDict) path


def torchrl_path(dxmi):
    """The TensorDict path over the library run's own policy, value, MDP and optimiser steps: the env with
    the step policy module, the ProbabilisticActor, and DxDP's LossModules (``diffrl.agents.torchrl``)."""
    from diffrl.agents.torchrl import DxDPSamplerLoss, DxDPValueLoss, probabilistic_actor, value_operator
    from diffrl.envs.torchrl_env import DiffusionMDPEnv, step_policy_module

    agent, mdp = dxmi.agent, dxmi.mdp
    env = DiffusionMDPEnv(mdp, dxmi.data.batch_size, seed=0)
    actor, critic = probabilistic_actor(agent.policy), value_operator(agent.value, mdp)
    return {
        "env": env, "step_module": step_policy_module(agent.policy, env.generator), "actor": actor,
        "value_loss": DxDPValueLoss(critic, actor, mdp),
        "sampler_loss": DxDPSamplerLoss(actor, critic, mdp),
    }


def torchrl_dxdp_update(rollout, parts, agent) -> None:
    """DxDP.update's steps on a [B, T] rollout TensorDict through the LossModules: T value steps of
    ``DxDPValueLoss`` on rollout[:, t], t = T-1..0, then one ``DxDPSamplerLoss`` step on B states drawn
    uniformly (the same draws, in the same order, as DxDP.update), with DxDP's own optimiser steps."""
    B, T = rollout.batch_size
    for t in reversed(range(T)):
        agent.value_step(parts["value_loss"](rollout[:, t])["loss_value"], "loss_value")
    t_idx = torch.randint(0, T, (B,))
    b_idx = torch.randint(0, B, (B,))
    states = rollout.select("x", "t")[b_idx, t_idx]
    agent.sampler_step(parts["sampler_loss"](states)["loss_sampler"], "loss_sampler")


def plain_rollout_with_rewards(policy, mdp, batch: int, generator: torch.Generator) -> Tensor:
    """policy.sample's loop plus the env's per-step work of ``ChainMDP.step_reward``: the same maths as
    DiffusionMDPEnv.rollout, without TorchRL."""
    from diffrl.policy import rollout

    def act(x, t, noise):
        x_next = policy(x, t, noise)
        mdp.step_reward(x, x_next, torch.full((x.shape[0],), t))
        return x_next

    with torch.no_grad():
        return rollout(act, mdp.reset(batch, generator=generator), mdp.horizon, generator)


def check_torchrl_update(config, data: Tensor, seed: int) -> float:
    """One DxDP update through the LossModules and one through DxDP.update, from identical weights, the same
    rollout and the same global seed: the parameters must agree (rtol 1e-5); returns the largest |difference|."""
    from diffrl.envs.torchrl_env import chain_tensordict

    a, b = build_library(config, data, seed), build_library(config, data, seed)
    chain = a.agent.policy.sample(config.train.batch_size, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 1)
    b.agent.update(chain)
    torch.manual_seed(seed + 1)
    torchrl_dxdp_update(chain_tensordict(a.mdp, chain), torchrl_path(a), a.agent)
    worst = 0.0
    for (name, p), q in zip(a.agent.policy.named_parameters(), b.agent.policy.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"policy {name}: {m}")
        worst = max(worst, float((p - q).detach().abs().max()))
    for (name, p), q in zip(a.agent.value.named_parameters(), b.agent.value.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"value {name}: {m}")
        worst = max(worst, float((p - q).detach().abs().max()))
    return worst


def torchrl_ratios(config, data: Tensor, seed: int, iters: int, rounds: int, warmup: int) -> list[dict]:
    """Per row, the TensorDict path against the fast path on the same run, interleaved in alternating order:
    median wall and CPU seconds per call of each, and the median of the per-round ratios."""
    from torchrl.envs import EnvBase

    from diffrl.envs.torchrl_env import rollout_chain

    dxmi = build_library(config, data, seed)
    agent, mdp, policy, B, T = dxmi.agent, dxmi.mdp, dxmi.agent.policy, config.train.batch_size, config.train.horizon
    parts = torchrl_path(dxmi)
    env, g = parts["env"], torch.Generator().manual_seed(seed)
    chain = policy.sample(B, generator=g)
    rollout_td = env.rollout(T, parts["step_module"])

    def actor_rollout():
        with torch.no_grad():
            return env.rollout(T, parts["actor"])

    rows = [
        ("env.rollout(T, step_policy_module) vs policy.sample", lambda: env.rollout(T, parts["step_module"]), lambda: policy.sample(B, generator=g)),
        ("EnvBase.rollout(env, T, step_policy_module), TorchRL's own loop, vs policy.sample",
         lambda: EnvBase.rollout(env, T, parts["step_module"]), lambda: policy.sample(B, generator=g)),
        ("env.rollout(T, step_policy_module) vs the plain loop + step rewards", lambda: env.rollout(T, parts["step_module"]),
         lambda: plain_rollout_with_rewards(policy, mdp, B, g)),
        ("env.rollout(T, step_policy_module, break_when_any_done=False) vs policy.sample",
         lambda: env.rollout(T, parts["step_module"], break_when_any_done=False), lambda: policy.sample(B, generator=g)),
        ("env.rollout(T, probabilistic_actor), no grad, vs policy.sample", actor_rollout, lambda: policy.sample(B, generator=g)),
        ("DxDP update: LossModules on the rollout TensorDict vs DxDP.update(chain)", lambda: torchrl_dxdp_update(rollout_td, parts, agent),
         lambda: agent.update(chain)),
        ("DxMI iteration: env.rollout + rollout_chain + DxMI.update vs DxMI.step()",
         lambda: dxmi.update(rollout_chain(env.rollout(T, parts["step_module"])), next(dxmi.data)), dxmi.step),
    ]
    out = []
    for name, torchrl_step, fast_step in rows:
        for step in (torchrl_step, fast_step):
            time_block(step, warmup)
        blocks = {"torchrl": [], "fast": []}
        for r in range(rounds):
            for kind in (["torchrl", "fast"] if r % 2 == 0 else ["fast", "torchrl"]):
                blocks[kind].append(time_block(torchrl_step if kind == "torchrl" else fast_step, iters))
        row = {"row": name, "batch": B, "iters_per_block": iters}
        for kind in ("torchrl", "fast"):
            row[f"{kind}_s"] = statistics.median(w for w, _ in blocks[kind])
            row[f"{kind}_cpu_s"] = statistics.median(c for _, c in blocks[kind])
        row["ratio_paired_median"] = statistics.median(a[0] / b[0] for a, b in zip(blocks["torchrl"], blocks["fast"]))
        row["ratio_cpu_paired_median"] = statistics.median(a[1] / b[1] for a, b in zip(blocks["torchrl"], blocks["fast"]))
        print(f"{name}: {row['torchrl_s'] * 1e3:.2f} vs {row['fast_s'] * 1e3:.2f} ms, ratio {row['ratio_paired_median']:.2f} "
              f"(CPU time {row['ratio_cpu_paired_median']:.2f})", flush=True)
        out.append(row)
    return out


def torchrl_rollout_profile(config, data: Tensor, seed: int, rollouts: int) -> dict[str, float]:
    """Where ``env.rollout(T, step_policy_module)`` (the env's short route) spends its time: thread CPU
    milliseconds per rollout (medians over ``rollouts``), from timers wrapped around the pieces it calls,
    exclusive of each other:

        policy            the policy's own step (GaussianStepPolicy.forward): the plain loop's work
        policy_module     StepPolicyModule.act around it (the noise draw)
        rewards           ChainMDP.step_reward (one call per step after the loop; the terminal energy at the last)
        reset             DiffusionMDPEnv._reset
        rollout           the rest of env.rollout: next states, stacking the steps, the TensorDict
    and "plain" = policy.sample for reference."""
    dxmi = build_library(config, data, seed)
    parts = torchrl_path(dxmi)
    env, module, mdp, T, B = parts["env"], parts["step_module"], dxmi.mdp, config.train.horizon, config.train.batch_size
    policy = module.policy
    spent: dict[str, float] = {}

    def timed(owner, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + time.thread_time() - start

        setattr(owner, name, wrapper)  # an instance attribute: shadows the method until deleted

    patched = [(env, "_reset", "reset"), (mdp, "step_reward", "rewards"), (module, "act", "module"), (policy, "forward", "policy")]
    for owner, name, key in patched:
        timed(owner, name, key)
    rows: list[dict[str, float]] = []
    try:
        for _ in range(rollouts + 3):
            spent.clear()
            start = time.thread_time()
            env.rollout(T, module)
            total = time.thread_time() - start
            rows.append({
                "policy": spent["policy"], "policy_module": spent["module"] - spent["policy"], "rewards": spent["rewards"],
                "reset": spent["reset"], "rollout": total - spent["module"] - spent["rewards"] - spent["reset"], "total": total,
            })
    finally:
        for owner, name, _ in patched:
            delattr(owner, name)
    g = torch.Generator().manual_seed(seed)
    plain = [time_block(lambda: policy.sample(B, generator=g), 1)[1] for _ in range(rollouts + 3)]
    out = {key: 1e3 * statistics.median(r[key] for r in rows[3:]) for key in rows[0]}
    out["plain"] = 1e3 * statistics.median(plain[3:])
    return out


# ----------------------------------------------------------------------------- main


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 4096])
    parser.add_argument("--iters", type=int, nargs="+", default=[25, 5], help="iterations per timed block, one per batch size")
    parser.add_argument("--mem-iters", type=int, nargs="+", default=[200, 20], help="iterations of the memory run, one per batch size")
    parser.add_argument("--rounds", type=int, default=10, help="timed blocks of each version; the order alternates")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations of each version first")
    parser.add_argument("--check-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default docs/results/speed_plain.json (--torchrl-only: speed_torchrl.json)")
    parser.add_argument("--torchrl-iters", type=int, default=30, help="calls per timed block of the TorchRL rows (batch 128)")
    parser.add_argument("--torchrl-only", action="store_true", help="only the TorchRL rows (and their check); default --out speed_torchrl.json")
    parser.add_argument("--mem-child", choices=["library", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.mem_child:
        mem_child(args.mem_child, args.batches[0], args.mem_iters[0])
        sys.exit(0)

    per_batch = lambda values: values * len(args.batches) if len(values) == 1 else values  # noqa: E731
    iters, mem_iters = per_batch(args.iters), per_batch(args.mem_iters)
    if len(iters) != len(args.batches) or len(mem_iters) != len(args.batches):
        parser.error("--iters and --mem-iters take one value, or one per batch size")
    command = shlex.join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    print(f"command: {command}\n")
    data = make_data(50_000, args.seed)
    out_path = Path(args.out or REPO / "docs" / "results" / ("speed_torchrl.json" if args.torchrl_only else "speed_plain.json"))

    # 0. the TorchRL (TensorDict) path against the fast path, batch 128, after its own equivalence check
    try:
        torchrl_check = check_torchrl_update(make_config(128), data, args.seed)
    except AssertionError as e:
        print(f"TORCHRL EQUIVALENCE FAILED: {e}\nrefusing to time code that disagrees.")
        sys.exit(1)
    print(f"equivalence (TorchRL LossModules vs DxDP.update, one update, batch 128): parameters match, max |diff| {torchrl_check:.1e}")
    torchrl_rows = torchrl_ratios(make_config(128), data, args.seed, args.torchrl_iters, args.rounds, args.warmup)
    profile = torchrl_rollout_profile(make_config(128), data, args.seed, args.torchrl_iters * args.rounds)
    print("env.rollout(T, step_policy_module), batch 128, CPU ms per rollout: "
          + ", ".join(f"{key} {value:.3f}" for key, value in profile.items()))
    print()
    if args.torchrl_only:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({
            "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count()},
            "setup": {"D": 2, "T": 5, "hidden": 128, "depth": 3, "time_dim": 64, "rounds": args.rounds, "warmup": args.warmup},
            "torchrl": {"equivalence_max_abs_diff": torchrl_check, "rows": torchrl_rows, "rollout_profile_cpu_ms": profile},
        }, indent=2) + "\n")
        print(f"wrote {out_path}")
        sys.exit(0)

    # 1. equivalence, or no timing at all
    checks = {}
    for name, overrides in [
        ("default config, batch 128", []),
        ("large learning rates, batch 128", ["train.dxdp.lr_sampler=1e-3", "train.dxdp.lr_sigma=1e-2", "train.dxdp.lr_value=1e-2", "train.lr_energy=1e-2"]),
    ]:
        try:
            checks[name] = check_equivalence(make_config(128, overrides=overrides), data, args.check_iters, args.seed)
        except AssertionError as e:
            print(f"EQUIVALENCE FAILED ({name}): {e}\nrefusing to time code that disagrees.")
            sys.exit(1)
        c = checks[name]
        print(f"equivalence ({name}): {c['iters']} iterations, parameters and their changes match; "
              f"bitwise identical: {c['bitwise']}, max |diff| {c['max_abs_diff']:.1e}")
    print()

    # 2. timing, interleaved in alternating order
    results = []
    for batch, n in zip(args.batches, iters):
        config = make_config(batch)
        dxmi = build_library(config, data, args.seed)
        plain = plain_from_library(dxmi, config, data, args.seed)
        steps = {"library": dxmi.step, "plain": lambda: plain_dxmi_iteration(plain)}
        for step in steps.values():
            time_block(step, args.warmup)
        blocks = {"library": [], "plain": []}
        for r in range(args.rounds):
            for kind in (["library", "plain"] if r % 2 == 0 else ["plain", "library"]):
                blocks[kind].append(time_block(steps[kind], n))
        row = {"batch": batch, "iters_per_block": n}
        for kind in ("library", "plain"):
            row[f"{kind}_s_per_iter"] = statistics.median(w for w, _ in blocks[kind])
            row[f"{kind}_cpu_s_per_iter"] = statistics.median(c for _, c in blocks[kind])
            row[f"{kind}_blocks_wall_cpu"] = blocks[kind]
        row["ratio"] = row["library_s_per_iter"] / row["plain_s_per_iter"]
        row["ratio_cpu"] = row["library_cpu_s_per_iter"] / row["plain_cpu_s_per_iter"]
        row["ratio_paired_median"] = statistics.median(l[0] / p[0] for l, p in zip(blocks["library"], blocks["plain"]))
        print(f"batch {batch}: library {row['library_s_per_iter'] * 1e3:.2f} ms/iter, plain {row['plain_s_per_iter'] * 1e3:.2f} ms/iter, "
              f"ratio {row['ratio']:.3f} (CPU time ratio {row['ratio_cpu']:.3f}, median of per-round ratios {row['ratio_paired_median']:.3f})", flush=True)
        results.append(row)
        del dxmi, plain, steps

    # 3. peak memory of fresh processes
    for row, n in zip(results, mem_iters):
        for kind in ("library", "plain"):
            m = child_memory(kind, row["batch"], n, args.threads)
            row[f"{kind}_memory"] = {k: v for k, v in m.items() if k not in ("kind", "batch", "iters")}
            row[f"{kind}_maxrss_mib"] = m["ru_maxrss_process_mib"]
            row[f"{kind}_run_peak_over_start_mib"] = m["peak_rss_run_mib"] - m["rss_before_run_mib"]
        row["mem_iters"] = n

    # 4. report
    print("\n| batch | library s/iter | plain s/iter | library / plain | (CPU time ratio) | ru_maxrss library MiB (run's peak over its start) | ru_maxrss plain MiB (run's peak over its start) | memory run |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['batch']} | {r['library_s_per_iter']:.4f} | {r['plain_s_per_iter']:.4f} | {r['ratio']:.3f} | ({r['ratio_cpu']:.3f}) "
            f"| {r['library_maxrss_mib']:.0f} (+{r['library_run_peak_over_start_mib']:.0f}) "
            f"| {r['plain_maxrss_mib']:.0f} (+{r['plain_run_peak_over_start_mib']:.0f}) | {r['mem_iters']} iters |"
        )
    print(f"\ns/iter: median wall clock of {args.rounds} interleaved blocks per version ({', '.join(map(str, iters))} iterations each) "
          f"after {args.warmup} warm-up; CPU time = this thread's, robust to other jobs on the machine. ru_maxrss: whole fresh process "
          f"(imports and set-up included); in brackets: peak RSS of the iterations alone (VmHWM reset before the run) minus the RSS at the run's start. D=2, T=5, TimeMLP hidden 128 depth 3, time_dim 64; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("\n| TorchRL path vs fast path (batch 128) | TorchRL ms | fast ms | ratio (wall) | ratio (CPU time) |")
    print("|---|---:|---:|---:|---:|")
    for r in torchrl_rows:
        print(f"| {r['row']} | {r['torchrl_s'] * 1e3:.2f} | {r['fast_s'] * 1e3:.2f} | {r['ratio_paired_median']:.2f} | {r['ratio_cpu_paired_median']:.2f} |")
    report = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": {"processor": platform.processor(), "machine": platform.machine(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "setup": {"D": 2, "T": 5, "hidden": 128, "depth": 3, "time_dim": 64, "rounds": args.rounds, "warmup": args.warmup},
        "equivalence": checks,
        "results": results,
        "torchrl": {"equivalence_max_abs_diff": torchrl_check, "rows": torchrl_rows, "rollout_profile_cpu_ms": profile},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out_path}")
