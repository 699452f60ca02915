"""FID with torchmetrics on torch-fidelity's Inception features (or any feature network), over ranks.

The metric keeps its reference (real) statistics across resets. Rank 0 holds the training images'
statistics (cached on disk) and the other ranks zeros; samples are split across ranks, and
``compute()`` sums the statistics over ranks, so the result is the FID of all samples together.
torchmetrics and torch-fidelity are imported only when a metric is built.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Dist, rank_seed
from .image_data import to_uint8

__all__ = ["fid_name", "build_fid", "load_reference_stats", "sample_fid", "SmallFeatures", "INCEPTION_TAG"]

INCEPTION_TAG = "inception-2015-12-05-6726825d"
"""The tag of torch-fidelity's downloaded Inception v3 (FID's standard feature network)."""


def fid_name(n: int) -> str:
    """Metric names carry their sample count: fid10k, fid50k, fid64."""
    return f"fid{n // 1000}k" if n % 1000 == 0 else f"fid{n}"


class SmallFeatures(nn.Module):
    """A fixed random CNN (always the same weights) as a cheap FID feature network for tests and smoke
    runs: uint8 (B, 3, H, W) -> (B, 32). Its FIDs are comparable only with each other."""

    num_features = 32
    tag = "smoke-features-v1"

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float() / 127.5 - 1)


def build_fid(weights: str | Path | None = None, feature: nn.Module | None = None) -> tuple[Any, str]:
    """The FID metric (reference statistics kept across resets) and a tag naming its feature network
    (for cache keys).

    feature: a module uint8 (B, C, H, W) -> (B, num_features) with a ``num_features`` attribute (tag:
    its ``tag`` attribute, else its class name). Otherwise torch-fidelity's Inception v3 from the file
    ``weights`` (tag: a hash of the file), or downloaded. A missing file or a failed download raises
    FileNotFoundError; a file that is not a state dict of tensors or does not fit Inception, ValueError.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature is not None:
        if weights is not None:
            raise ValueError("give FID weights or a feature network, not both")
        return FrechetInceptionDistance(feature=feature, reset_real_features=False), getattr(feature, "tag", type(feature).__name__)
    path = None
    tag = INCEPTION_TAG
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"FID weights {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"FID weights {path}: not a PyTorch state dict ({type(e).__name__}: {_first_line(e)})") from e
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise ValueError(f"FID weights {path}: expected a state dict of tensors")
        tag = "inception-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric = FrechetInceptionDistance(feature=2048, reset_real_features=False, antialias=False,
                                              feature_extractor_weights_path=None if path is None else str(path))
    except RuntimeError as e:  # load_state_dict: missing keys or size mismatches
        detail = "; ".join(line.strip()[:200] for line in str(e).splitlines()[1:3])
        raise ValueError(f"FID weights {path} do not fit torch-fidelity's Inception v3 (2048 features): {detail}") from e
    except OSError as e:  # URLError and friends: no internet
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        raise FileNotFoundError(f"could not download the FID Inception weights ({_first_line(e)}); on a machine with "
                                f"internet fetch {URL_INCEPTION_V3} and pass the file as the weights") from e
    return metric, tag


def _first_line(e: Exception) -> str:
    lines = str(e).splitlines()
    return lines[0] if lines else ""


def load_reference_stats(metric: Any, images: Tensor, cache: Path, batch: int, ctx: Dist) -> None:
    """Rank 0 sets the metric's reference statistics of ``images`` (N, C, H, W) uint8: read from
    ``cache``, or computed in batches of ``batch`` on ``ctx.device`` and written there atomically.
    The other ranks keep zeros, so the sum over ranks at ``compute()`` is exact. The metric must
    already be on ``ctx.device``."""
    if not ctx.main:
        return
    cache = Path(cache)
    if cache.is_file():
        stats = load_checkpoint(cache, ctx.device)
    else:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch):
                metric.update(images[i : i + batch].to(ctx.device), real=True)
        stats = {"sum": metric.real_features_sum, "cov_sum": metric.real_features_cov_sum, "n": metric.real_features_num_samples}
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint({k: v.cpu() for k, v in stats.items()}, cache)
    metric.real_features_sum = stats["sum"].to(ctx.device)
    metric.real_features_cov_sum = stats["cov_sum"].to(ctx.device)
    metric.real_features_num_samples = stats["n"].to(ctx.device)


def sample_fid(
    draw: Callable[[int, torch.Generator], Tensor],
    n: int,
    metric: Any,
    batch: int,
    ctx: Dist,
    seed: int,
    energy: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, float | None, Tensor]:
    """FID of n samples against the metric's reference statistics, split across ranks.

    draw(b, generator) -> b images (b, C, H, W) in [-1, 1] on ``ctx.device``; the generator is seeded
    with ``rank_seed(seed, rank, 2)`` on every call, so every evaluation sees the same noise.
    energy: x (b, C, H, W) -> (b,), or None. Returns the FID (the same on every rank), the samples'
    mean energy over all ranks (None without ``energy``) and this rank's first <= 64 samples (CPU, float).
    The metric's sample statistics are reset afterwards.
    """
    if n < 2 * ctx.world:
        raise ValueError(f"FID needs at least 2 samples per process, got {n} for {ctx.world} process(es)")
    n_local = n // ctx.world + (ctx.rank < n % ctx.world)
    g = torch.Generator(device=ctx.device).manual_seed(rank_seed(seed, ctx.rank, 2))
    energy_sum, grid = torch.zeros((), device=ctx.device), []
    for i in range(0, n_local, batch):
        b = min(batch, n_local - i)
        x = draw(b, g).detach().float()
        with torch.no_grad():
            if energy is not None:
                energy_sum += energy(x).float().sum()
            metric.update(to_uint8(x), real=False)
        if sum(len(c) for c in grid) < 64:
            grid.append(x[:64].cpu())
    fid = float(metric.compute())  # sums the feature statistics over ranks
    metric.reset()  # the samples' statistics only (reset_real_features=False)
    mean_energy = None
    if energy is not None:
        total = ctx.mean_(torch.stack([energy_sum, torch.tensor(float(n_local), device=ctx.device)]))
        mean_energy = float(total[0] / total[1])
    return fid, mean_energy, torch.cat(grid)[:64]
