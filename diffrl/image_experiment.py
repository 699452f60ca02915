"""Builds and runs image experiments from an ExperimentConfig: the jobs of ``experiment`` (pretrain,
train, sample, evaluate) with a diffusers UNet teacher and one EnergyResNet as energy and value
(spec sections 6, 7). The face of the library: nothing in the core imports it.

Run folders follow ``RunDir``; image runs add

    RUN/teacher/       (pretrain) the teacher in the diffusers layout; ``train --teacher RUN`` loads it
    RUN/samples.png    a grid of the selected model's samples

Scores are FD, KID and class coverage on the project's digits classifier (``image_metrics``);
other image data train and sample, but have no feature network yet, so they keep the last
model instead of the best-FD one and ``evaluate`` refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .agents.dxdp import DxDP
from .config import ExperimentConfig, from_yaml, to_yaml
from .ddpm import DDPM
from .dxmi import DxMI
from .ebm import EnergyResNet, TimeIndependentValue
from .experiment import TeacherTrainer, dxdp_config, lr_schedulers
from .image_data import DIGITS, ImageBatches, ImageData, is_image_data, load_image_data, to_uint8
from .image_metrics import DigitsClassifier, digits_classifier, image_scores, save_grid
from .loop import LoopConfig, fit
from .mdp import ChainMDP
from .policy import GaussianStepPolicy
from .rewards import EnergyReward
from .run import RunDir
from .sampling import ddim_sample, value_guided_sample
from .unet import build_unet, check_image_shape, load_pretrained_ddpm, save_pretrained_ddpm, unet_from_config

__all__ = [
    "is_image_config", "is_image_run", "load_data", "load_teacher", "ImageDxMIModels", "build_image_dxmi",
    "pretrain", "train", "restore", "sample", "evaluate",
]

Draw = Callable[[int, torch.Generator], Tensor]
"""draw(batch, generator) -> final samples (batch, C, H, W) in [-1, 1]."""

_CHUNK = 500
_GRID = 100
BASELINES = ("naive", "ddim")


def is_image_config(config: ExperimentConfig) -> bool:
    return is_image_data(config.data.name)


def is_image_run(path: str | Path) -> bool:
    """True when ``path`` is a run folder whose config names image data."""
    config = Path(path) / "config.yaml"
    return config.is_file() and is_image_config(from_yaml(config.read_text()))


def load_data(config: ExperimentConfig) -> ImageData:
    return load_image_data(config.data.name, config.data.n_eval, config.image.image_size, config.image.channels)


def _classifier(config: ExperimentConfig) -> DigitsClassifier | None:
    """The feature network of FD / KID / coverage: the digits classifier, or None for other data."""
    return digits_classifier(0)[0] if config.data.name == DIGITS else None


def _setup(config: ExperimentConfig) -> torch.device:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {config.device!r} requested but CUDA is not available")
    return torch.device(config.device)


def _draw(draw: Draw, n: int, seed: int, device: torch.device) -> Tensor:
    """n final samples (n, C, H, W) on the CPU, in chunks, from a fixed generator (the same noise every call)."""
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.cat([draw(min(_CHUNK, n - i), g).cpu() for i in range(0, n, _CHUNK)])


def _policy_draw(policy: GaussianStepPolicy, device: torch.device, energy: torch.nn.Module | None = None, guidance: float = 0.0) -> Draw:
    if guidance:
        if energy is None:
            raise ValueError("value guidance needs an energy: only DxMI runs have one")
        return lambda b, g: value_guided_sample(policy, lambda x, t: energy(x), b, guidance, g, device)[-1]
    return lambda b, g: policy.sample(b, generator=g, device=device)[-1]


def _save_grid(images: Tensor, path: Path) -> None:
    save_grid(images[:_GRID], path, scale=max(1, 32 // images.shape[-1]))


# ---------------------------------------------------------------- teacher


def load_teacher(source: str | Path) -> DDPM:
    """A teacher from a ``pretrain`` run folder (its teacher/), a diffusers DDPM folder or a hub id."""
    path = Path(source)
    if (path / "teacher").is_dir():
        return load_pretrained_ddpm(path / "teacher")
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is a run folder without a teacher/ folder: has its pretraining finished?")
    return load_pretrained_ddpm(source)


def _teacher_state(ddpm: DDPM, shape: tuple[int, ...]) -> dict[str, Any]:
    """What rebuilds a teacher's architecture and chain: UNet config, betas and the image shape (plain data)."""
    betas = ddpm.betas
    return {
        "unet_config": ddpm.eps_model.unet_config(),
        "betas": [ddpm.num_steps, float(betas[0]), float(betas[-1])],
        "image_shape": list(shape),
    }


def _teacher_from_state(state: dict[str, Any]) -> DDPM:
    num_steps, beta_start, beta_end = state["betas"]
    return DDPM(unet_from_config(state["unet_config"]), num_steps=int(num_steps), beta_start=beta_start, beta_end=beta_end)


def pretrain(config: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a DDPM teacher (diffusers UNet, epsilon prediction, linear betas) on image data;
    writes RUN/teacher/ in the diffusers layout. During training the ``pretrain.eval_horizon``-step
    strided chain is scored on the validation split (logged; the last model is kept)."""
    if resume:
        config = from_yaml(RunDir.open(out).config_yaml)
    device = _setup(config)
    data = load_data(config)
    c, h, _ = data.shape
    image = config.image
    eps_model = build_unet(h, c, tuple(image.unet_channels), image.unet_layers_per_block)
    check_image_shape(eps_model, data.shape)
    run = RunDir.open(out) if resume else RunDir.create(out, to_yaml(config))
    ddpm = DDPM(eps_model, num_steps=config.pretrain.num_timesteps).to(device)
    p = config.pretrain
    batches = ImageBatches(data.train.to(device), p.batch_size, config.seed, image.hflip)
    trainer = TeacherTrainer(ddpm, batches, p.lr, p.steps)
    eval_horizon = min(p.eval_horizon, p.num_timesteps)
    classifier = _classifier(config)

    def evaluate_teacher() -> dict[str, float]:
        draw = _policy_draw(ddpm.step_policy(eval_horizon, data.shape, kind="strided"), device)
        return image_scores(_draw(draw, image.eval_samples, config.seed, device), data.val, classifier)

    def model_state() -> dict[str, Any]:
        return {"kind": "teacher", "eps_model": ddpm.eps_model.state_dict(), **_teacher_state(ddpm, data.shape)}

    every = max(p.steps // 4, 1)
    loop = LoopConfig(p.steps, log_every=min(100, every), eval_every=every, checkpoint_every=every)
    result = fit(trainer, run, loop, evaluate_teacher if classifier is not None else None, model_state, resume=resume, progress=progress)
    save_pretrained_ddpm(ddpm, run.path / "teacher")
    draw = _policy_draw(ddpm.step_policy(eval_horizon, data.shape, kind="strided"), device)
    _save_grid(_draw(draw, _GRID, config.seed + 1, device), run.path / "samples.png")
    return result


# ---------------------------------------------------------------- DxMI


@dataclass
class ImageDxMIModels:
    """The T-step sampler around the teacher's UNet, the energy E = V (one network) and the chain MDP."""

    policy: GaussianStepPolicy
    energy: EnergyResNet
    mdp: ChainMDP

    @property
    def value(self) -> TimeIndependentValue:
        return TimeIndependentValue(self.energy)


def build_image_dxmi(config: ExperimentConfig, teacher: DDPM, shape: tuple[int, int, int]) -> ImageDxMIModels:
    """Spec section 7's sampler (``train.schedule``, DDIM eta = 1 mean, trainable sigma, ``fix_last``)
    over the teacher's eps model (shared: the teacher is fine-tuned in place), and spec section 6's
    energy/value. The MDP's velocity scales start at the sampler's sigmas (AVR adapts them)."""
    t, image = config.train, config.image
    policy = teacher.step_policy(t.horizon, shape, kind=t.schedule, last_sigma=t.last_sigma, fix_last=t.fix_last)
    energy = EnergyResNet(shape[0], width=image.ebm_width, mults=tuple(image.ebm_mults))
    reward = EnergyReward(energy, lr=t.lr_energy, gamma=t.gamma)
    mdp = ChainMDP(reward, shape, policy.sigma.detach(), tau_velocity=t.tau_velocity, avr_decay=t.avr_decay)
    return ImageDxMIModels(policy, energy, mdp)


def train(config: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """DxMI from a teacher (``train.teacher``: a pretrain run, a diffusers folder or a hub id).

    DxDP trains the sampler with tau_entropy (tau1) and the MDP's tau_velocity (tau2); its value is
    the energy itself (``TimeIndependentValue``), with the fixed time cost ``train.value_target``.
    model.pt keeps the best validation FD (digits); ``evaluate`` gives the test numbers.
    """
    if resume:
        config = from_yaml(RunDir.open(out).config_yaml)
    t = config.train
    if t.teacher is None:
        raise ValueError("image DxMI fine-tunes a teacher: set train.teacher (--teacher: a pretrain run, a diffusers folder or a hub id)")
    device = _setup(config)
    teacher = load_teacher(t.teacher)
    data = load_data(config)
    check_image_shape(teacher.eps_model, data.shape, f"the data ({config.data.name})")
    run = RunDir.open(out) if resume else RunDir.create(out, to_yaml(config))
    m = build_image_dxmi(config, teacher, data.shape)
    for module in (m.policy, m.energy, m.mdp):
        module.to(device)
    agent = DxDP(m.policy, m.value, m.mdp, dxdp_config(t))
    batches = ImageBatches(data.train.to(device), t.batch_size, config.seed, config.image.hflip)
    dxmi = DxMI(
        agent, m.mdp, batches, ema_decay=t.ema_decay, energy_ema_decay=t.energy_ema_decay,
        lr_schedulers=lr_schedulers(t, agent),
    )
    classifier = _classifier(config)
    teacher_state = _teacher_state(teacher, data.shape)

    def evaluate_dxmi() -> dict[str, float]:
        samples = _draw(_policy_draw(dxmi.sampling_policy, device), config.image.eval_samples, config.seed, device)
        metrics = image_scores(samples, data.val, classifier)
        energy = dxmi.evaluation_energy
        with torch.no_grad():
            metrics["energy_data"] = float(energy(data.val.to(device)).mean())
            metrics["energy_samples"] = float(energy(samples[: _CHUNK].to(device)).mean())
        metrics.update({f"sigma_{i}": float(s) for i, s in enumerate(m.policy.sigma.detach())})
        return metrics

    def model_state() -> dict[str, Any]:
        return {
            "kind": "dxmi",
            "policy": dxmi.sampling_policy.state_dict(),
            "energy": dxmi.evaluation_energy.state_dict(),
            "mdp": m.mdp.state_dict(),
            **teacher_state,
        }

    loop = LoopConfig(t.steps, t.log_every, t.eval_every, t.checkpoint_every, select_metric="fd" if classifier is not None else None)
    result = fit(dxmi, run, loop, evaluate_dxmi if classifier is not None else None, model_state, resume=resume, progress=progress)
    best = restore(run).policy.to(device)
    _save_grid(_draw(_policy_draw(best, device), _GRID, config.seed + 1, device), run.path / "samples.png")
    return result


# ---------------------------------------------------------------- using finished runs


def restore(run: RunDir) -> ImageDxMIModels:
    """The selected DxMI models of a run (model.pt), on the CPU; the energy (= value) is its EMA
    copy where the run kept one."""
    config = from_yaml(run.config_yaml)
    state = run.load_model()
    if state["kind"] != "dxmi":
        raise ValueError(f"{run.path} is a {state['kind']} run, not a DxMI run")
    m = build_image_dxmi(config, _teacher_from_state(state), tuple(state["image_shape"]))
    m.policy.load_state_dict(state["policy"])
    m.mdp.load_state_dict(state["mdp"])
    m.energy.load_state_dict(state["energy"])  # after the MDP: its reward holds the raw energy, this one may be the EMA
    return m


def _sampler_of(run: RunDir, steps: int | None, guidance: float, baseline: str | None) -> tuple[Draw, int, ExperimentConfig]:
    """draw(batch, generator), the number of steps and the run's config. Teacher runs: their own
    ancestral chain with ``steps`` strided steps (default all), or a ``baseline`` T-step sampler:
    "naive" (spec section 7's VAR chain, DxMI's starting point) or "ddim" (eta = 0, strided)."""
    config = from_yaml(run.config_yaml)
    device = torch.device("cpu")
    state = run.load_model()
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    if state["kind"] == "teacher":
        if guidance:
            raise ValueError(f"{run.path} is a teacher run: value guidance needs a DxMI run's energy")
        ddpm = _teacher_from_state(state)
        ddpm.eps_model.load_state_dict(state["eps_model"])
        shape = tuple(state["image_shape"])
        horizon = steps or ddpm.num_steps
        if baseline == "ddim":
            schedule = ddpm.schedule(horizon, "strided")
            return (lambda b, g: ddim_sample(ddpm.eps_model, schedule, b, shape, g, device)[-1]), horizon, config
        kind = "var" if baseline == "naive" else "strided"
        return _policy_draw(ddpm.step_policy(horizon, shape, kind=kind, last_sigma=config.train.last_sigma), device), horizon, config
    if baseline is not None:
        raise ValueError(f"{run.path} is a DxMI run: baselines are sampled from its teacher run")
    if steps is not None and steps != config.train.horizon:
        raise ValueError(f"{run.path} is a DxMI sampler trained for T = {config.train.horizon} steps; it cannot sample with {steps}")
    m = restore(run)
    return _policy_draw(m.policy, device, m.energy, guidance), config.train.horizon, config


def sample(
    run_path: str | Path, n: int, steps: int | None = None, seed: int = 0, guidance: float = 0.0, grid: str | Path | None = None
) -> np.ndarray:
    """n samples of a run's selected model as uint8 images (n, H, W, C); ``guidance`` is the value
    guidance strength lambda (DxMI runs); ``grid`` also writes a PNG grid of the first 100."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    draw, _, _ = _sampler_of(RunDir.open(run_path), steps, guidance, None)
    images = _draw(draw, n, seed, torch.device("cpu"))
    if grid is not None:
        _save_grid(images, Path(grid))
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


def evaluate(
    run_path: str | Path,
    n: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    guidance: float = 0.0,
    baseline: str | None = None,
) -> dict[str, Any]:
    """Test-split FD, KID and class coverage of n samples (default: as many as test images) of a
    run's selected model, or of a ``baseline`` sampler from a teacher run (see ``_sampler_of``)."""
    run = RunDir.open(run_path)
    draw, horizon, config = _sampler_of(run, steps, guidance, baseline)
    classifier = _classifier(config)
    if classifier is None:
        raise ValueError(f"no feature network for {config.data.name!r}: FD / KID are implemented for digits only")
    data = load_data(config)
    n = n or data.test.shape[0]
    samples = _draw(draw, n, seed + 1, torch.device("cpu"))
    return {"run": str(run_path), "steps": horizon, "guidance": guidance, "baseline": baseline, **image_scores(samples, data.test, classifier)}
