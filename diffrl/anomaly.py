"""Energy-based anomaly detection (paper section 5.3): an autoencoder energy, start distributions of
the chain other than N(0, I), the short-run Langevin sampler of contrastive divergence, and the
scoring protocol for feature maps.

Sign: E is a cost. Low energy = normal; an anomaly score is the energy itself.

    energy     E(x) = mean_d (x - decode(encode(x)))^2 / temperature          x (B, D) -> (B,)
    start      x_0 = decode(encode(x_data) + noise * eps)                      (the paper's pi(x_0))
    Langevin   x_{k+1} = x_k - step * grad E(x_k) + noise * eps                (noise = sqrt(2 step): exact ULA)
    detection  score(image) = max over locations of E(feature at location)    (N, C, H, W) -> (N,)
    localise   the (H, W) energy map bilinearly upsampled to the image size    (N, C, H, W) -> (N, H', W')
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mdp import ChainMDP
from .nets import ACTIVATIONS
from .optim import check_finite
from .policy import GaussianStepPolicy

__all__ = [
    "Autoencoder", "ReconstructionEnergy", "pretrain_autoencoder", "OnSphere", "AutoencoderStart", "ReplayStart",
    "LangevinDrift", "langevin_policy", "LangevinAgent", "energies", "energy_maps", "detection_scores",
    "localisation_maps", "auroc",
]


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """x (B, D) -> reconstruction (B, D) through a latent (B, latent): MLP encoder and decoder with
    ``depth`` hidden layers of ``hidden`` units each. ``sphere``: the decoder's output is projected
    onto the unit sphere (for L2-normalised features, as the paper does on MVTec-AD)."""

    def __init__(self, dim: int, latent: int = 16, hidden: int = 256, depth: int = 2, activation: str = "silu", sphere: bool = False) -> None:
        super().__init__()
        if min(dim, latent, hidden, depth) < 1:
            raise ValueError("dim, latent, hidden and depth must be positive")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        self.dim, self.latent, self.sphere = dim, latent, sphere
        self.encoder = _mlp([dim, *[hidden] * depth, latent], activation)
        self.decoder = _mlp([latent, *[hidden] * depth, dim], activation)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        out = self.decoder(z)
        return F.normalize(out, dim=-1) if self.sphere else out

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


class ReconstructionEnergy(nn.Module):
    """E(x) = mean_d (x - autoencoder(x))^2 / temperature, x (B, D) -> (B,); >= 0, low on normal data."""

    def __init__(self, autoencoder: Autoencoder, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.autoencoder, self.temperature = autoencoder, temperature

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.autoencoder(x)).pow(2).mean(-1) / self.temperature


def pretrain_autoencoder(autoencoder: Autoencoder, data: Tensor, steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Adam on mean_d (x - autoencoder(x))^2 over random batches of data (N, D), batches drawn from a
    generator seeded with ``seed``; returns the loss of every step."""
    if data.ndim != 2 or data.shape[1] != autoencoder.dim:
        raise ValueError(f"expected data (N, {autoencoder.dim}), got {tuple(data.shape)}")
    g = torch.Generator(device=data.device).manual_seed(seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = data[torch.randint(0, data.shape[0], (batch_size,), generator=g, device=data.device)]
        loss = (autoencoder(x) - x).pow(2).mean()
        check_finite(loss, "the autoencoder's reconstruction loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


class OnSphere(nn.Module):
    """A step mean (e.g. ``diffrl.nets.ResidualMean``) projected onto the unit sphere:
    m(x, t) = mean(x, t) / |mean(x, t)|, x (B, D), t (B,) long (the paper's constraint on MVTec features)."""

    def __init__(self, mean: nn.Module) -> None:
        super().__init__()
        self.mean = mean

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return F.normalize(self.mean(x, t), dim=-1)


class AutoencoderStart(nn.Module):
    """The start distribution x_0 = decode(encode(x) + noise * eps), x a uniformly drawn row of
    ``data`` (N, D), eps ~ N(0, I) in the latent; a frozen autoencoder (its weights are saved with
    the module, the data are not). ``forward(batch, generator, device) -> (batch, D)``: the
    ``ChainMDP`` start interface; draws the rows, then the noise, from ``generator``."""

    def __init__(self, autoencoder: Autoencoder, data: Tensor, noise: float) -> None:
        super().__init__()
        if data.ndim != 2 or data.shape[1] != autoencoder.dim or data.shape[0] < 1:
            raise ValueError(f"expected data (N, {autoencoder.dim}) with N >= 1, got {tuple(data.shape)}")
        if not noise >= 0:
            raise ValueError(f"the latent noise must be >= 0, got {noise}")
        self.autoencoder = autoencoder.requires_grad_(False)
        self.noise = noise
        self.register_buffer("data", data, persistent=False)

    @torch.no_grad()
    def forward(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        idx = torch.randint(0, self.data.shape[0], (batch,), generator=generator, device=self.data.device)
        z = self.autoencoder.encode(self.data[idx])
        z = z + self.noise * torch.randn(z.shape, generator=generator, device=z.device)
        return self.autoencoder.decode(z).to(device or self.data.device)


class ReplayStart(nn.Module):
    """A replay buffer in front of another start: each x_0 is a uniformly drawn stored sample, or with
    probability ``reinit`` (and always while the buffer is empty) a fresh draw of ``base``.
    ``push(x)`` stores final samples (B, *event_shape), overwriting the oldest beyond ``capacity``.
    The buffer is saved with the module (exact resume)."""

    def __init__(self, base: nn.Module, capacity: int, event_shape: tuple[int, ...], reinit: float = 0.05) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"the replay buffer's capacity must be >= 1, got {capacity}")
        if not 0 <= reinit <= 1:
            raise ValueError(f"the replay buffer's reinit probability must be in [0, 1], got {reinit}")
        self.base, self.capacity, self.reinit = base, capacity, reinit
        self.register_buffer("memory", torch.zeros(capacity, *event_shape))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def forward(self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
        fresh = self.base(batch, generator, device)
        filled = int(self.filled)
        if filled == 0:
            return fresh
        idx = torch.randint(0, filled, (batch,), generator=generator, device=fresh.device)
        keep = torch.rand(batch, generator=generator, device=fresh.device) >= self.reinit
        return torch.where(keep.view(-1, *[1] * (fresh.ndim - 1)), self.memory[idx.to(self.memory.device)].to(fresh.device), fresh)

    @torch.no_grad()
    def push(self, x: Tensor) -> None:
        n, kept = x.shape[0], x[-self.capacity :].to(self.memory.device)  # as if written one by one
        first = self.cursor + n - kept.shape[0]
        self.memory[(first + torch.arange(kept.shape[0], device=self.memory.device)) % self.capacity] = kept
        self.cursor.copy_((self.cursor + n) % self.capacity)
        self.filled.copy_((self.filled + n).clamp(max=self.capacity))


class LangevinDrift(nn.Module):
    """The mean of one unadjusted Langevin step, m(x, t) = x - step_size * grad_x E(x), x (B, ...), for
    any t. ``energy`` (x (B, ...) -> (B,)) may be set after construction (``bind``). No parameter
    gets a gradient; the result is detached."""

    def __init__(self, step_size: float, energy: nn.Module | None = None) -> None:
        super().__init__()
        if not step_size > 0:
            raise ValueError(f"the Langevin step size must be > 0, got {step_size}")
        self.step_size = step_size
        self.energy = energy

    def bind(self, energy: nn.Module) -> None:
        self.energy = energy

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if self.energy is None:
            raise ValueError("LangevinDrift has no energy: bind(energy) first")
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(x_req).sum(), x_req)
        return (x_req - self.step_size * grad).detach()


def langevin_policy(steps: int, step_size: float, event_shape: tuple[int, ...], noise: float | None = None,
                    energy: nn.Module | None = None) -> GaussianStepPolicy:
    """``steps`` Langevin steps as a step policy: x_{k+1} ~ N(x_k - step_size grad E(x_k), noise^2 I),
    noise = sqrt(2 step_size) by default (unadjusted Langevin at temperature 1)."""
    noise = math.sqrt(2 * step_size) if noise is None else noise
    if steps < 1 or not noise > 0:
        raise ValueError(f"Langevin needs steps >= 1 and noise > 0, got {steps} and {noise}")
    return GaussianStepPolicy(LangevinDrift(step_size, energy), torch.full((steps,), float(noise)), event_shape)


class LangevinAgent:
    """Contrastive divergence's sampler in the DxMI loop: ``act`` is a step of a Langevin policy on
    the MDP's own terminal cost (the learnable energy, bound here); ``update`` learns nothing and,
    when the MDP starts from a ``ReplayStart``, stores the chains' final samples in it. The loop's
    reward step on these negatives is then short-run-MCMC contrastive divergence."""

    def __init__(self, policy: GaussianStepPolicy, mdp: ChainMDP) -> None:
        if not isinstance(policy.mean_model, LangevinDrift):
            raise ValueError("the Langevin agent needs a Langevin policy (diffrl.anomaly.langevin_policy)")
        energy = mdp.reward.energy_network
        if energy is None:
            raise ValueError("the Langevin agent samples from a learnable energy: the reward has no energy_network")
        policy.mean_model.bind(energy)
        self.policy, self.mdp = policy, mdp

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        return self.policy(x, t, noise)

    def update(self, chain: Tensor) -> dict[str, Tensor]:
        if isinstance(self.mdp.start, ReplayStart):
            self.mdp.start.push(chain[-1])
        return {}

    def training_state(self) -> dict[str, Any]:
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        pass


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def energies(energy: nn.Module, x: Tensor, chunk: int = 4096) -> Tensor:
    """E of every row of x (N, D) -> (N,) on the CPU, ``chunk`` rows at a time on the energy's device."""
    device = next(energy.parameters(), torch.empty(0)).device
    return torch.cat([energy(x[i : i + chunk].to(device)).float().cpu() for i in range(0, x.shape[0], chunk)])


def energy_maps(energy: nn.Module, features: Tensor, chunk: int = 4096) -> Tensor:
    """Per-location energies of feature maps (N, C, H, W) -> (N, H, W): each C-vector is one sample."""
    if features.ndim != 4:
        raise ValueError(f"expected feature maps (N, C, H, W), got {tuple(features.shape)}")
    n, c, h, w = features.shape
    return energies(energy, features.permute(0, 2, 3, 1).reshape(-1, c), chunk).reshape(n, h, w)


def detection_scores(maps: Tensor) -> Tensor:
    """One anomaly score per image: the maximum of its energy map (N, H, W) -> (N,)."""
    return maps.flatten(1).max(1).values


def localisation_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Energy maps (N, H, W) bilinearly upsampled to ``size`` = (H', W') -> (N, H', W')
    (``align_corners=False``: pixel centres, as image resizing does)."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def auroc(scores_normal: Tensor | np.ndarray, scores_anomaly: Tensor | np.ndarray) -> float:
    """Area under the ROC curve of anomaly scores (higher = more anomalous), by scikit-learn:
    1 when every anomaly scores above every normal sample."""
    from sklearn.metrics import roc_auc_score

    normal, anomaly = (np.asarray(s, dtype=np.float64).ravel() for s in (scores_normal, scores_anomaly))
    if normal.size == 0 or anomaly.size == 0:
        raise ValueError("AUROC needs at least one normal and one anomalous score")
    if not (np.isfinite(normal).all() and np.isfinite(anomaly).all()):
        raise ValueError("anomaly scores hold NaN or inf")
    labels = np.r_[np.zeros(normal.size), np.ones(anomaly.size)]
    return float(roc_auc_score(labels, np.r_[normal, anomaly]))
