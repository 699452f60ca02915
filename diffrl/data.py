"""Point-cloud data: seeded toy generators, user arrays, and the normalisation a run records.

Toy sets follow the paper's 2D setup where it has one (8 Gaussians: centres on a circle of
radius 4, std 0.5, all divided by 1.414). Samples are drawn and reported in these units; models
train on normalised data and ``Normalizer.decode`` maps samples back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["TOY_DATASETS", "EIGHT_GAUSSIANS_CENTRES", "toy_data", "load_array", "Normalizer", "BatchSampler"]


_ANGLES = torch.arange(8) * (2 * math.pi / 8)
_CIRCLE = 4.0 * torch.stack([torch.cos(_ANGLES), torch.sin(_ANGLES)], 1)
EIGHT_GAUSSIANS_CENTRES = _CIRCLE / 1.414
"""(8, 2) mode centres of 8gaussians in data units; each mode is isotropic with std 0.5 / 1.414."""


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    idx = torch.randint(0, 8, (n,), generator=g)
    return (_CIRCLE[idx] + 0.5 * torch.randn(n, 2, generator=g)) / 1.414


def _two_spirals(n: int, g: torch.Generator) -> Tensor:
    r = torch.sqrt(torch.rand(n, generator=g)) * 540 * (2 * math.pi) / 360
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    xy = torch.stack([-torch.cos(r) * r, torch.sin(r) * r], 1) * sign[:, None]
    return (xy + 0.5 * torch.randn(n, 2, generator=g)) / 3


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


# Issue 14's held-out shapes: sets nobody tuned the 2-D defaults on before (different scales, mode
# counts, weights and shapes). Fixed parameters; only the seed varies between splits.
_GMM4_CENTRES = torch.tensor([[-8.0, 3.0], [6.0, 7.0], [2.0, -9.0], [10.0, -3.0]])
_GMM4_WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1])
_GMM4_STDS = torch.tensor([[2.0, 0.5], [1.0, 1.0], [0.4, 1.5], [0.8, 0.3]])
_GMM4_ANGLES = torch.tensor([0.5, 0.0, -0.3, 1.2])


def _gmm4_aniso(n: int, g: torch.Generator) -> Tensor:
    """4 anisotropic Gaussians of unequal weight (0.4 / 0.3 / 0.2 / 0.1) at a scale of about 10."""
    idx = torch.multinomial(_GMM4_WEIGHTS, n, replacement=True, generator=g)
    z = torch.randn(n, 2, generator=g) * _GMM4_STDS[idx]
    c, s = torch.cos(_GMM4_ANGLES[idx]), torch.sin(_GMM4_ANGLES[idx])
    rotated = torch.stack([c * z[:, 0] - s * z[:, 1], s * z[:, 0] + c * z[:, 1]], 1)
    return _GMM4_CENTRES[idx] + rotated


def _rings(n: int, g: torch.Generator) -> Tensor:
    """Two concentric rings (radius 1 and 2.5, weights 2/7 and 5/7 as their lengths), radial std 0.08."""
    outer = torch.rand(n, generator=g) < 5 / 7
    radius = torch.where(outer, 2.5, 1.0) + 0.08 * torch.randn(n, generator=g)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


def _grid25(n: int, g: torch.Generator) -> Tensor:
    """25 equal isotropic Gaussians on a 5 x 5 grid (spacing 2, centres -4..4), std 0.2."""
    idx = torch.randint(0, 5, (n, 2), generator=g)
    return (idx.float() - 2) * 2 + 0.2 * torch.randn(n, 2, generator=g)


TOY_DATASETS = {
    "8gaussians": _eight_gaussians, "2spirals": _two_spirals, "checkerboard": _checkerboard,
    "gmm4aniso": _gmm4_aniso, "rings": _rings, "grid25": _grid25,
}


def toy_data(name: str, n: int, seed: int) -> Tensor:
    """n points (n, 2) float32 of a named toy set, reproducible from ``seed``."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose from {sorted(TOY_DATASETS)} or give a .npy path")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return TOY_DATASETS[name](n, torch.Generator().manual_seed(seed)).float()


def load_array(path: str | Path) -> Tensor:
    """A user ``.npy`` array of shape (N, D), checked: float32 tensor (N, D)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix != ".npy":
        raise ValueError(f"expected a .npy file of shape (N, D), got {path.name}")
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{path.name}: expected an array of shape (N, D) with N >= 2, got {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path.name}: expected numbers, got dtype {array.dtype}")
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    check_finite(data, path.name)
    return data


def check_finite(x: Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.flatten(1).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{what}: {int(bad.flatten(1).any(1).sum())} rows hold NaN or inf (first rows: {rows})")


@dataclass
class Normalizer:
    """x_model = (x_data - shift) / scale, per dimension; ``decode`` inverts it. shift, scale: (D,)."""

    shift: Tensor
    scale: Tensor

    @classmethod
    def fit(cls, data: Tensor, mode: str = "standardize") -> "Normalizer":
        """"standardize": per-dimension mean and std; "none": identity."""
        if mode == "standardize":
            scale = data.std(0)
            if bool((scale <= 0).any()):
                raise ValueError("a data dimension is constant: cannot standardise it")
            return cls(data.mean(0), scale)
        if mode == "none":
            return cls(torch.zeros(data.shape[1]), torch.ones(data.shape[1]))
        raise ValueError(f"unknown normalisation {mode!r}; expected standardize or none")

    def encode(self, x: Tensor) -> Tensor:
        return (x - self.shift.to(x.device)) / self.scale.to(x.device)

    def decode(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.device) + self.shift.to(x.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {"shift": self.shift, "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "Normalizer":
        return cls(state["shift"], state["scale"])


class BatchSampler:
    """Random minibatches (with replacement) of a tensor (N, ...) from its own seeded generator."""

    def __init__(self, data: Tensor, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self) -> Tensor:
        idx = torch.randint(0, self.data.shape[0], (self.batch_size,), generator=self.generator)
        return self.data[idx.to(self.data.device)]

    def __iter__(self) -> "BatchSampler":
        return self
