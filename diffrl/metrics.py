"""Sample-quality and energy metrics (spec section 10)."""
from __future__ import annotations

import torch
from scipy.stats import rankdata
from torch import Tensor

__all__ = ["sliced_wasserstein", "roc_auc", "energy_auc", "mmd_rbf"]


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 1000, seed: int = 0) -> float:
    """SW-2: sqrt(mean over random unit directions of W2^2 between the 1-D projections).

    x, y: (N, D) with the same N (then each 1-D W2 is exact: sort and pair).
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be (N, D) with the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    px = torch.sort(x.double().cpu() @ directions, dim=0).values
    py = torch.sort(y.double().cpu() @ directions, dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


def roc_auc(scores_pos: Tensor, scores_neg: Tensor) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie): the area under the ROC curve (Mann-Whitney U / n_pos n_neg)."""
    ranks = rankdata(torch.cat([scores_pos, scores_neg]).double().cpu().numpy())  # ties get their average rank
    n_pos, n_neg = scores_pos.numel(), scores_neg.numel()
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def energy_auc(energy_data: Tensor, energy_outlier: Tensor) -> float:
    """AUC of -E separating data (positives) from outliers: 1 when every data point has lower energy."""
    return roc_auc(-energy_data, -energy_outlier)


def mmd_rbf(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)) -> float:
    """Biased squared MMD between x (N, D) and y (M, D) with a sum of RBF kernels exp(-|a-b|^2 / (2 h^2))."""
    x, y = x.double(), y.double()

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    return float(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())
