"""Typed configuration: dataclasses, YAML presets in ``configs/`` and dotted overrides.

``load_config("8gaussians", ["train.tau_entropy=0.01"])`` -> ExperimentConfig. Unknown keys,
unknown presets and bad values fail here, before any work starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .nets import ACTIVATIONS

__all__ = ["DataConfig", "NetConfig", "PretrainConfig", "TrainConfig", "ImageConfig", "ExperimentConfig", "load_config", "available_presets", "to_yaml", "from_yaml"]


@dataclass
class DataConfig:
    name: str = "8gaussians"
    """A toy set (8gaussians, 2spirals, checkerboard) or the path of a .npy array (N, D)."""
    n_train: int = 50_000
    n_eval: int = 10_000
    """Size of the validation split (model selection) and of the test split (reported numbers)."""
    normalize: str = "standardize"
    outlier_box: Optional[float] = 4.0
    """AUC outliers are uniform on [-box, box]^D in data units; None: the data's bounding box, 10% wider."""


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


@dataclass
class TrainConfig:
    horizon: int = 5
    schedule: str = "var"
    teacher: Optional[str] = None
    """Run folder of a pretrained teacher; None trains from scratch (same sampler, random weights)."""
    tau_entropy: float = 0.1
    tau_velocity: float = 0.1
    gamma: float = 1.0
    lr_sampler: float = 1e-5
    lr_sigma: float = 1e-3
    lr_value: float = 1e-3
    lr_energy: float = 1e-3
    separate_energy: bool = True
    """True: an energy MLP of its own is the boundary V(x, T) = E(x). False: E(x) = V(x, T) shares the
    value network (the paper's 2D setting; unstable here, see docs/results.md)."""
    avr_decay: Optional[float] = 0.99
    fix_last: bool = False
    last_sigma: float = 0.05
    value_target: str = "running"
    time_cost_scale: float = 1.0
    sampler_grad_clip: Optional[float] = 0.1
    sampler_batch: Optional[int] = None
    """States per sampler step, drawn from the B * T of the batch's chains; None: B (the reference)."""
    target_update: Optional[float] = None
    ema_decay: Optional[float] = None
    """Sample and evaluate with an exponential moving average of the sampler's weights (None: the raw sampler)."""
    energy_ema_decay: Optional[float] = 0.999
    """Evaluate (AUC, E heatmaps, guidance, model.pt) with an exponential moving average of the energy's
    weights; training always uses the raw energy. None: the raw energy. The game makes the raw energy
    oscillate; its average over about 1000 iterations is the better density model (8 Gaussians: AUC
    0.868-0.883 -> 0.891-0.894, docs/results.md)."""
    lr_decay: str = "none"
    """none: constant learning rates; cosine: every rate anneals to 0 over train.steps."""
    steps: int = 4000
    batch_size: int = 512
    """Data points and chains per iteration. On 8 Gaussians 512 (vs 128) takes the noise out of the
    sampler's gradient, which otherwise widens the modes (docs/results.md, "Second round")."""
    log_every: int = 100
    eval_every: int = 500
    checkpoint_every: int = 500


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

    def validate(self) -> None:
        checks = [
            (len(self.unet_channels) >= 1 and min(self.unet_channels) >= 1, "image.unet_channels must be positive widths"),
            (self.unet_layers_per_block >= 1, "image.unet_layers_per_block must be >= 1"),
            (self.ebm_width >= 1 and len(self.ebm_mults) >= 1 and min(self.ebm_mults) >= 1, "image.ebm_width and image.ebm_mults must be positive"),
            (self.channels in (1, 3), f"image.channels must be 1 or 3, got {self.channels}"),
            (self.image_size is None or self.image_size >= 1, "image.image_size must be >= 1"),
            (self.eval_samples >= 2, "image.eval_samples must be >= 2"),
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
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        t, d = self.train, self.data
        checks = [
            (t.horizon >= 1, f"train.horizon (T) must be >= 1, got {t.horizon}"),
            (t.tau_entropy >= 0, f"train.tau_entropy must be >= 0, got {t.tau_entropy}"),
            (t.tau_velocity >= 0, f"train.tau_velocity must be >= 0, got {t.tau_velocity}"),
            (t.gamma >= 0, f"train.gamma must be >= 0, got {t.gamma}"),
            (t.last_sigma > 0, f"train.last_sigma must be > 0, got {t.last_sigma}"),
            (t.steps >= 0 and self.pretrain.steps >= 0, "steps must be >= 0"),
            (t.batch_size >= 1 and self.pretrain.batch_size >= 1, "batch sizes must be >= 1"),
            (t.schedule in ("var", "strided"), f"train.schedule must be var or strided, got {t.schedule!r}"),
            (t.lr_decay in ("none", "cosine"), f"train.lr_decay must be none or cosine, got {t.lr_decay!r}"),
            *(
                (decay is None or 0 <= decay < 1, f"train.{name} must be in [0, 1) or null, got {decay}")
                for name, decay in (("ema_decay", t.ema_decay), ("energy_ema_decay", t.energy_ema_decay))
            ),
            (d.n_train >= 2 and d.n_eval >= 2, "data.n_train and data.n_eval must be >= 2"),
            (self.net.hidden >= 1 and self.net.depth >= 1, "net.hidden and net.depth must be >= 1"),
            (self.net.energy_activation in ACTIVATIONS, f"net.energy_activation must be one of {', '.join(ACTIVATIONS)}, got {self.net.energy_activation!r}"),
            (min(t.lr_sampler, t.lr_sigma, t.lr_value, t.lr_energy, self.pretrain.lr) >= 0, "learning rates must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.image.validate()


def available_presets() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in resources.files("diffrl.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """The defaults, then a preset (a name in configs/ or a YAML path), then dotted overrides."""
    base = OmegaConf.structured(ExperimentConfig)
    layers = [base]
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
        layers.append(OmegaConf.create(text))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like key.sub=value, got {bad}")
        layers.append(OmegaConf.from_dotlist(overrides))
    try:
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as e:
        raise ValueError(f"bad configuration: {e}".splitlines()[0]) from None
    config: ExperimentConfig = OmegaConf.to_object(merged)
    config.validate()
    return config


def to_yaml(config: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml(text: str) -> ExperimentConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(text)))
