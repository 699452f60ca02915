"""The task interface: what the one run life cycle (``diffrl.app.pipeline``) needs to know about a
kind of data. A task is bound to a config and loads its data once; everything else is generic.

Units: the models see *model units* (points: standardised; images: [-1, 1]); ``to_output``
turns model-unit samples into what a user gets back (points: data units; images: uint8).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ...data import BatchSampler
from ...ddpm import DDPM
from ...policy import GaussianStepPolicy
from ...rewards import RewardModel
from ...run import RunDir
from ..config import ExperimentConfig

__all__ = ["Task", "CostToGo", "Draw"]

CostToGo = Callable[[Tensor, int], Tensor]
"""cost_to_go(x (B, ...) model units, t in 0..T) -> V(x, t) (B,), with V(x, T) = E(x)."""
Draw = Callable[[int, torch.Generator], Tensor]
"""draw(batch, generator) -> final samples (batch, *event_shape) in model units."""


class Task(ABC):
    """One kind of data: its splits, teacher network, default reward and value, scores and plots."""

    name: ClassVar[str]
    sample_chunk: ClassVar[int]
    """Samples drawn per batch when sampling many (memory), always from one generator."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config

    @property
    def output_samples(self) -> int:
        """Samples a finished run writes (samples.npy / samples.png)."""
        return self.config.data.n_eval

    def on_evaluation(self, run: RunDir, samples: Tensor) -> None:
        """Called with the validation samples of every evaluation during training (images: a grid)."""

    # ------------------------------------------------------------ data

    @property
    @abstractmethod
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (D,) or (C, H, W)."""

    @abstractmethod
    def split(self, name: str) -> Tensor:
        """The "train", "val" or "test" split in model units, on the CPU."""

    @abstractmethod
    def batches(self, batch_size: int, seed: int, device: torch.device) -> BatchSampler:
        """Random training batches (batch_size, *event_shape) in model units from their own seeded generator."""

    def data_state(self) -> dict[str, Any]:
        """Plain data that a finished run needs to map samples back to the data (model.pt)."""
        return {"event_shape": list(self.event_shape)}

    def load_data_state(self, state: dict[str, Any]) -> None:
        """Adopt a run's saved data state (its normaliser); refuse data of another shape."""
        if tuple(state["event_shape"]) != self.event_shape:
            raise ValueError(f"the data have samples of shape {self.event_shape}, the run was trained on {tuple(state['event_shape'])}")

    @abstractmethod
    def to_output(self, samples: Tensor) -> np.ndarray:
        """Model-unit samples (N, *event_shape) as the user gets them back."""

    # ------------------------------------------------------------ teacher

    @abstractmethod
    def new_teacher(self) -> DDPM:
        """A freshly initialised DDPM teacher for this data (pretrain, or DxMI from scratch)."""

    @abstractmethod
    def teacher_state(self, ddpm: DDPM) -> dict[str, Any]:
        """Plain data that rebuilds the teacher's architecture (not its weights)."""

    @abstractmethod
    def teacher_from_state(self, state: dict[str, Any]) -> DDPM:
        """An untrained teacher of the architecture ``teacher_state`` describes."""

    @abstractmethod
    def load_teacher(self, source: str | None) -> DDPM:
        """The teacher DxMI starts from: ``train.teacher`` (a run folder, ...), or None: from scratch."""

    def save_teacher(self, run: RunDir, ddpm: DDPM) -> None:
        """Extra files of a finished teacher run (images: a diffusers folder)."""

    # ------------------------------------------------------------ default models

    def step_policy(self, teacher: DDPM) -> GaussianStepPolicy:
        """The T-step sampler DxMI trains: the teacher's chain (``train.schedule``, ``last_sigma``, ``fix_last``)."""
        t = self.config.train
        return teacher.step_policy(t.horizon, self.event_shape, kind=t.schedule, last_sigma=t.last_sigma, fix_last=t.fix_last)

    def start(self) -> nn.Module | None:
        """The chain's start distribution, ``start(batch, generator, device) -> x_0``; None: N(0, I)."""
        return None

    @property
    def energy_lr(self) -> float:
        """The energy's learning rate: ``dxdp.lr_value`` when one Adam steps a network shared with the
        value (``train.shared_optimizer``), else ``train.lr_energy``."""
        t = self.config.train
        return t.dxdp.lr_value if t.shared_optimizer else t.lr_energy

    @abstractmethod
    def energy_reward(self, event_shape: tuple[int, ...]) -> RewardModel:
        """The default reward: a learnable energy (DxMI)."""

    @abstractmethod
    def dxdp_value(self, reward: RewardModel, event_shape: tuple[int, ...]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """DxDP's value V(x (B, ...), t (B,)) -> (B,) and, when it shares the reward's network and
        optimiser, that optimiser (else None: DxDP makes its own)."""

    # ------------------------------------------------------------ scores and outputs

    select_metric: ClassVar[str | None]
    """The validation metric that selects model.pt (lower is better); None keeps the last model."""

    @property
    def eval_samples(self) -> int:
        """Samples per evaluation during training."""
        return self.config.data.n_eval

    def has_scores(self) -> bool:
        return True

    def prepare_scores(self) -> None:
        """Build what scoring needs (feature networks, reference statistics) now, so a missing
        weights file fails before a run folder exists."""

    def cost_to_go(self, value: nn.Module | None, energy: nn.Module | None) -> CostToGo | None:
        """V(x, t) for t < T from a time-dependent ``value(x, t (B,))``, E(x) at t = T; None without both."""
        if value is None or energy is None:
            return None
        horizon = self.config.train.horizon

        def v(x: Tensor, t: int) -> Tensor:
            return energy(x) if t == horizon else value(x, torch.full((x.shape[0],), t, device=x.device))

        return v

    def draw(self, draw: Draw, n: int, seed: int, device: torch.device) -> Tensor:
        """n samples (n, *event_shape) on the CPU, ``sample_chunk`` at a time, from one generator seeded with ``seed``."""
        g = torch.Generator(device=device).manual_seed(seed)
        return torch.cat([draw(min(self.sample_chunk, n - i), g).cpu() for i in range(0, n, self.sample_chunk)])

    def evaluate(self, draw: Draw, n: int, seed: int, split: str, energy: nn.Module | None, device: torch.device) -> tuple[dict[str, float], Tensor]:
        """Scores of n samples of ``draw`` against ``split`` (and ``energy``'s), and the samples."""
        samples = self.draw(draw, n, seed, device)
        return self.score(samples, split, energy), samples

    @abstractmethod
    def score(self, samples: Tensor, split: str, energy: nn.Module | None) -> dict[str, float]:
        """Metrics of model-unit samples (N, *event_shape) against ``split``; the energy's too when given."""

    @abstractmethod
    def save_outputs(self, path: Path, samples: Tensor, title: str, cost_to_go: CostToGo | None = None) -> None:
        """The files of a finished run in folder ``path``: its samples (model units) and pictures;
        ``cost_to_go(x, t)`` (V(., t) for t = 0..T, with V(., T) = E) when the run has a value."""
