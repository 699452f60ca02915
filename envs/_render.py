"""``render_mode="rgb_array"`` frames of chains: a scatter of points, a grid of images.

matplotlib and torchvision are imported only when a frame is drawn, so an env that never renders
never loads them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

RENDER_MODES = ["rgb_array"]
RENDER_FPS = 4
POINT_LIMIT = 4.0
"""Scatter axes span [-POINT_LIMIT, POINT_LIMIT] in both coordinates, fixed so frames line up in a
video: a default x_0 ~ N(0, I) lies inside with probability > 0.9999 per coordinate."""
FRAME_PIXELS = 256


def check_render_mode(render_mode: str | None, event_shape: tuple[int, ...]) -> None:
    """ValueError unless render_mode is None, or "rgb_array" for points (D,) or images (C, H, W), C in {1, 3}."""
    if render_mode is None:
        return
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be None or one of {RENDER_MODES}, got {render_mode!r}")
    if len(event_shape) != 1 and not (len(event_shape) == 3 and event_shape[0] in (1, 3)):
        raise ValueError(
            f"render_mode='rgb_array' draws points (D,) or images (C, H, W) with C = 1 or 3; event_shape is {event_shape}"
        )


def frame(x: Tensor, trajectory: bool = False) -> np.ndarray:
    """(FRAME_PIXELS, FRAME_PIXELS, 3) uint8 picture of N samples x (N, *event_shape) for points,
    a grid of them for images. Points (N, D): a scatter of the first two coordinates (D = 1: the
    coordinate against 0) on fixed axes; ``trajectory``: the rows are one chain's x_0..x_t, joined
    by a line, later steps darker. Images (N, C, H, W): [-1, 1] mapped to 0..255, outside clipped."""
    x = x.detach().cpu().float()
    return _scatter(x.numpy(), trajectory) if x.ndim == 2 else _grid(x)


def _scatter(points: np.ndarray, trajectory: bool) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xy = points[:, :2] if points.shape[1] >= 2 else np.concatenate([points, np.zeros_like(points)], 1)
    fig = Figure(figsize=(4, 4), dpi=FRAME_PIXELS // 4)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(-POINT_LIMIT, POINT_LIMIT)
    ax.set_ylim(-POINT_LIMIT, POINT_LIMIT)
    ax.set_axis_off()
    ax.axhline(0.0, color="0.85", lw=0.5)
    ax.axvline(0.0, color="0.85", lw=0.5)
    if trajectory:
        ax.plot(xy[:, 0], xy[:, 1], color="0.6", lw=1.0)
        ax.scatter(xy[:, 0], xy[:, 1], s=24, c=np.linspace(0.3, 1.0, len(xy)), cmap="Blues", vmin=0.0, vmax=1.0)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=12, color="tab:blue")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _grid(images: Tensor) -> np.ndarray:
    from torchvision.utils import make_grid

    grid = make_grid(images.clamp(-1, 1), nrow=math.ceil(math.sqrt(len(images))), padding=2, pad_value=-1.0)
    return ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy().copy()
