"""The tasks of the run pipeline: point data and images (``Task`` says what a task provides)."""
from __future__ import annotations

from ...distributed import Dist
from ..config import ExperimentConfig
from .base import CostToGo, Draw, Task

__all__ = ["Task", "CostToGo", "Draw", "make_task"]


def make_task(config: ExperimentConfig, ctx: Dist | None = None, load: bool = True) -> Task:
    """The task ``config.task`` names, with its data loaded (``load=False``: only its model builders)."""
    if config.task == "points":
        from .points import PointsTask

        return PointsTask(config, load=load)
    if config.task == "images":
        from .images import ImagesTask

        return ImagesTask(config, ctx=ctx, load=load)
    raise ValueError(f"unknown task {config.task!r}; expected points or images")
