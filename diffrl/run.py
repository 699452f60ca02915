"""A run folder: resolved config, checkpoints, metrics.jsonl, TensorBoard events, samples and plots.

    RUN/config.yaml       the resolved configuration
    RUN/checkpoint.pt     the latest full training state (resume from here)
    RUN/model.pt          the selected model (best validation score, or the last one)
    RUN/metrics.jsonl     one JSON object per logged step
    RUN/tb/               TensorBoard events
    RUN/samples.npy       samples in the data's own units
    RUN/*.png             plots
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["RunDir"]


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = None

    @classmethod
    def create(cls, path: str | Path, config_yaml: str, overwrite: bool = False) -> "RunDir":
        """A new run folder holding ``config_yaml``; refuses to clobber a run that has a checkpoint."""
        run = cls(path)
        if run.checkpoint_path.exists() and not overwrite:
            raise FileExistsError(f"{run.path} already holds a run; pass --resume to continue it or choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / "config.yaml").write_text(config_yaml)
        run.metrics_path.unlink(missing_ok=True)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise FileNotFoundError(f"no run folder at {run.path} (config.yaml missing)")
        return run

    @property
    def config_yaml(self) -> str:
        return (self.path / "config.yaml").read_text()

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path)

    def save_model(self, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.model_path)

    def load_model(self) -> dict[str, Any]:
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.path} has no model.pt yet: has its training run finished a first evaluation?")
        return load_checkpoint(self.model_path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append to metrics.jsonl and TensorBoard; non-finite values are written as null."""
        record = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop logged records past ``after_step`` (a resumed run repeats them)."""
        if not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines() if json.loads(line)["step"] <= after_step]
        self.metrics_path.write_text("".join(line + "\n" for line in lines))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines()]

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tb"))
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
