"""Epsilon models for images: diffusers' ``UNet2DModel`` behind the ``eps_model(x, timesteps)``
interface of ``DDPM`` and ``DDIMMean``, and the diffusers folder layout of pretrained DDPMs.

A pretrained DDPM folder (the ``google/ddpm-cifar10-32`` layout)::

    FOLDER/config.json                             the UNet2DModel config
    FOLDER/diffusion_pytorch_model.safetensors     its weights (or .bin)
    FOLDER/scheduler_config.json                   linear betas: beta_start, beta_end, num_train_timesteps
    FOLDER/model_index.json                        (written, not needed) DDPMPipeline entry point

``DDPMPipeline.save_pretrained``'s layout (``FOLDER/unet/``, ``FOLDER/scheduler/``) loads too.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .ddpm import DDPM

__all__ = [
    "UNetEps",
    "build_unet",
    "ho_cifar10_unet",
    "unet_from_config",
    "HO_CIFAR10_CONFIG",
    "check_image_shape",
    "save_pretrained_ddpm",
    "load_pretrained_ddpm",
]

HO_CIFAR10_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
}
"""The Ho et al. CIFAR-10 UNet as diffusers writes it for ``google/ddpm-cifar10-32`` (35,746,307 parameters)."""


class UNetEps(nn.Module):
    """eps_theta(x (B, C, H, W), timesteps (B,) real in [0, N-1]) -> predicted noise (B, C, H, W).

    Timesteps reach the UNet as a float tensor: diffusers truncates a Python float timestep to an
    integer, which would silently move the VAR chain's fractional timesteps (616.73 -> 616).
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def downsamplings(self) -> int:
        """How many times the UNet halves the resolution: len(block_out_channels) - 1."""
        return len(self.unet.config.block_out_channels) - 1

    def unet_config(self) -> dict[str, Any]:
        """The UNet2DModel config as plain data (lists, not tuples; no private keys): fits a weights_only checkpoint."""
        return json.loads(json.dumps({k: v for k, v in self.unet.config.items() if not k.startswith("_")}))

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        t = torch.as_tensor(timesteps, device=x.device).float().expand(x.shape[0])
        return self.unet(x, t).sample


def check_image_shape(eps_model: UNetEps, shape: tuple[int, ...], what: str = "the data") -> None:
    """Raise ValueError unless images of ``shape`` (C, H, W) fit the UNet: C = its in_channels and
    H, W divisible by 2^downsamplings (otherwise its skip connections do not line up)."""
    if len(shape) != 3:
        raise ValueError(f"{what}: expected images of shape (C, H, W), got {tuple(shape)}")
    c, h, w = shape
    if c != eps_model.in_channels:
        raise ValueError(f"{what} have {c} channel(s) but the UNet (teacher) takes {eps_model.in_channels}")
    factor = 2**eps_model.downsamplings
    if h % factor or w % factor:
        raise ValueError(
            f"{what}: image size {h}x{w} cannot go through a UNet with {eps_model.downsamplings} downsamplings: "
            f"height and width must be divisible by 2^{eps_model.downsamplings} = {factor}"
        )


def build_unet(
    image_size: int,
    channels: int,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 2,
    attention: tuple[bool, ...] | None = None,
) -> UNetEps:
    """A UNet2DModel eps model for (channels, image_size, image_size) images.

    One resolution level per entry of ``block_out_channels`` (halving between levels);
    ``attention[i]`` adds self-attention at level i (default: none). GroupNorm uses
    gcd(block_out_channels) groups, at most 32.
    """
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    if levels < 1 or min(block_out_channels) < 1 or layers_per_block < 1:
        raise ValueError("block_out_channels must be positive widths, one per level, and layers_per_block >= 1")
    attention = attention or (False,) * levels
    if len(attention) != levels:
        raise ValueError(f"attention needs one flag per level ({levels}), got {len(attention)}")
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise ValueError(
            f"image size {image_size} cannot go through a UNet with {levels - 1} downsamplings: "
            f"it must be divisible by 2^{levels - 1} = {factor}"
        )
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        layers_per_block=layers_per_block,
        norm_num_groups=min(32, math.gcd(*block_out_channels)),
    )
    return UNetEps(unet)


def ho_cifar10_unet() -> UNetEps:
    """The Ho et al. CIFAR-10 UNet (35.7M parameters), randomly initialised."""
    from diffusers import UNet2DModel

    return UNetEps(UNet2DModel(**HO_CIFAR10_CONFIG))


def unet_from_config(config: dict[str, Any]) -> UNetEps:
    """A randomly initialised UNetEps from ``UNetEps.unet_config()``'s output."""
    from diffusers import UNet2DModel

    return UNetEps(UNet2DModel.from_config(config))


# ---------------------------------------------------------------- pretrained folders


def save_pretrained_ddpm(ddpm: DDPM, folder: str | Path) -> Path:
    """Write a DDPM with a UNetEps eps model in the diffusers layout of ``google/ddpm-cifar10-32``."""
    from diffusers import DDPMScheduler

    if not isinstance(ddpm.eps_model, UNetEps):
        raise TypeError(f"only a UNetEps eps model has a diffusers layout, got {type(ddpm.eps_model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ddpm.eps_model.unet.save_pretrained(folder)
    betas = ddpm.betas
    DDPMScheduler(
        num_train_timesteps=ddpm.num_steps, beta_start=float(betas[0]), beta_end=float(betas[-1]), beta_schedule="linear"
    ).save_config(folder)
    index = {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_pretrained_ddpm(source: str | Path) -> DDPM:
    """A DDPM teacher from a diffusers folder (see the module docstring) or a hub id such as
    ``google/ddpm-cifar10-32``. Needs linear betas and epsilon prediction.

    Raises FileNotFoundError naming ``source`` when it is neither a folder holding a UNet config
    nor a loadable hub id.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            root, unet_sub, scheduler_sub = str(path), None, None
        elif (path / "unet" / "config.json").is_file():
            root, unet_sub, scheduler_sub = str(path), "unet", "scheduler"
        else:
            raise FileNotFoundError(f"teacher folder {path} holds no diffusers UNet (config.json or unet/config.json)")
    elif _HUB_ID.fullmatch(str(source)):
        root, unet_sub, scheduler_sub = str(source), None, None
    else:
        raise FileNotFoundError(f"teacher folder not found: {source}")
    try:
        unet = UNet2DModel.from_pretrained(root, subfolder=unet_sub, low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.load_config(root, subfolder=scheduler_sub)
    except OSError as e:
        where = "folder" if path.is_dir() else "local folder, nor loadable from the Hugging Face hub"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(f"teacher not found: {source} is not a complete diffusers DDPM {where} ({reason})") from e
    num_steps = scheduler.get("num_train_timesteps", scheduler.get("timesteps"))  # old configs say "timesteps"
    if scheduler.get("beta_schedule", "linear") != "linear" or scheduler.get("trained_betas") is not None:
        raise ValueError(f"{source}: only linear beta schedules are supported, got {scheduler.get('beta_schedule')!r}")
    if scheduler.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"{source}: only epsilon prediction is supported, got {scheduler['prediction_type']!r}")
    return DDPM(UNetEps(unet), num_steps=int(num_steps), beta_start=float(scheduler["beta_start"]), beta_end=float(scheduler["beta_end"]))
