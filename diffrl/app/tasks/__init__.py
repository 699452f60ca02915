"""The tasks of the run pipeline: point data, images and anomaly detection (``Task`` says what a task provides)."""
from __future__ import annotations

from ...distributed import Dist
from ..config import ExperimentConfig
from .base import CostToGo, Draw, Task

__all__ = ["Task", "CostToGo", "Draw", "make_task", "DEFAULT_THREADS"]

DEFAULT_THREADS: dict[str, int | None] = {"points": 1, "images": None, "anomaly": 1}
"""torch threads per task when ``threads`` is null (None: torch's default, all cores). Measured on
a 2-core CPU (benchmarks/threads.py, docs/results/threads.json), seconds per DxMI iteration at 1 / 2
threads: points 0.064 / 0.050 alone but 0.085 / 0.120 next to another busy process; digits images
0.82 / 0.54 alone, 0.82 / 1.23 loaded. Point runs get one thread: small tensors gain little from a
second one and lose 1.4x when the cores are shared (and the 2-D tables were measured with one).
Image runs keep all cores: convolutions gain 1.5x alone. Override with threads=N."""


def make_task(config: ExperimentConfig, ctx: Dist | None = None, load: bool = True) -> Task:
    """The task ``config.task`` names, with its data loaded (``load=False``: only its model builders)."""
    if config.task == "points":
        from .points import PointsTask

        return PointsTask(config, load=load)
    if config.task == "images":
        from .images import ImagesTask

        return ImagesTask(config, ctx=ctx, load=load)
    if config.task == "anomaly":
        from .anomaly import AnomalyTask

        return AnomalyTask(config, load=load)
    raise ValueError(f"unknown task {config.task!r}; expected points, images or anomaly")
