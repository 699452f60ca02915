"""Builds and runs point-cloud (N-D) experiments from an ExperimentConfig: the four jobs of the CLI.

This module is the face of the library: it wires core pieces, the DxDP agent and run folders
together. Nothing in the core imports it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .agents.dxdp import DxDP, DxDPConfig
from .config import ExperimentConfig, TrainConfig, from_yaml, to_yaml
from .data import TOY_DATASETS, BatchSampler, Normalizer, load_array, toy_data
from .ddpm import DDPM
from .dxmi import DxMI
from .loop import LoopConfig, fit
from .mdp import ChainMDP
from .metrics import energy_auc, mmd_rbf, sliced_wasserstein
from .nets import AtTime, TimeMLP
from .plots import plot_heatmaps, plot_samples
from .policy import GaussianStepPolicy
from .rewards import EnergyReward
from .run import RunDir
from .sampling import value_guided_sample

__all__ = ["PointData", "load_point_data", "pretrain", "train", "sample", "evaluate"]

_MMD_POINTS = 2000


@dataclass
class PointData:
    """Splits in the data's own units (train, val, test: (N, D)), the normaliser fitted on train,
    and uniform outliers (n_eval, D) for the energy AUC."""

    train: Tensor
    val: Tensor
    test: Tensor
    normalizer: Normalizer
    outliers: Tensor

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def load_point_data(config: ExperimentConfig) -> PointData:
    """Toy sets: three independent seeded draws. A .npy array: a seeded shuffle split into test,
    val (each ``n_eval``, at most a fifth of the rows) and train (the rest)."""
    cfg, seed = config.data, config.seed
    if cfg.name in TOY_DATASETS:
        train = toy_data(cfg.name, cfg.n_train, seed)
        val = toy_data(cfg.name, cfg.n_eval, seed + 10_000)
        test = toy_data(cfg.name, cfg.n_eval, seed + 20_000)
    elif cfg.name.endswith(".npy"):
        array = load_array(cfg.name)
        n_eval = min(cfg.n_eval, array.shape[0] // 5)
        if n_eval < 2:
            raise ValueError(f"{cfg.name}: {array.shape[0]} rows are too few to hold out validation and test splits")
        perm = torch.randperm(array.shape[0], generator=torch.Generator().manual_seed(seed))
        test, val, train = array[perm[:n_eval]], array[perm[n_eval : 2 * n_eval]], array[perm[2 * n_eval :]]
    else:
        raise ValueError(f"unknown data {cfg.name!r}: give a toy set ({', '.join(sorted(TOY_DATASETS))}) or a .npy path")
    g = torch.Generator().manual_seed(seed + 30_000)
    if cfg.outlier_box is not None:
        low, high = torch.full((train.shape[1],), -cfg.outlier_box), torch.full((train.shape[1],), cfg.outlier_box)
    else:
        low, high = train.min(0).values, train.max(0).values
        low, high = low - 0.05 * (high - low), high + 0.05 * (high - low)
    outliers = low + (high - low) * torch.rand(test.shape[0], train.shape[1], generator=g)
    return PointData(train, val, test, Normalizer.fit(train, cfg.normalize), outliers)


def _mlp(config: ExperimentConfig, dim: int, out_dim: int, activation: str = "silu") -> TimeMLP:
    n = config.net
    return TimeMLP(dim, out_dim, hidden=n.hidden, depth=n.depth, time_dim=n.time_dim, activation=activation)


def _setup(config: ExperimentConfig) -> torch.device:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {config.device!r} requested but CUDA is not available")
    return torch.device(config.device)


def _check_dim(data: PointData, dim: int, where: str) -> None:
    if data.dim != dim:
        raise ValueError(f"the data have D = {data.dim} dimensions but {where} was trained on D = {dim}")


# ---------------------------------------------------------------- evaluation


def evaluate_samples(samples: Tensor, reference: Tensor, energy: nn.Module | None, data: PointData) -> dict[str, float]:
    """SW-2 and MMD of samples vs reference (both data units); energy AUC of reference vs outliers."""
    n = min(samples.shape[0], reference.shape[0])
    out = {
        "sw": sliced_wasserstein(samples[:n], reference[:n]),
        "mmd": mmd_rbf(data.normalizer.encode(samples[:_MMD_POINTS]), data.normalizer.encode(reference[:_MMD_POINTS])),
    }
    if energy is not None:
        device = next(energy.parameters()).device
        with torch.no_grad():
            e_ref = energy(data.normalizer.encode(reference).to(device))
            e_out = energy(data.normalizer.encode(data.outliers).to(device))
        out["auc"] = energy_auc(e_ref, e_out)
    return out


def _draw(
    policy: GaussianStepPolicy, n: int, seed: int, normalizer: Normalizer, device: torch.device,
    models: DxMIModels | None = None, guidance: float = 0.0,
) -> Tensor:
    """n samples in data units from a fixed generator (the same noise at every evaluation), with
    value guidance of strength ``guidance`` along ``models.cost_to_go`` when it is > 0."""
    g = torch.Generator(device=device).manual_seed(seed)

    def chunk(b: int) -> Tensor:
        if guidance:
            return value_guided_sample(policy, models.cost_to_go, b, guidance, g, device)[-1]
        return policy.sample(b, generator=g, device=device)[-1]

    return normalizer.decode(torch.cat([chunk(min(10_000, n - i)) for i in range(0, n, 10_000)])).cpu()


# ---------------------------------------------------------------- teacher


class TeacherTrainer:
    """DDPM pretraining with Adam and a cosine learning-rate decay."""

    def __init__(self, ddpm: DDPM, data: BatchSampler, lr: float, steps: int) -> None:
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
        return {
            "ddpm": self.ddpm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data_rng": self.data.generator.get_state(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.ddpm.load_state_dict(state["ddpm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.generator.set_state(state["data_rng"])


def build_teacher(config: ExperimentConfig, dim: int) -> DDPM:
    return DDPM(_mlp(config, dim, dim), num_steps=config.pretrain.num_timesteps)


def pretrain(config: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a DDPM teacher; model.pt holds the eps model, the normaliser and D."""
    device = _setup(config)
    data = load_point_data(config)
    run = RunDir.open(out) if resume else RunDir.create(out, to_yaml(config))
    if resume:
        config = from_yaml(run.config_yaml)
    ddpm = build_teacher(config, data.dim).to(device)
    trainer = TeacherTrainer(ddpm, BatchSampler(data.normalizer.encode(data.train).to(device), config.pretrain.batch_size, config.seed), config.pretrain.lr, config.pretrain.steps)
    eval_horizon = min(config.pretrain.eval_horizon, config.pretrain.num_timesteps)

    def evaluate_teacher() -> dict[str, float]:
        policy = ddpm.step_policy(eval_horizon, (data.dim,), kind="strided")
        return evaluate_samples(_draw(policy, config.data.n_eval, config.seed, data.normalizer, device), data.val, None, data)

    def model_state() -> dict[str, Any]:
        return {"kind": "teacher", "eps_model": ddpm.eps_model.state_dict(), "normalizer": data.normalizer.state_dict(), "dim": data.dim}

    p = config.pretrain
    loop = LoopConfig(p.steps, log_every=100, eval_every=max(p.steps // 4, 1), checkpoint_every=max(p.steps // 4, 1))
    result = fit(trainer, run, loop, evaluate_teacher, model_state, resume=resume, progress=progress)
    _finish(run, ddpm.step_policy(eval_horizon, (data.dim,), kind="strided"), None, data, config, device)
    return result


# ---------------------------------------------------------------- DxMI


@dataclass
class DxMIModels:
    policy: GaussianStepPolicy
    value: TimeMLP
    energy: nn.Module
    mdp: ChainMDP

    def cost_to_go(self, x: Tensor, t: int) -> Tensor:
        """V(x, t) for states x (B, D) at step t in 1..T, with V(x, T) = E(x): what value guidance follows."""
        if t == self.policy.horizon:
            return self.energy(x)
        return self.value(x, torch.full((x.shape[0],), t, device=x.device))


def build_dxmi_models(config: ExperimentConfig, dim: int, teacher: dict[str, Any] | None) -> DxMIModels:
    """The T-step sampler (from the teacher's eps model, or the same network freshly initialised),
    the time-dependent value V(x, t) and the energy (its own MLP, or V(., T))."""
    t = config.train
    if teacher is not None and teacher["dim"] != dim:
        raise ValueError(f"the teacher was trained on D = {teacher['dim']} but the data have D = {dim}")
    ddpm = build_teacher(config, dim)
    if teacher is not None:
        ddpm.eps_model.load_state_dict(teacher["eps_model"])
    policy = ddpm.step_policy(t.horizon, (dim,), kind=t.schedule, last_sigma=t.last_sigma, fix_last=t.fix_last)
    energy_net = _mlp(config, dim, 1, config.net.energy_activation) if t.separate_energy else None  # the reward before the agent's value
    value = _mlp(config, dim, 1)
    energy = AtTime(energy_net, 0) if t.separate_energy else AtTime(value, t.horizon)
    shared = None if t.separate_energy else torch.optim.Adam(value.parameters(), lr=t.lr_value)
    reward = EnergyReward(energy, lr=t.lr_energy, gamma=t.gamma, optimizer=shared)
    mdp = ChainMDP(reward, (dim,), policy.sigma.detach(), tau_velocity=t.tau_velocity, avr_decay=t.avr_decay)
    return DxMIModels(policy, value, energy, mdp)


def dxdp_config(t: TrainConfig) -> DxDPConfig:
    """The DxDP options of a training config."""
    return DxDPConfig(
        tau_entropy=t.tau_entropy, lr_sampler=t.lr_sampler, lr_sigma=t.lr_sigma, lr_value=t.lr_value,
        value_target=t.value_target, time_cost_scale=t.time_cost_scale, sampler_grad_clip=t.sampler_grad_clip,
        target_update=t.target_update, sampler_batch=t.sampler_batch,
    )


def lr_schedulers(t: TrainConfig, agent: DxDP) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """One scheduler per distinct optimiser of the agent and its reward for ``t.lr_decay``."""
    if t.lr_decay == "none":
        return []
    optimizers = (agent.policy_optimizer, agent.value_optimizer, getattr(agent.mdp.reward, "optimizer", None))
    distinct = {id(o): o for o in optimizers if o is not None}.values()  # a shared value/energy has one optimiser
    return [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t.steps) for o in distinct]


def _load_teacher(path: str | None, data: PointData) -> dict[str, Any] | None:
    if path is None:
        return None
    state = RunDir.open(path).load_model()
    if state.get("kind") != "teacher":
        raise ValueError(f"{path} is not a teacher run (model.pt kind = {state.get('kind')!r})")
    _check_dim(data, state["dim"], f"the teacher at {path}")
    return state


def train(config: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """DxMI from a teacher run (config.train.teacher) or from scratch; model.pt keeps the best
    validation SW. The reported numbers come from ``evaluate`` on the test split."""
    if resume:
        config = from_yaml(RunDir.open(out).config_yaml)
    device = _setup(config)
    data = load_point_data(config)
    teacher = _load_teacher(config.train.teacher, data)
    run = RunDir.open(out) if resume else RunDir.create(out, to_yaml(config))
    m = build_dxmi_models(config, data.dim, teacher)
    for module in (m.policy, m.value, m.mdp):
        module.to(device)
    t = config.train
    shared_optimizer = None if t.separate_energy else m.mdp.reward.optimizer
    agent = DxDP(m.policy, m.value, m.mdp, dxdp_config(t), value_optimizer=shared_optimizer)
    batches = BatchSampler(data.normalizer.encode(data.train).to(device), t.batch_size, config.seed)
    dxmi = DxMI(
        agent, m.mdp, batches, ema_decay=t.ema_decay, energy_ema_decay=t.energy_ema_decay,
        lr_schedulers=lr_schedulers(t, agent),
    )

    def evaluate_dxmi() -> dict[str, float]:
        samples = _draw(dxmi.sampling_policy, config.data.n_eval, config.seed, data.normalizer, device)
        metrics = evaluate_samples(samples, data.val, dxmi.evaluation_energy, data)
        metrics.update({f"sigma_{i}": float(s) for i, s in enumerate(m.policy.sigma.detach())})
        return metrics

    def model_state() -> dict[str, Any]:
        state = {
            "kind": "dxmi",
            "policy": dxmi.sampling_policy.state_dict(),
            "value": m.value.state_dict(),
            "mdp": m.mdp.state_dict(),
            "normalizer": data.normalizer.state_dict(),
            "dim": data.dim,
        }
        if dxmi.ema_energy is not None:
            state["ema_energy"] = dxmi.ema_energy.model.state_dict()
        return state

    loop = LoopConfig(t.steps, t.log_every, t.eval_every, t.checkpoint_every, select_metric="sw")
    result = fit(dxmi, run, loop, evaluate_dxmi, model_state, resume=resume, progress=progress)
    _finish(run, restore(run).policy, restore(run, "last"), data, config, device)
    return result


# ---------------------------------------------------------------- using finished runs


def restore(run: RunDir, which: str = "best") -> DxMIModels:
    """A run's DxMI models on the CPU: "best" (model.pt, the best validation SW) or "last" (the
    final training state in checkpoint.pt). Where the run kept EMA copies, ``policy`` and
    ``energy`` are those (``mdp.reward`` keeps the raw energy)."""
    config = from_yaml(run.config_yaml)
    state = run.load_model()
    if state["kind"] != "dxmi":
        raise ValueError(f"{run.path} is a {state['kind']} run, not a DxMI run")
    if which == "last":
        trainer = run.load_checkpoint()["trainer"]
        policy = trainer["ema_policy"]["model"] if "ema_policy" in trainer else trainer["agent"]["policy"]
        state = {**state, "policy": policy, "value": trainer["agent"]["value"], "mdp": trainer["mdp"]}
        state.pop("ema_energy", None)
        if "ema_energy" in trainer:
            state["ema_energy"] = trainer["ema_energy"]["model"]
    elif which != "best":
        raise ValueError(f"which must be best or last, got {which!r}")
    m = build_dxmi_models(config, state["dim"], None)
    m.policy.load_state_dict(state["policy"])
    m.value.load_state_dict(state["value"])
    m.mdp.load_state_dict(state["mdp"])
    if "ema_energy" in state:
        m.energy = copy.deepcopy(m.energy)
        m.energy.load_state_dict(state["ema_energy"])
    return m


def _sampler_of(
    run: RunDir, steps: int | None, schedule: str = "strided", which: str = "best"
) -> tuple[GaussianStepPolicy, DxMIModels | None, Normalizer, int, ExperimentConfig]:
    """The policy to sample a run with, its DxMI models (None for a teacher), normaliser, D and config."""
    config = from_yaml(run.config_yaml)
    state = run.load_model()
    normalizer = Normalizer.from_state_dict(state["normalizer"])
    if state["kind"] == "teacher":
        ddpm = build_teacher(config, state["dim"])
        ddpm.eps_model.load_state_dict(state["eps_model"])
        horizon = steps or config.pretrain.num_timesteps
        return ddpm.step_policy(horizon, (state["dim"],), kind=schedule), None, normalizer, state["dim"], config
    if steps is not None and steps != config.train.horizon:
        raise ValueError(f"{run.path} is a DxMI sampler trained for T = {config.train.horizon} steps; it cannot sample with {steps}")
    m = restore(run, which)
    return m.policy, m, normalizer, state["dim"], config


def _guided(models: DxMIModels | None, guidance: float, run: RunDir) -> float:
    """``guidance`` once checked: >= 0, and > 0 only for a DxMI run (a teacher has no value)."""
    if guidance < 0:
        raise ValueError(f"guidance strength must be >= 0, got {guidance}")
    if guidance and models is None:
        raise ValueError(f"{run.path} is a teacher run: value guidance needs a DxMI run's value")
    return guidance


def sample(
    run_path: str | Path, n: int, steps: int | None = None, seed: int = 0, which: str = "best",
    schedule: str = "strided", guidance: float = 0.0,
) -> np.ndarray:
    """n samples (n, D) in the data's own units from a DxMI run's model (``which``: "best", the
    model selected on validation SW, or "last", the final state; ``guidance``: value-guidance
    strength lambda, spec section 6, along the time-dependent V); a teacher run samples with
    ``steps`` of its own ``schedule`` chain (default: all of them)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    run = RunDir.open(run_path)
    policy, models, normalizer, _, _ = _sampler_of(run, steps, schedule, which)
    return _draw(policy, n, seed, normalizer, torch.device("cpu"), models, _guided(models, guidance, run)).numpy()


def evaluate(
    run_path: str | Path,
    n: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    data_path: str | None = None,
    schedule: str = "strided",
    which: str = "best",
    guidance: float = 0.0,
    split: str = "test",
) -> dict[str, Any]:
    """Metrics of a run's model on the test split (or ``split="val"``, for choosing settings such
    as ``guidance`` without touching the test data): SW, MMD and (DxMI runs) energy AUC. A teacher
    run is sampled with ``steps`` of its ``schedule`` chain (strided or var); a DxMI run's model is
    ``which`` = "best" (selected on validation SW) or "last" (the end of training), sampled with
    value guidance of strength ``guidance``."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    run = RunDir.open(run_path)
    policy, models, normalizer, dim, config = _sampler_of(run, steps, schedule, which)
    guidance = _guided(models, guidance, run)
    if data_path is not None:
        config.data.name = data_path
    data = load_point_data(config)
    _check_dim(data, dim, f"the model at {run_path}")
    data.normalizer = normalizer
    reference = data.test if split == "test" else data.val
    n = n or reference.shape[0]
    samples = _draw(policy, n, seed + 1, normalizer, torch.device("cpu"), models, guidance)
    energy = models.energy if models is not None else None
    return {
        "run": str(run_path), "steps": policy.horizon, "n": n, "guidance": guidance, "split": split,
        **evaluate_samples(samples, reference, energy, data),
    }


def _finish(run: RunDir, policy: GaussianStepPolicy, models: DxMIModels | None, data: PointData, config: ExperimentConfig, device) -> None:
    """samples.npy and samples.png of ``policy`` (the selected model); value_energy.png of ``models``
    (the final state: the selected checkpoint can predate the energy's convergence)."""
    policy = policy.to(device)
    samples = _draw(policy, config.data.n_eval, config.seed + 1, data.normalizer, device)
    np.save(run.path / "samples.npy", samples.numpy())
    if data.dim != 2:
        return
    plot_samples(samples, data.test, run.path / "samples.png", title=f"{policy.horizon}-step samples over the test data")
    if models is None:
        return
    box = float(data.outliers.abs().max())
    enc = data.normalizer.encode
    panels = {
        f"V(x, {t})": (lambda x, t=t: models.value(enc(x), torch.full((x.shape[0],), t)).cpu())
        for t in range(policy.horizon)
    }
    panels["E(x)"] = lambda x: models.energy(enc(x)).cpu()
    plot_heatmaps(panels, box, run.path / "value_energy.png")
