"""PNG plots: samples of 2-D runs over the data, V(., t) / E heatmaps (the paper's Figure 3), and learning curves.
Each function saves its PNG and returns the (closed) matplotlib Figure, for inspection."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["plot_samples", "plot_heatmaps", "plot_learning_curves"]


def plot_samples(samples: Tensor, data: Tensor, path: str | Path, title: str = "") -> Figure:
    """Scatter of samples (N, 2) over data (M, 2), both in data units."""
    fig, ax = plt.subplots(figsize=(5, 5))
    data, samples = data.cpu().numpy(), samples.cpu().numpy()
    ax.scatter(data[:, 0], data[:, 1], s=1, alpha=0.3, c="tab:gray", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.3, c="tab:red", label="samples")
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.legend(loc="upper right", markerscale=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def plot_heatmaps(
    panels: dict[str, Callable[[Tensor], Tensor]],
    box: float,
    path: str | Path,
    resolution: int = 200,
    title: str = "",
) -> Figure:
    """One heatmap per panel: name -> f(points (N, 2) in data units) -> (N,), on [-box, box]^2, each
    with a colorbar labelled ``name``; ``title`` goes above all panels."""
    axis = torch.linspace(-box, box, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False)
    for ax, (name, fn) in zip(axes[0], panels.items()):
        with torch.no_grad():
            values = fn(grid).reshape(resolution, resolution)
        image = ax.imshow(values.cpu().numpy(), origin="lower", extent=(-box, box, -box, box), cmap="viridis")
        fig.colorbar(image, ax=ax, label=name, fraction=0.046, pad=0.04)
        ax.set_title(name)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def plot_learning_curves(
    curves: dict[str, list[tuple[list[float], list[float]]]],
    path: str | Path,
    ylabel: str,
    references: dict[str, float] | None = None,
    log_y: bool = True,
) -> Figure:
    """One colour per label, one line per run of it (label -> [(steps, values), ...]); dashed
    horizontal lines for reference values (label -> value)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, runs) in enumerate(curves.items()):
        for j, (steps, values) in enumerate(runs):
            ax.plot(steps, values, color=f"C{i}", alpha=0.8, marker=".", label=label if j == 0 else None)
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, color=f"C{len(curves) + i}", linestyle="--", label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
