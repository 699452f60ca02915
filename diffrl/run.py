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

from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint

__all__ = ["RunDir"]


class RunDir:
    """A run folder. ``readonly`` (processes other than rank 0 of a distributed run): reads work,
    every write is skipped."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._writer = None
        self._purge_step: int | None = None

    @staticmethod
    def check_new(path: str | Path) -> None:
        """Refuse (FileExistsError) a path that is a file or a folder with anything in it: runs never overwrite."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a folder")
        if path.is_dir():
            entries = sorted(p.name for p in path.iterdir())
            if entries:
                listed = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
                hint = "; pass --resume to continue it" if "checkpoint.pt" in entries else ""
                raise FileExistsError(f"{path} is not empty (holds {listed}): a run starts only in a new or empty folder{hint}")

    @classmethod
    def create(cls, path: str | Path, config_yaml: str, readonly: bool = False) -> "RunDir":
        """A new run folder holding ``config_yaml``, in a missing or empty folder only (see ``check_new``)."""
        run = cls(path, readonly)
        if not readonly:
            cls.check_new(path)
            run.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run.path / "config.yaml", config_yaml)
        return run

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> "RunDir":
        run = cls(path, readonly)
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
        if not self.readonly:
            save_checkpoint(state, self.checkpoint_path)

    def load_checkpoint(self, mmap: bool = False) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path, mmap=mmap)

    def save_model(self, state: dict[str, Any]) -> None:
        if not self.readonly:
            save_checkpoint(state, self.model_path)

    def load_model(self) -> dict[str, Any]:
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.path} has no model.pt yet: has its training run finished a first evaluation?")
        return load_checkpoint(self.model_path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append to metrics.jsonl and TensorBoard; non-finite values are written as null."""
        if self.readonly:
            return
        record = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop logged records past ``after_step`` (a resumed run repeats them), in metrics.jsonl and,
        through TensorBoard's purge_step, in the events."""
        self._purge_step = after_step + 1
        if self.readonly or not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines() if json.loads(line)["step"] <= after_step]
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in lines))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines()]

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tb"), purge_step=self._purge_step)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
