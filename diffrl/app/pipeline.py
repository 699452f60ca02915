"""The run life cycle, written once for every task: pretrain, train (fresh or resumed), restore a
finished run (``from_run``), sample and evaluate.

A DxMI run is composed, not hard-wired: the task's data and teacher, the teacher's T-step
sampler, a reward (``train.reward``: the task's energy, or ``FACTORY(event_shape, config) ->
RewardModel``), the chain MDP, an agent (``train.agent``: dxdp, reinforce, ppo, or ``FACTORY(policy,
mdp, config) -> Agent``) and the DxMI loop. Factories given as Python callables are recorded as
``module:name`` in config.yaml when they can be imported back, so a run resumes and restores
from its folder alone.

Run folder: config.yaml (resolved, with the task), checkpoint.pt (latest full state: --resume),
model.pt (the selected model and what rebuilds it), metrics.jsonl, tb/, samples and plots.
Under ``torchrun`` every process trains on its share of the batch with its own random streams;
gradients and AVR's statistic are averaged (``diffrl.distributed``) and rank 0 alone writes.
"""
from __future__ import annotations

import copy
import importlib
import os
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..agent import Agent
from ..agents.dxdp import DxDP
from ..agents.ppo import PPO
from ..agents.reinforce import Reinforce
from ..checkpoint import CorruptFileError
from ..ddpm import DDPM
from ..distributed import Dist, distribute, init_processes, rank0_first, rank_seed, rng_state, set_rng_state
from ..dxmi import DxMI
from ..loop import LoopConfig, fit
from ..mdp import ChainMDP, TeacherAnchor
from ..nets import TimeMLP
from ..policy import GaussianStepPolicy, rollout
from ..rewards import RewardModel
from ..run import RunDir
from ..sampling import ddim_sample, value_guided_sample
from .config import ExperimentConfig, from_yaml, to_yaml
from .tasks import DEFAULT_THREADS, Task, make_task
from .tasks.anomaly import langevin_agent

__all__ = ["AgentFactory", "RewardFactory", "Run", "TeacherTrainer", "compose", "settings_of", "pg_critic", "pretrain", "train", "from_run", "sample", "evaluate", "open_run", "resolve_factory"]

AgentFactory = Callable[[GaussianStepPolicy, ChainMDP, ExperimentConfig], Agent]
"""agent_factory(policy, mdp, config) -> Agent: anything with policy, act, update(chain), training_state."""
RewardFactory = Callable[[tuple, ExperimentConfig], RewardModel]
"""reward_factory(event_shape, config) -> RewardModel: the terminal reward, learnable or fixed."""


# ---------------------------------------------------------------- set-up


def setup(config: ExperimentConfig) -> Dist:
    """Threads, processes, device and the global seed (per process under torchrun)."""
    threads = config.threads if config.threads is not None else DEFAULT_THREADS[config.task]
    if threads is not None:
        torch.set_num_threads(threads)
    ctx = init_processes(config.device)
    autocast(config, ctx.device)  # amp on a CPU is refused here, before a run folder is made
    seed = config.seed if ctx.world == 1 else rank_seed(config.seed, ctx.rank, 0)
    torch.manual_seed(seed)
    if ctx.device.type == "cuda":
        torch.cuda.manual_seed(seed)
    return ctx


def autocast(config: ExperimentConfig, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    if dtype is not None and device.type != "cuda":
        raise ValueError(f"amp={config.amp} needs a CUDA device; leave amp=none on CPUs")
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def resolve_factory(spec: str, builtin: dict[str, Callable]) -> Callable:
    """A builtin name, or ``MODULE:NAME`` imported (the working directory is importable, so
    ``examples.custom_agent:make`` works from the repository root)."""
    if spec in builtin:
        return builtin[spec]
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"unknown factory {spec!r}: give one of {', '.join(builtin)} or MODULE:FACTORY")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = importlib.import_module(module_name)
        for part in name.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import factory {spec!r}: {e}") from None
    if not callable(factory):
        raise ValueError(f"factory {spec!r} is not callable")
    return factory


def _spec_of(factory: Callable, kind: str) -> str:
    """``module:qualname`` of a factory, checked to import back to the same function. A factory of
    the script being run (``__main__``) is named by the script's path from the working directory
    (``python examples/custom_agent.py`` records ``examples.custom_agent:make``)."""
    module, name = getattr(factory, "__module__", ""), getattr(factory, "__qualname__", "")
    if module == "__main__":
        module = _main_module_name()
    spec = f"{module}:{name}"
    try:
        found = resolve_factory(spec, {})
        code = getattr(factory, "__code__", None)
        if found is factory or (code is not None and getattr(found, "__code__", None) is not None
                                and found.__code__.co_filename == code.co_filename and found.__qualname__ == name):
            return spec
    except ValueError:
        pass
    raise ValueError(
        f"the {kind} factory {factory!r} cannot be imported back by name (a lambda or a local function): "
        f"define it at module level in an importable module so the run can resume and restore"
    )


def _main_module_name() -> str:
    """The dotted name under which the running script imports from the working directory ("" if none)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is None:
        return ""
    path, cwd = Path(main_file).resolve(), Path.cwd().resolve()
    if cwd not in path.parents:
        return ""
    return ".".join(path.relative_to(cwd).with_suffix("").parts)


def dxdp_agent(policy: GaussianStepPolicy, mdp: ChainMDP, config: ExperimentConfig) -> DxDP:
    """The builtin agent: DxDP with ``train.dxdp``, its value built by the task."""
    value, value_optimizer = make_task(config, load=False).dxdp_value(mdp.reward, mdp.event_shape)
    return DxDP(policy, value.to(mdp.velocity_scale_sq.device), mdp, config.train.dxdp, value_optimizer=value_optimizer)


class _FlatCritic(nn.Module):
    """V(x (N, *event), t (N,)) = net(x flattened to (N, D), t): an MLP critic for samples of any shape."""

    def __init__(self, net: nn.Module, event_ndim: int) -> None:
        super().__init__()
        self.net, self.event_ndim = net, event_ndim

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x.flatten(x.ndim - self.event_ndim), t)


def pg_critic(mdp: ChainMDP, config: ExperimentConfig) -> nn.Module:
    """The critic V(x_t, t) of the policy-gradient agents (baseline=value), on the MDP's device: a TimeMLP
    of ``net``'s sizes, as the point task's DxDP value, over the D numbers of a sample. Point data: that
    value's architecture (its own weights even when the energy shares DxDP's value: a critic predicts a
    reward-to-go, not the energy). Images: the same MLP over the flattened pixels, a cheap critic (its
    quality only sets the variance; with gae_lambda = 1 the gradient is unbiased whatever it is): the
    image energy network is not time-conditioned, and a second network of its size would double an
    iteration's cost. Sign: a return, higher is better. Its initial weights come from ``config.seed``
    alone, so every process of a distributed run starts from the same critic (``distribute``
    broadcasts the policy, not this)."""
    n = config.net
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        mlp = TimeMLP(mdp.dim, 1, hidden=n.hidden, depth=n.depth, time_dim=n.time_dim)
    critic = mlp if len(mdp.event_shape) == 1 else _FlatCritic(mlp, len(mdp.event_shape))
    return critic.to(mdp.velocity_scale_sq.device)


def reinforce_agent(policy: GaussianStepPolicy, mdp: ChainMDP, config: ExperimentConfig) -> Reinforce:
    """REINFORCE with ``train.reinforce``; its critic (baseline=value) is ``pg_critic``."""
    c = config.train.reinforce
    return Reinforce(policy, mdp, c, pg_critic(mdp, config) if c.baseline == "value" else None)


def ppo_agent(policy: GaussianStepPolicy, mdp: ChainMDP, config: ExperimentConfig) -> PPO:
    """PPO with ``train.ppo``; its critic (baseline=value) is ``pg_critic``. A minibatch larger than an
    iteration's B * T transitions is refused here, before a run folder exists."""
    c = config.train.ppo
    transitions = config.train.batch_size * mdp.horizon
    if c.minibatch_size is not None and c.minibatch_size > transitions:
        raise ValueError(f"train.ppo.minibatch_size {c.minibatch_size} exceeds the {transitions} transitions of an iteration "
                         f"(train.batch_size * train.horizon)")
    return PPO(policy, mdp, c, pg_critic(mdp, config) if c.baseline == "value" else None)


def energy_reward(event_shape: tuple, config: ExperimentConfig) -> RewardModel:
    """The builtin reward: the task's learnable energy (DxMI's inverse RL)."""
    return make_task(config, load=False).energy_reward(tuple(event_shape))


AGENTS: dict[str, AgentFactory] = {"dxdp": dxdp_agent, "reinforce": reinforce_agent, "ppo": ppo_agent}
REWARDS: dict[str, RewardFactory] = {"energy": energy_reward}
AGENTS["langevin"] = langevin_agent  # contrastive divergence's short-run MCMC (task anomaly's baseline)


# ---------------------------------------------------------------- composition


@dataclass
class Composition:
    """The parts of a DxMI run, built from a config and a teacher."""

    teacher: DDPM
    policy: GaussianStepPolicy
    reward: RewardModel
    mdp: ChainMDP
    agent: Agent
    dxmi: DxMI | None = None

    @property
    def value(self) -> nn.Module | None:
        value = getattr(self.agent, "value", None)
        return value if isinstance(value, nn.Module) else None


def compose(config: ExperimentConfig, task: Task, teacher: DDPM, device: torch.device,
            agent: AgentFactory | None = None, reward: RewardFactory | None = None) -> Composition:
    """Sampler (``task.step_policy``: the teacher's T-step chain), reward, MDP (from ``task.start``) and
    agent, in that order, on ``device``; the factories are ``agent`` / ``reward`` when given, else
    those ``train.agent`` / ``train.reward`` name."""
    t = config.train
    policy = task.step_policy(teacher)
    reward = (reward or resolve_factory(t.reward, REWARDS))(task.event_shape, config)
    if not isinstance(reward, RewardModel):
        raise TypeError(f"the reward factory {t.reward!r} returned {type(reward).__name__}, not a diffrl.rewards.RewardModel")
    anchor = None
    if t.tau_anchor > 0:
        scale = policy.sigma.detach().clone()
        if t.fix_last and scale.numel() > 1:
            scale[-1] = scale[-2]
        anchor = TeacherAnchor(policy, scale=scale)
    mdp = ChainMDP(reward, task.event_shape, policy.sigma.detach(), tau_velocity=t.tau_velocity, avr_decay=t.avr_decay,
                   start=task.start(), tau_entropy=t.tau_entropy, anchor=anchor, tau_anchor=t.tau_anchor)
    policy.to(device)
    mdp.to(device)
    agent = (agent or resolve_factory(t.agent, AGENTS))(policy, mdp, config)
    if not isinstance(agent, Agent) or agent.policy is not policy:
        raise TypeError(f"the agent factory {t.agent!r} must return an Agent (act, update, training_state, ...) acting with the given policy")
    return Composition(teacher, policy, reward, mdp, agent)


def _lr_schedulers(config: ExperimentConfig, c: Composition) -> list:
    """One cosine scheduler per distinct optimiser of the agent and the reward (``train.lr_decay``)."""
    if config.train.lr_decay == "none":
        return []
    if not hasattr(c.agent, "optimizers"):
        raise ValueError(f"train.lr_decay={config.train.lr_decay} needs an agent with optimizers(); {type(c.agent).__name__} has none")
    distinct = {id(o): o for o in [*c.agent.optimizers(), *c.reward.optimizers()]}.values()
    return [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=config.train.loop.steps) for o in distinct]


def _dxmi(config: ExperimentConfig, c: Composition, data: Any) -> DxMI:
    t = config.train
    return DxMI(c.agent, c.mdp, data, batch_size=t.batch_size if data is None else None, ema_decay=t.ema_decay,
                energy_ema_decay=t.energy_ema_decay if c.reward.learnable else None, lr_schedulers=_lr_schedulers(config, c))


# ---------------------------------------------------------------- the loop's trainables


class TeacherTrainer:
    """DDPM pretraining with Adam and a cosine learning-rate decay."""

    def __init__(self, ddpm: DDPM, data, lr: float, steps: int) -> None:
        self.ddpm, self.data = ddpm, data
        self.optimizer = torch.optim.Adam(ddpm.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(steps, 1))

    def step(self) -> dict[str, Tensor]:
        loss = self.ddpm.loss(next(self.data))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss_ddpm": loss.detach()}

    def training_state(self) -> dict[str, Any]:
        return {"ddpm": self.ddpm.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "data_rng": self.data.generator.get_state()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.ddpm.load_state_dict(state["ddpm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.generator.set_state(state["data_rng"])


class _DxMITrainer:
    """DxMI.step under autocast, logged metrics averaged over processes, and every process's random
    streams in the training state (one process: exactly ``DxMI``'s own state)."""

    def __init__(self, dxmi: DxMI, config: ExperimentConfig, ctx: Dist) -> None:
        self.dxmi, self.config, self.ctx = dxmi, config, ctx
        self._rng_to_restore: list | None = None
        self._seconds: deque[float] = deque(maxlen=config.train.loop.log_every)
        self._data_rng = getattr(dxmi.data, "generator", None) or torch.Generator()  # a fixed reward has no data stream

    def step(self) -> dict[str, Tensor]:
        """One DxMI iteration; adds perf/sec_per_iter (mean over the logging window) and, on GPUs,
        perf/peak_mem_gib."""
        if self._rng_to_restore is not None:  # after fit has set rank 0's CPU RNG everywhere
            set_rng_state(self.ctx, self._rng_to_restore, self._data_rng)
            self._rng_to_restore = None
        start = time.perf_counter()
        with autocast(self.config, self.ctx.device):
            metrics = self.dxmi.step()
        if self.ctx.world > 1:
            keys = sorted(metrics)
            metrics = dict(zip(keys, self.ctx.mean_(torch.stack([metrics[k].float() for k in keys]))))
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
            metrics["perf/peak_mem_gib"] = torch.tensor(torch.cuda.max_memory_allocated(self.ctx.device) / 2**30)
        self._seconds.append(time.perf_counter() - start)
        metrics["perf/sec_per_iter"] = torch.tensor(sum(self._seconds) / len(self._seconds))
        return metrics

    def training_state(self) -> dict[str, Any]:
        state = self.dxmi.training_state()
        if self.ctx.world > 1:  # collective: every rank saves at the same steps
            state["rank_rng"] = rng_state(self.ctx, self._data_rng)
            state["world_size"] = self.ctx.world
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.dxmi.load_training_state(state)
        saved_world = state.get("world_size", 1)
        if saved_world != self.ctx.world:
            raise ValueError(f"the checkpoint was written by {saved_world} process(es); resume it with the same number, not {self.ctx.world}")
        if self.ctx.world > 1:
            self._rng_to_restore = state["rank_rng"]


# ---------------------------------------------------------------- jobs


def _open_for_job(job: str, config: ExperimentConfig | None, out: str | Path, resume: bool, overrides: list[str] | None) -> tuple[ExperimentConfig, bool]:
    """The config a job runs with and whether it continues from a checkpoint: the given config for
    a new run; the saved one (plus allowed overrides) to resume, from its checkpoint or, for a run
    stopped before its first checkpoint, from the start. Everything is checked before a folder is created."""
    if resume:
        from .config import apply_resume_overrides

        if not (Path(out) / "config.yaml").is_file():
            raise FileNotFoundError(f"nothing to resume: {out} is not a run folder (no config.yaml)")
        run, saved, _ = open_run(out, need_model=False)
        from_checkpoint = run.checkpoint_path.is_file()
        if from_checkpoint:
            kind = "teacher" if "ddpm" in run.load_checkpoint(mmap=True)["trainer"] else "dxmi"  # fit reads it in full
            if kind != {"pretrain": "teacher", "train": "dxmi"}[job]:
                raise ValueError(f"{out} is a {kind} run: resume it with `diffrl {'pretrain' if kind == 'teacher' else 'train'} --resume`")
        return apply_resume_overrides(saved, overrides or []), from_checkpoint
    if config is None:
        raise ValueError("a new run needs a config (load_config(...))")
    if overrides:
        raise ValueError("overrides apply to --resume only; put them into the config of a new run")
    config.validate()
    RunDir.check_new(out)
    return config, False


def _run_dir(out: str | Path, config: ExperimentConfig, resume: bool, from_checkpoint: bool, readonly: bool = False) -> RunDir:
    """A new run folder, or the one to resume (its logged records dropped when it restarts from step 0)."""
    if not resume:
        return RunDir.create(out, to_yaml(config), readonly)
    run = RunDir.open(out, readonly)
    if not from_checkpoint:
        run.truncate_metrics(-1)
    return run


def pretrain(config: ExperimentConfig | None, out: str | Path, resume: bool = False, progress: bool | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Train a DDPM teacher of ``config.task``; model.pt holds its eps model and what rebuilds it."""
    config, from_checkpoint = _open_for_job("pretrain", config, out, resume, overrides)
    ctx = setup(config)
    task = make_task(config, ctx=ctx)
    ddpm = task.new_teacher().to(ctx.device)
    p = config.pretrain
    trainer = TeacherTrainer(ddpm, task.batches(p.batch_size, config.seed, ctx.device), p.lr, p.steps)
    task.prepare_scores()
    run = _run_dir(out, config, resume, from_checkpoint)
    eval_horizon = min(p.eval_horizon, p.num_timesteps)

    def chain() -> GaussianStepPolicy:
        return ddpm.step_policy(eval_horizon, task.event_shape, kind="strided")

    def evaluate_teacher() -> dict[str, float]:
        return task.evaluate(_policy_draw(chain(), ctx.device), task.eval_samples, config.seed, "val", None, ctx.device)[0]

    def model_state() -> dict[str, Any]:
        return {"kind": "teacher", "task": task.name, "eps_model": ddpm.eps_model.state_dict(),
                "teacher": task.teacher_state(ddpm), "data": task.data_state()}

    every = max(p.steps // 4, 1)
    loop = LoopConfig(p.steps, log_every=min(100, every), eval_every=every, checkpoint_every=every)
    result = fit(trainer, run, loop, evaluate_teacher if task.has_scores() else None, model_state, resume=from_checkpoint, progress=progress)
    task.save_teacher(run, ddpm)
    samples = task.draw(_policy_draw(chain(), ctx.device), task.output_samples, config.seed + 1, ctx.device)
    title = f"the teacher's {eval_horizon}-step strided chain (its {p.num_timesteps}-step chain is sampled by diffrl sample)"
    task.save_outputs(run.path, samples, title)
    return result


def train(config: ExperimentConfig | None, out: str | Path, agent: AgentFactory | str | None = None,
          reward: RewardFactory | str | None = None, resume: bool = False, progress: bool | None = None,
          overrides: list[str] | None = None) -> dict[str, Any]:
    """DxMI (or max-ent RL with a fixed reward) from ``train.teacher``; model.pt keeps the best
    validation score. ``agent`` / ``reward``: factories (or ``MODULE:NAME`` strings) replacing
    ``train.agent`` / ``train.reward``; they are recorded in config.yaml. ``resume`` continues
    the run in ``out``, with ``overrides`` limited to what a resumed run may change."""
    if config is not None and not resume:
        config = copy.deepcopy(config)
        for kind, factory in (("agent", agent), ("reward", reward)):
            if factory is not None:
                setattr(config.train, kind, factory if isinstance(factory, str) else _spec_of(factory, kind))
    elif agent is not None or reward is not None:
        raise ValueError("a resumed run keeps the agent and reward recorded in its config.yaml")
    factories = [f if callable(f) else None for f in (agent, reward)]  # this process calls them as given
    config, from_checkpoint = _open_for_job("train", config, out, resume, overrides)
    ctx = setup(config)
    t = config.train
    if t.batch_size % ctx.world:
        raise ValueError(f"train.batch_size {t.batch_size} must be divisible by the {ctx.world} processes")
    task = rank0_first(ctx, lambda: make_task(config, ctx=ctx))  # a download (CIFAR-10) happens once
    teacher = task.load_teacher(t.teacher)
    if t.horizon > teacher.num_steps:
        raise ValueError(f"train.horizon {t.horizon} exceeds the teacher's {teacher.num_steps} steps")
    c = compose(config, task, teacher, ctx.device, *factories)
    distribute(ctx, c.agent, c.reward, c.mdp)
    learnable = c.reward.learnable
    data_seed = config.seed if ctx.world == 1 else rank_seed(config.seed, ctx.rank, 1)
    data = task.batches(t.batch_size // ctx.world, data_seed, ctx.device) if learnable else None
    c.dxmi = dxmi = _dxmi(config, c, data)
    trainer = _DxMITrainer(dxmi, config, ctx)
    task.prepare_scores()
    if ctx.main:  # the folder only once everything is built: a failed start leaves nothing behind
        run = _run_dir(out, config, resume, from_checkpoint)
    ctx.barrier()
    if not ctx.main:
        run = _run_dir(out, config, True, from_checkpoint, readonly=True)

    def evaluate_dxmi() -> dict[str, float]:
        draw = _policy_draw(dxmi.sampling_policy, ctx.device, mdp=c.mdp)
        with autocast(config, ctx.device):
            metrics, samples = task.evaluate(draw, task.eval_samples, config.seed, "val", dxmi.evaluation_energy, ctx.device)
        task.on_evaluation(run, samples)
        metrics.update({f"sigma_{i}": float(s) for i, s in enumerate(c.policy.sigma.detach())})
        if ctx.device.type == "cuda":  # the evaluation's peak (FID's Inception), kept apart from training's
            metrics["peak_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
            torch.cuda.reset_peak_memory_stats(ctx.device)
        return metrics

    def model_state() -> dict[str, Any]:
        state = {"kind": "dxmi", "task": task.name, "policy": dxmi.sampling_policy.state_dict(), "mdp": c.mdp.state_dict(),
                 "teacher": task.teacher_state(teacher), "data": task.data_state()}
        if c.value is not None:
            state["value"] = c.value.state_dict()
        if dxmi.evaluation_energy is not None:
            state["energy"] = dxmi.evaluation_energy.state_dict()
        return state

    evaluate_fn = evaluate_dxmi if task.has_scores() else None
    result = fit(trainer, run, t.loop, evaluate_fn, model_state, resume=from_checkpoint, progress=progress if ctx.main else False,
                 select_metric=task.select_metric)
    ctx.barrier()
    if ctx.main:  # the selected model's samples; heatmaps of the final state, still in memory
        selected = run.load_model()
        best = copy.deepcopy(dxmi.sampling_policy)
        best.load_state_dict(selected["policy"])
        samples = task.draw(_policy_draw(best, ctx.device, mdp=c.mdp), task.output_samples, config.seed + 1, ctx.device)
        title = f"{t.horizon}-step samples of the selected model (step {selected['step']})"
        task.save_outputs(run.path, samples, title, task.cost_to_go(c.value, dxmi.evaluation_energy))
    return result


# ---------------------------------------------------------------- finished runs


def open_run(path: str | Path, need_model: bool = True) -> tuple[RunDir, ExperimentConfig, dict[str, Any]]:
    """A run folder, its config and its model.pt (``{}`` when ``need_model`` is False and none exists);
    every unreadable file is a one-line error naming it."""
    run = RunDir.open(path)
    config = from_yaml(run.config_yaml, str(run.path / "config.yaml"))
    if not need_model and not run.model_path.is_file():
        return run, config, {}
    state = run.load_model()
    if state.get("kind") not in ("teacher", "dxmi"):
        raise CorruptFileError(f"{run.model_path}: not a diffrl model file (no kind)")
    return run, config, state


def settings_of(path: str | Path, *sections: str) -> list[str]:
    """A run's config ``sections`` (e.g. "data") as dotted overrides, to train on what a teacher was trained on."""
    config = open_run(path, need_model=False)[1]
    out = []
    for section in sections:
        for key, value in vars(getattr(config, section)).items():
            if is_dataclass(value):
                raise ValueError(f"settings_of copies flat sections; {section}.{key} is a section of its own")
            out.append(f"{section}.{key}={'null' if value is None else value}")
    return out


def _policy_draw(policy: GaussianStepPolicy, device: torch.device, cost_to_go=None, guidance: float = 0.0, mdp: ChainMDP | None = None):
    """draw(batch, generator) -> final samples of ``policy``, value-guided with strength ``guidance``;
    chains start from ``mdp``'s start distribution when it has one (else N(0, I))."""
    if mdp is not None and mdp.start is not None:
        if guidance:
            raise ValueError("value guidance starts its chains from N(0, I); this run has a start distribution of its own")

        def draw(b: int, g: torch.Generator) -> Tensor:
            with torch.no_grad():
                return rollout(policy, mdp.reset(b, g, device), policy.horizon, g)[-1]

        return draw
    if guidance:
        return lambda b, g: value_guided_sample(policy, cost_to_go, b, guidance, g, device)[-1]
    return lambda b, g: policy.sample(b, generator=g, device=device)[-1]


@dataclass
class Run:
    """Everything a finished run holds, rebuilt from its folder (``from_run``).

    policy: the sampler to use (the selected or last DxMI sampler, its EMA where kept; a teacher
    run's own strided chain). schedule: a teacher run's chain; with "ddim" draws are deterministic
    DDIM (eta = 0) over the steps of ``policy``, its strided chain. teacher: the DDPM the run
    started from (or trained). task: the data splits (``task.split("test")``, model units) and
    what maps samples back. For DxMI runs also the MDP, its reward (the raw energy), the agent,
    its value, and ``energy``: the energy to evaluate with (its weight average where kept).
    """

    path: Path
    config: ExperimentConfig
    task: Task
    kind: str
    teacher: DDPM
    policy: GaussianStepPolicy
    step: int | None = None
    mdp: ChainMDP | None = None
    reward: RewardModel | None = None
    agent: Agent | None = None
    value: nn.Module | None = None
    energy: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    schedule: str = "strided"

    @property
    def cost_to_go(self):
        """V(x, t) for t = 0..T with V(., T) = E: what value guidance follows (None for a teacher)."""
        return self.task.cost_to_go(self.value, self.energy) if self.kind == "dxmi" else None

    def draw(self, guidance: float = 0.0):
        """draw(batch, generator) -> final samples in model units, value-guided with strength ``guidance``."""
        if guidance < 0 or not np.isfinite(guidance):
            raise ValueError(f"guidance strength must be a finite number >= 0, got {guidance}")
        if guidance and self.cost_to_go is None:
            raise ValueError(f"{self.path} is a {self.kind} run without a value: value guidance needs a DxMI run with one")
        if self.schedule == "ddim":
            chain = self.teacher.schedule(self.policy.horizon, "strided")
            return lambda b, g: ddim_sample(self.teacher.eps_model, chain, b, self.task.event_shape, g, self.device)[-1]
        return _policy_draw(self.policy, self.device, self.cost_to_go, guidance, self.mdp)

    def sample(self, n: int, seed: int = 0, guidance: float = 0.0) -> Tensor:
        """n final samples (n, *event_shape) in model units (``task.to_output`` maps them back)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return self.task.draw(self.draw(guidance), n, seed, self.device)


def from_run(path: str | Path, which: str = "best", steps: int | None = None, schedule: str = "strided",
             ctx: Dist | None = None) -> Run:
    """A finished (or running) run rebuilt on the CPU: ``which`` = "best" (model.pt, selected on
    validation) or "last" (the latest checkpoint). A teacher run samples with ``steps`` of its
    ``schedule`` chain (default: all of them): strided (ancestral), var or ddim (deterministic,
    eta = 0, over the strided steps)."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be best or last, got {which!r}")
    run_dir, config, state = open_run(path)
    ctx = ctx or Dist(0, 1, torch.device("cpu"))
    task = make_task(config, ctx=ctx)
    task.load_data_state(state["data"])
    teacher = task.teacher_from_state(state["teacher"])
    if state["kind"] == "teacher":
        if which != "best":
            raise ValueError(f"{run_dir.path} is a teacher run: it keeps one model, --which last applies to DxMI runs")
        teacher.eps_model.load_state_dict(state["eps_model"])
        kind = "strided" if schedule == "ddim" else schedule
        policy = teacher.step_policy(steps or teacher.num_steps, task.event_shape, kind=kind)  # the teacher's chain: last sigma 1e-3
        return Run(run_dir.path, config, task, "teacher", teacher, policy.to(ctx.device), device=ctx.device, schedule=schedule)
    if steps is not None and steps != config.train.horizon:
        raise ValueError(f"{run_dir.path} is a DxMI sampler trained for T = {config.train.horizon} steps; it cannot sample with {steps}")
    with torch.random.fork_rng(devices=[]):  # building the networks must not move the caller's RNG
        c = compose(config, task, teacher, ctx.device)
    if which == "last":
        dxmi = _dxmi(config, c, task.batches(1, 0, ctx.device) if c.reward.learnable else None)
        checkpoint = run_dir.load_checkpoint()
        dxmi.load_training_state(checkpoint["trainer"])
        policy, energy, step = dxmi.sampling_policy, dxmi.evaluation_energy, checkpoint["step"]
    else:
        c.policy.load_state_dict(state["policy"])
        c.mdp.load_state_dict(state["mdp"])
        if c.value is not None and "value" in state:
            c.value.load_state_dict(state["value"])
        energy = c.reward.energy_network
        if "energy" in state:
            energy = copy.deepcopy(energy)
            energy.load_state_dict(state["energy"])
        policy, step = c.policy, state.get("step")
    return Run(run_dir.path, config, task, "dxmi", teacher, policy, step, c.mdp, c.reward, c.agent, c.value, energy, ctx.device)


def sample(path: str | Path, n: int, steps: int | None = None, seed: int = 0, which: str = "best",
           schedule: str = "strided", guidance: float = 0.0) -> np.ndarray:
    """n samples of a run as the user gets them (points: (n, D) data units; images: uint8 (n, H, W, C))."""
    run = from_run(path, which, steps, schedule)
    return run.task.to_output(run.sample(n, seed, guidance))


def evaluate(path: str | Path, n: int | None = None, steps: int | None = None, seed: int = 0, which: str = "best",
             schedule: str = "strided", guidance: float = 0.0, split: str = "test", data: str | None = None,
             ctx: Dist | None = None) -> dict[str, Any]:
    """Scores of n samples (default: as many as the split holds) of a run on its test split (or
    ``split="val"``, to choose settings such as ``guidance`` without touching the test data);
    ``data``: score point runs against another array of the same D."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    if n is not None and n < 2:
        raise ValueError(f"n must be >= 2 samples, got {n}")
    if data is not None:
        run_dir, config, _ = open_run(path)
        if config.task != "points":
            raise ValueError("--data applies to point-data runs; image runs are scored on their own splits")
        config.data.name = data
        run = from_run(path, which, steps, schedule, ctx)
        state = run_dir.load_model()
        run.task = make_task(config, ctx=ctx)
        run.task.load_data_state(state["data"])
    else:
        run = from_run(path, which, steps, schedule, ctx)
    if not run.task.has_scores():
        raise ValueError(f"{run.path}: no feature network scores {run.config.data.name!r} (image.features=none); set image.fid_weights for FID")
    n = n or run.task.split(split).shape[0]
    with autocast(run.config, run.device):
        scores, _ = run.task.evaluate(run.draw(guidance), n, seed + 1, split, run.energy if run.kind == "dxmi" else None, run.device)
    return {"run": str(path), "kind": run.kind, "which": which if run.kind == "dxmi" else "best", "steps": run.policy.horizon,
            "n": n, "guidance": guidance, "split": split, **scores}

