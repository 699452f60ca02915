"""Typed configuration: dataclasses, YAML presets in ``configs/`` and dotted overrides.

``load_config("8gaussians", ["train.tau_entropy=0.01"])`` -> ExperimentConfig. Unknown keys,
unknown presets and bad values fail here, before any work starts. The sections compose the
library's own option classes (``train.dxdp`` is ``DxDPConfig``, ``train.reinforce`` ``ReinforceConfig``,
``train.ppo`` ``PPOConfig``, ``train.loop`` ``LoopConfig``),
so every option of the agent and the loop is a dotted override and nothing is copied by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..agents.dxdp import DxDPConfig
from ..agents.ppo import PPOConfig
from ..agents.reinforce import ReinforceConfig
from ..loop import LoopConfig
from ..nets import ACTIVATIONS

__all__ = [
    "DataConfig", "NetConfig", "PretrainConfig", "TrainConfig", "ImageConfig", "AnomalyConfig", "ExperimentConfig", "TASKS",
    "load_config", "available_presets", "to_yaml", "from_yaml", "apply_resume_overrides", "resolve_task",
]

TASKS = ("points", "images", "anomaly")


@dataclass
class DataConfig:
    name: str = "8gaussians"
    """points: a toy set (8gaussians, 2spirals, checkerboard) or a .npy array (N, D). images: digits,
    cifar10, an image folder or a uint8 .npy / .npz array (N, H, W[, C])."""
    root: str = "data"
    """images: where CIFAR-10 is downloaded and FID reference statistics are cached."""
    n_train: int = 50_000
    n_eval: int = 10_000
    """Size of the validation split (model selection) and of the test split (reported numbers)."""
    normalize: str = "standardize"
    outlier_box: Optional[float] = 4.0
    """AUC outliers are uniform on [-box, box]^D in data units; None: the data's bounding box, 10% wider."""
    holdout: Optional[int] = None
    """task anomaly on digits: the class (0-9) held out of training and scored as the anomaly."""


@dataclass
class NetConfig:
    hidden: int = 128
    depth: int = 3
    time_dim: int = 64
    energy_activation: str = "relu"
    """Hidden non-linearity of the separate energy MLP (relu or silu; the eps model and value use silu).
    A SiLU energy stays nearly radial on 8 Gaussians (AUC 0.84); ReLU learns the modes (docs/results.md)."""


@dataclass
class PretrainConfig:
    steps: int = 8000
    batch_size: int = 512
    lr: float = 1e-3
    num_timesteps: int = 1000
    eval_horizon: int = 100
    """Steps of the teacher's own chain used for evaluation during training."""


def _dxdp_defaults() -> DxDPConfig:
    """DxDP's options as the point-data runs were tuned (docs/results.md); presets override them."""
    return DxDPConfig(lr_sampler=1e-5, lr_sigma=1e-3)


def _reinforce_defaults() -> ReinforceConfig:
    """REINFORCE's options for DxMI from a pretrained teacher: DxDP's fine-tuning rates. Measured with
    examples/custom_agent.py (the same estimator, 8 Gaussians, learned energy): sampler rates of 1e-4
    and above oscillate, 1e-5 is the largest that stays down. The class defaults (3e-4 / 1e-2) were
    measured with a fixed reward."""
    return ReinforceConfig(lr_sampler=1e-5, lr_sigma=1e-3)


def _ppo_defaults() -> PPOConfig:
    """PPO's options for DxMI from a pretrained teacher: DxDP's fine-tuning rates, as for REINFORCE
    (not tuned for PPO in DxMI)."""
    return PPOConfig(lr_sampler=1e-5, lr_sigma=1e-3)


def _loop_defaults() -> LoopConfig:
    return LoopConfig(steps=4000, log_every=100, eval_every=500, checkpoint_every=500)


@dataclass
class TrainConfig:
    horizon: int = 5
    schedule: str = "var"
    teacher: Optional[str] = None
    """Run folder of a pretrained teacher (images also: a diffusers folder or a hub id); None trains
    from scratch (same sampler, random weights; point data only)."""
    agent: str = "dxdp"
    """The RL algorithm: dxdp, reinforce, ppo (each reads its section below), or MODULE:FACTORY with
    FACTORY(policy, mdp, config) -> Agent."""
    reward: str = "energy"
    """The reward: energy (a learnable EBM: DxMI), or MODULE:FACTORY with FACTORY(event_shape, config) -> RewardModel."""
    tau_entropy: float = 0.1
    """The objective's entropy weight (tau1: J = E[sum_t r_t] + tau_entropy sum_t log sigma_t), the same
    for every agent: it lives on the ChainMDP (diffrl.mdp)."""
    tau_velocity: float = 0.1
    """The velocity cost's weight (tau2)."""
    tau_anchor: float = 0.0
    """0: none (the paper). > 0: the weight of a running cost a_t that keeps each step's mean near the
    teacher's T-step chain, the sampler DxMI starts from (diffrl.mdp.TeacherAnchor; its scale is that
    chain's sigma_t, a fixed tiny last sigma replaced by the one before it)."""
    agent_options: Dict[str, Any] = field(default_factory=dict)
    """Options of a MODULE:FACTORY agent that reads them (the TorchRL and Tianshou agents apply them to
    their settings dataclass, e.g. train.agent_options.lr_sampler=1e-5); dxdp, reinforce and ppo
    read their own sections instead."""
    gamma: float = 1.0
    lr_energy: float = 1e-3
    separate_energy: bool = True
    """Point data. True: an energy MLP of its own is the boundary V(x, T) = E(x). False: E(x) = V(x, T)
    shares the value network (the paper's 2D setting; unstable here, see docs/results.md). Image runs
    always share one network (spec section 6)."""
    shared_optimizer: bool = True
    """When the value is the energy's network: one Adam (at dxdp.lr_value) steps it for both the energy
    step and the value steps, as the reference does; False: two Adam states (energy at lr_energy)."""
    avr_decay: Optional[float] = 0.99
    fix_last: bool = False
    last_sigma: float = 0.05
    ema_decay: Optional[float] = None
    """Sample and evaluate with an exponential moving average of the sampler's weights (None: the raw sampler)."""
    energy_ema_decay: Optional[float] = 0.999
    """Evaluate (AUC, E heatmaps, guidance, model.pt) with an exponential moving average of the energy's
    weights; training always uses the raw energy. None: the raw energy. The game makes the raw energy
    oscillate; its average over about 1000 iterations is the better density model (8 Gaussians: AUC
    0.868-0.883 -> 0.891-0.894, docs/results.md)."""
    lr_decay: str = "none"
    """none: constant learning rates; cosine: every rate anneals to 0 over loop.steps."""
    batch_size: int = 512
    """Data points and chains per iteration (global: split across processes). On 8 Gaussians 512 (vs
    128) takes the noise out of the sampler's gradient, which otherwise widens the modes
    (docs/results.md, "Second round")."""
    dxdp: DxDPConfig = field(default_factory=_dxdp_defaults)
    """DxDP's options (diffrl.agents.DxDPConfig): learning rates, clips, value target."""
    reinforce: ReinforceConfig = field(default_factory=_reinforce_defaults)
    """REINFORCE's options (diffrl.agents.ReinforceConfig), used with agent=reinforce: learning rates,
    baseline, clips. Its critic (baseline=value) is an MLP of ``net``'s sizes (diffrl.app.pipeline.pg_critic)."""
    ppo: PPOConfig = field(default_factory=_ppo_defaults)
    """PPO's options (diffrl.agents.PPOConfig), used with agent=ppo: learning rates, clip, epochs,
    minibatch_size, gae_lambda, baseline, clips."""
    loop: LoopConfig = field(default_factory=_loop_defaults)
    """The training loop (diffrl.loop.LoopConfig): steps and the logging, evaluation and checkpoint intervals."""


@dataclass
class ImageConfig:
    """Image runs: data.name is digits, an image folder or a uint8 .npy / .npz array (see diffrl.image_experiment).

    The teacher is a diffusers UNet2DModel; energy and value are one EnergyResNet (spec section 6).
    """

    unet_channels: list[int] = field(default_factory=lambda: [32, 64])
    """UNet width per resolution level (pretrain only; a loaded teacher brings its own)."""
    unet_layers_per_block: int = 2
    ebm_width: int = 32
    ebm_mults: list[int] = field(default_factory=lambda: [1, 2])
    hflip: bool = False
    """Random horizontal flips of training images (off for digits)."""
    image_size: Optional[int] = None
    """Image folders: resize and centre-crop every image to this square size."""
    channels: int = 3
    """Image folders: 1 (grey) or 3 (RGB)."""
    eval_samples: int = 1000
    """Generated images per validation evaluation (FD for model selection)."""
    features: str = "auto"
    """Feature network of FD: digits (the project's classifier), inception (FID; weights from
    fid_weights or torch-fidelity's download), small (a fixed random CNN, for smoke tests), none
    (no scores: keep the last model), auto (digits for digits, inception for cifar10 or with
    fid_weights, else none)."""
    fid_weights: Optional[str] = None
    """torch-fidelity Inception weights file (weights-inception-2015-12-05-6726825d.pth) for offline machines."""
    fid_ref_images: Optional[int] = None
    """Training images in the FID reference statistics (None: all)."""
    fid_batch: int = 500
    """Images per sampling / feature batch in FID evaluations."""

    def validate(self) -> None:
        checks = [
            (len(self.unet_channels) >= 1 and min(self.unet_channels) >= 1, "image.unet_channels must be positive widths"),
            (self.unet_layers_per_block >= 1, "image.unet_layers_per_block must be >= 1"),
            (self.ebm_width >= 1 and len(self.ebm_mults) >= 1 and min(self.ebm_mults) >= 1, "image.ebm_width and image.ebm_mults must be positive"),
            (self.channels in (1, 3), f"image.channels must be 1 or 3, got {self.channels}"),
            (self.image_size is None or self.image_size >= 1, "image.image_size must be >= 1"),
            (self.eval_samples >= 2, "image.eval_samples must be >= 2"),
            (self.features in ("auto", "digits", "inception", "small", "none"), f"image.features must be auto, digits, inception, small or none, got {self.features!r}"),
            (self.fid_batch >= 1, "image.fid_batch must be >= 1"),
            (self.fid_ref_images is None or self.fid_ref_images >= 2, "image.fid_ref_images must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class AnomalyConfig:
    """task anomaly (diffrl.app.tasks.anomaly): the autoencoder energy, its pretraining, the chain's
    start x_0 = decode(encode(x) + start_noise * eps), and the Langevin baseline (train.agent=langevin)."""

    latent: int = 16
    ae_hidden: int = 256
    ae_depth: int = 2
    """Hidden layers of the encoder and of the decoder."""
    ae_activation: str = "silu"
    temperature: float = 1.0
    """E(x) = mean_d (x - x_rec)^2 / temperature."""
    ae_steps: int = 2000
    """Autoencoder pretraining steps (cached under data.root/anomaly_ae; 0: a random energy)."""
    ae_lr: float = 1.0e-3
    ae_batch: int = 128
    start_noise: float = 0.5
    """Std of the latent perturbation of the start distribution."""
    sigma: float = 0.1
    """Initial sigma_t of every step of the DxMI sampler (mean x + MLP(x, t))."""
    langevin_step: float = 0.01
    langevin_noise: Optional[float] = None
    """Noise std of a Langevin step; None: sqrt(2 langevin_step) (exact unadjusted Langevin)."""
    replay: int = 0
    """Langevin baseline: capacity of a replay buffer of negatives (0: every chain starts afresh)."""
    replay_reinit: float = 0.05

    def validate(self) -> None:
        checks = [
            (min(self.latent, self.ae_hidden, self.ae_depth, self.ae_batch) >= 1, "anomaly.latent, ae_hidden, ae_depth and ae_batch must be >= 1"),
            (self.ae_activation in ACTIVATIONS, f"anomaly.ae_activation must be one of {', '.join(ACTIVATIONS)}, got {self.ae_activation!r}"),
            (self.temperature > 0, f"anomaly.temperature must be > 0, got {self.temperature}"),
            (self.ae_steps >= 0 and self.ae_lr >= 0, "anomaly.ae_steps and anomaly.ae_lr must be >= 0"),
            (self.start_noise >= 0, f"anomaly.start_noise must be >= 0, got {self.start_noise}"),
            (self.sigma > 0 and self.langevin_step > 0, "anomaly.sigma and anomaly.langevin_step must be > 0"),
            (self.langevin_noise is None or self.langevin_noise > 0, f"anomaly.langevin_noise must be > 0 or null, got {self.langevin_noise}"),
            (self.replay >= 0 and 0 <= self.replay_reinit <= 1, "anomaly.replay must be >= 0 and anomaly.replay_reinit in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    task: Optional[str] = None
    """points or images; None: images for digits, cifar10 and image files or folders, points otherwise.
    Resolved when the config is loaded and recorded in the run's config.yaml."""
    seed: int = 0
    device: str = "cpu"
    """cpu, cuda or auto (cuda when available). Under torchrun each process takes its local GPU."""
    amp: str = "none"
    """Autocast of DxMI steps and sampling on GPUs: none, bf16 or fp16 (no loss scaling: prefer bf16)."""
    threads: Optional[int] = None
    """torch CPU threads; null: the task's default (points 1, images all cores; diffrl.app.tasks.DEFAULT_THREADS)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        for key, value in _numbers(self):
            if not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value}")
        t, d = self.train, self.data
        checks = [
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.net.time_dim >= 2, f"net.time_dim must be >= 2, got {self.net.time_dim}"),
            (d.outlier_box is None or d.outlier_box > 0, f"data.outlier_box must be > 0 or null, got {d.outlier_box}"),
            (self.pretrain.num_timesteps >= 1 and self.pretrain.eval_horizon >= 1, "pretrain.num_timesteps and pretrain.eval_horizon must be >= 1"),
            (t.horizon <= self.pretrain.num_timesteps or t.teacher is not None,
             f"train.horizon {t.horizon} exceeds the {self.pretrain.num_timesteps} steps of the teacher trained from scratch"),
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.amp in ("none", "bf16", "fp16"), f"amp must be none, bf16 or fp16, got {self.amp!r}"),
            (t.horizon >= 1, f"train.horizon (T) must be >= 1, got {t.horizon}"),
            (t.tau_velocity >= 0, f"train.tau_velocity must be >= 0, got {t.tau_velocity}"),
            (t.tau_entropy >= 0, f"train.tau_entropy must be >= 0, got {t.tau_entropy}"),
            (t.tau_anchor >= 0, f"train.tau_anchor must be >= 0, got {t.tau_anchor}"),
            (t.gamma >= 0, f"train.gamma must be >= 0, got {t.gamma}"),
            (t.last_sigma > 0, f"train.last_sigma must be > 0, got {t.last_sigma}"),
            (self.pretrain.steps >= 0, "pretrain.steps must be >= 0"),
            (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
            (self.pretrain.batch_size >= 1, f"pretrain.batch_size must be >= 1, got {self.pretrain.batch_size}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1 or null, got {self.threads}"),
            (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"), f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}"),
            (t.schedule in ("var", "strided"), f"train.schedule must be var or strided, got {t.schedule!r}"),
            (t.lr_decay in ("none", "cosine"), f"train.lr_decay must be none or cosine, got {t.lr_decay!r}"),
            *(
                (decay is None or 0 <= decay < 1, f"train.{name} must be in [0, 1) or null, got {decay}")
                for name, decay in (("ema_decay", t.ema_decay), ("energy_ema_decay", t.energy_ema_decay))
            ),
            (d.n_train >= 2, f"data.n_train must be >= 2, got {d.n_train}"),
            (d.n_eval >= 10, f"data.n_eval must be >= 10 (metrics on fewer points say nothing), got {d.n_eval}"),
            (self.net.hidden >= 1 and self.net.depth >= 1, "net.hidden and net.depth must be >= 1"),
            (self.net.energy_activation in ACTIVATIONS, f"net.energy_activation must be one of {', '.join(ACTIVATIONS)}, got {self.net.energy_activation!r}"),
            (t.lr_energy >= 0, f"train.lr_energy must be >= 0, got {t.lr_energy}"),
            (self.pretrain.lr >= 0, f"pretrain.lr must be >= 0, got {self.pretrain.lr}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.image.validate()
        self.anomaly.validate()
        if d.holdout is not None and (self.task != "anomaly" or d.name != "digits" or not 0 <= d.holdout <= 9):
            raise ValueError(f"data.holdout is a digit class 0-9 held out of task anomaly on digits, got {d.holdout} (task {self.task}, data {d.name})")


def _numbers(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every float field of a config dataclass, nested sections included."""
    out = []
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            out += _numbers(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            out.append((f"{prefix}{f.name}", value))
    return out


def available_presets() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("diffrl.configs").iterdir() if p.name.endswith(".yaml"))


MOVED = {
    **{f"train.{k}": f"train.dxdp.{k}" for k in (
        "lr_sampler", "lr_sigma", "lr_value", "value_target", "time_cost_scale",
        "sampler_grad_clip", "value_grad_clip", "sampler_batch", "target_update")},
    **{f"train.{k}": f"train.loop.{k}" for k in ("steps", "log_every", "eval_every", "checkpoint_every")},
    "train.dxdp.tau_entropy": "train.tau_entropy",
}
"""Keys of older run folders that moved (old config.yaml files still load): diffrl 0.1's flat DxDP and
loop options went into sections of train; DxDP's tau_entropy became the objective's, train.tau_entropy."""
AGENT_SECTIONS = ("dxdp", "reinforce", "ppo")


def _migrate(layer: DictConfig) -> DictConfig:
    """An old-layout YAML layer with its MOVED keys put where they live now. A tau_entropy in an agent
    section is the objective's only for the run's own agent (train.agent, dxdp by default); the other
    sections' copies never took effect and are dropped."""
    train = layer.get("train") if isinstance(layer, DictConfig) else None
    if not isinstance(train, DictConfig):
        return layer
    own = train.get("agent", "dxdp")
    for section in AGENT_SECTIONS:
        if isinstance(train.get(section), DictConfig) and "tau_entropy" in train[section]:
            value = train[section].pop("tau_entropy")
            if section == own:
                train["tau_entropy"] = value
    for old, new in MOVED.items():
        old_path, new_path = old.split(".")[1:], new.split(".")[1:]
        parent = train
        for key in old_path[:-1]:
            parent = parent.get(key) if isinstance(parent, DictConfig) else None
        if not isinstance(parent, DictConfig) or old_path[-1] not in parent:
            continue
        value = parent.pop(old_path[-1])
        target = train
        for key in new_path[:-1]:
            if key not in target:
                target[key] = {}
            target = target[key]
        target[new_path[-1]] = value
    return layer


def resolve_task(config: ExperimentConfig) -> None:
    """Fill ``config.task`` from the data when it is None (recorded in config.yaml from then on)."""
    if config.task is None:
        from ..image_data import is_image_data

        config.task = "images" if is_image_data(config.data.name) else "points"


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The defaults, then a preset (a name in configs/ or a YAML path), then dotted overrides."""
    layers = [OmegaConf.structured(ExperimentConfig)]
    if preset is not None:
        path = Path(preset)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise FileNotFoundError(f"preset file not found: {path}")
            text = path.read_text()
        elif preset in available_presets():
            text = resources.files("diffrl.configs").joinpath(f"{preset}.yaml").read_text()
        else:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
        layers.append(_migrate(_parse_yaml(text, str(preset))))
    if overrides:
        bad = [o for o in overrides if "=" not in o or o.startswith("=")]
        if bad:
            raise ValueError(f"overrides must look like key.sub=value, got {' '.join(bad)}")
        for o in overrides:
            key = o.split("=", 1)[0]
            if key in MOVED:
                raise ValueError(f"{key} is now {MOVED[key]}")
            if key in {f"train.{section}.tau_entropy" for section in AGENT_SECTIONS}:
                raise ValueError(f"{key} is now train.tau_entropy (the objective's entropy weight, the same for every agent)")
        layers.append(OmegaConf.from_dotlist(overrides))
    config = _build(layers)
    resolve_task(config)
    config.validate()
    return config


def _parse_yaml(text: str, where: str) -> DictConfig:
    try:
        layer = OmegaConf.create(text)
    except Exception as e:  # yaml.YAMLError and OmegaConf's errors: one line naming the file
        raise ValueError(f"{where}: not a valid YAML configuration ({str(e).splitlines()[0]})") from None
    if not isinstance(layer, DictConfig) or len(layer) == 0:
        raise ValueError(f"{where}: expected a mapping of config sections, got {'nothing' if isinstance(layer, DictConfig) else type(layer).__name__}")
    return layer


def _build(layers: list) -> ExperimentConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as e:
        raise ValueError(f"bad configuration: {str(e).splitlines()[0]}") from None


def to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml(text: str, where: str = "config.yaml") -> ExperimentConfig:
    """A run's config.yaml (old layouts migrated); a missing task is resolved from the data."""
    config = _build([OmegaConf.structured(ExperimentConfig), _migrate(_parse_yaml(text, where))])
    resolve_task(config)
    return config


RESUMABLE = ("train.loop.", "pretrain.steps", "threads", "device", "amp", "data.root", "train.teacher", "image.fid_weights", "image.fid_batch")
"""Overrides a resumed run accepts: a longer run, new intervals, and where its files or processes are."""


def apply_resume_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """``config`` (a run's saved one) with ``overrides`` applied, each of which must be RESUMABLE."""
    if not overrides:
        return config
    refused = [o for o in overrides if not o.split("=", 1)[0].startswith(RESUMABLE)]
    if refused:
        raise ValueError(
            f"--resume continues a run with its saved config; it cannot change {' '.join(o.split('=', 1)[0] for o in refused)} "
            f"(allowed: {', '.join(k.rstrip('.') + ('.*' if k.endswith('.') else '') for k in RESUMABLE)})"
        )
    merged = _build([OmegaConf.structured(config), OmegaConf.from_dotlist(overrides)])
    merged.validate()
    return merged
