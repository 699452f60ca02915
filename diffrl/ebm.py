"""Image energies: an IGEBM-style ResNet without normalisation layers, and the image variant's
time-independent value (spec section 6: ``V(x, t) = E(x)``, one network for both).

Sign: E is a cost. Low energy = data-like; the reward of the RL view is -E(x_T).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["EnergyResNet", "TimeIndependentValue"]


class _ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))), with a 1x1 convolution on the skip path when the width changes."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.conv2(F.silu(self.conv1(F.silu(x))))


class EnergyResNet(nn.Module):
    """E(x (B, C, H, W)) -> (B,): a 3x3 stem, then per entry m of ``mults`` a stage of ``blocks``
    residual blocks of width ``width * m`` followed by 2x average pooling (not after the last
    stage), then SiLU, a spatial mean and a linear head.

    No normalisation layers (an energy must not depend on the rest of the batch). SiLU rather
    than ReLU: the sampler and value guidance differentiate E with respect to x. width=128,
    mults=(1, 2, 2) gives about 5.1M parameters (IGEBM's CIFAR size).
    """

    def __init__(self, in_channels: int, width: int = 128, mults: tuple[int, ...] = (1, 2, 2), blocks: int = 2) -> None:
        super().__init__()
        if in_channels < 1 or width < 1 or blocks < 1 or not mults or min(mults) < 1:
            raise ValueError("in_channels, width, blocks and every entry of mults must be positive")
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        layers: list[nn.Module] = []
        c = width
        for i, m in enumerate(mults):
            for _ in range(blocks):
                layers.append(_ResBlock(c, width * m))
                c = width * m
            if i < len(mults) - 1:
                layers.append(nn.AvgPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.body(self.stem(x)))
        return self.head(h.mean((2, 3))).squeeze(-1)


class TimeIndependentValue(nn.Module):
    """V(x (B, ...), t (B,)) = E(x) for every t: the value DxDP trains IS the energy (shared parameters)."""

    def __init__(self, energy: nn.Module) -> None:
        super().__init__()
        self.energy = energy

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.energy(x)
