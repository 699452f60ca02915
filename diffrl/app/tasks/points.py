"""Point data (N, D): toy sets or a user's .npy array; MLP teacher, value and energy; SW, MMD, AUC.

Splits: toy sets are three independent seeded draws; an array is a seeded shuffle split into
test and val (``n_eval`` each, at most a fifth of the rows) and train (the rest). The model sees
standardised data (the normaliser is fitted on train and saved with the run). The energy AUC
separates the test points from uniform outliers on ``[-outlier_box, outlier_box]^D``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...checkpoint import save_array
from ...data import TOY_DATASETS, BatchSampler, Normalizer, load_array, toy_data
from ...ddpm import DDPM
from ...metrics import energy_auc, mmd_rbf, sliced_wasserstein
from ...nets import AtTime, TimeMLP
from ...plots import plot_heatmaps, plot_samples
from ...rewards import EnergyReward, RewardModel
from .base import CostToGo, Task

__all__ = ["PointsTask"]

_MMD_POINTS = 2000
_MIN_SPLIT = 10
"""Fewest points a validation or test split may hold: metrics on fewer say nothing."""


class PointsTask(Task):
    name = "points"
    sample_chunk = 10_000
    select_metric = "sw"

    def __init__(self, config, load: bool = True) -> None:
        super().__init__(config)
        if not load:
            return
        cfg, seed = config.data, config.seed
        if cfg.name in TOY_DATASETS:
            train = toy_data(cfg.name, cfg.n_train, seed)
            val = toy_data(cfg.name, cfg.n_eval, seed + 10_000)
            test = toy_data(cfg.name, cfg.n_eval, seed + 20_000)
        elif cfg.name.endswith(".npy"):
            array = load_array(cfg.name)
            n_eval = min(cfg.n_eval, array.shape[0] // 5)
            if n_eval < _MIN_SPLIT:
                raise ValueError(
                    f"{cfg.name}: {array.shape[0]} rows are too few: validation and test need {_MIN_SPLIT} rows each "
                    f"(a fifth of the data at most), so at least {5 * _MIN_SPLIT} rows"
                )
            perm = torch.randperm(array.shape[0], generator=torch.Generator().manual_seed(seed))
            test, val, train = array[perm[:n_eval]], array[perm[n_eval : 2 * n_eval]], array[perm[2 * n_eval :]]
        else:
            raise ValueError(f"unknown point data {cfg.name!r}: give a toy set ({', '.join(sorted(TOY_DATASETS))}) or a .npy path")
        self.raw = {"train": train, "val": val, "test": test}
        self.normalizer = Normalizer.fit(train, cfg.normalize)
        g = torch.Generator().manual_seed(seed + 30_000)
        if cfg.outlier_box is not None:
            low, high = torch.full((train.shape[1],), -cfg.outlier_box), torch.full((train.shape[1],), cfg.outlier_box)
        else:
            low, high = train.min(0).values, train.max(0).values
            low, high = low - 0.05 * (high - low), high + 0.05 * (high - low)
        self.outliers = low + (high - low) * torch.rand(test.shape[0], train.shape[1], generator=g)

    @property
    def dim(self) -> int:
        return self.raw["train"].shape[1]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def split(self, name: str) -> Tensor:
        return self.normalizer.encode(self.raw[name])

    def batches(self, batch_size: int, seed: int, device: torch.device) -> BatchSampler:
        return BatchSampler(self.split("train").to(device), batch_size, seed)

    def data_state(self) -> dict[str, Any]:
        return {**super().data_state(), "normalizer": self.normalizer.state_dict()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        super().load_data_state(state)
        self.normalizer = Normalizer.from_state_dict(state["normalizer"])

    def to_output(self, samples: Tensor) -> np.ndarray:
        return self.normalizer.decode(samples).cpu().numpy()

    # ------------------------------------------------------------ networks

    def _mlp(self, dim: int, out_dim: int, activation: str = "silu") -> TimeMLP:
        n = self.config.net
        return TimeMLP(dim, out_dim, hidden=n.hidden, depth=n.depth, time_dim=n.time_dim, activation=activation)

    def new_teacher(self) -> DDPM:
        return DDPM(self._mlp(self.dim, self.dim), num_steps=self.config.pretrain.num_timesteps)

    def teacher_state(self, ddpm: DDPM) -> dict[str, Any]:
        eps = ddpm.eps_model
        sizes = {"hidden": eps.inp.out_features, "depth": len(eps.blocks) + 1, "time_dim": eps.time_dim}
        return {"dim": self.dim, "num_steps": ddpm.num_steps, **sizes}

    def teacher_from_state(self, state: dict[str, Any]) -> DDPM:
        """The teacher's MLP at its own sizes (a DxMI run's ``net`` sizes its value and energy only)."""
        if state["dim"] != self.dim:
            raise ValueError(f"the data have D = {self.dim} dimensions but the run's teacher was trained on D = {state['dim']}")
        n = self.config.net
        sizes = {key: state.get(key, getattr(n, key)) for key in ("hidden", "depth", "time_dim")}
        return DDPM(TimeMLP(self.dim, self.dim, **sizes), num_steps=state["num_steps"])

    def load_teacher(self, source: str | None) -> DDPM:
        """A point-data teacher run folder, or None: a freshly initialised network (DxMI from scratch)."""
        if source is None:
            return self.new_teacher()
        from ..pipeline import open_run

        run, config, state = open_run(source)
        if state.get("kind") != "teacher":
            raise ValueError(f"--teacher {source} is a {state.get('kind')} run, not a teacher run (diffrl pretrain)")
        if config.task != self.name:
            raise ValueError(f"--teacher {source} is a teacher for {config.task} data, not for {self.name}")
        ddpm = self.teacher_from_state(state["teacher"])
        ddpm.eps_model.load_state_dict(state["eps_model"])
        return ddpm

    def energy_reward(self, event_shape: tuple[int, ...]) -> RewardModel:
        """E(x) = an MLP of its own (``separate_energy``) or V(x, T) of the value network; reward -E."""
        t, (dim,) = self.config.train, event_shape
        if t.separate_energy:
            return EnergyReward(AtTime(self._mlp(dim, 1, self.config.net.energy_activation), 0), lr=t.lr_energy, gamma=t.gamma)
        return EnergyReward(AtTime(self._mlp(dim, 1), t.horizon), lr=self.energy_lr, gamma=t.gamma)

    def dxdp_value(self, reward: RewardModel, event_shape: tuple[int, ...]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """A time-dependent MLP V(x, t); with ``separate_energy`` off, the energy's own network and optimiser."""
        if self.config.train.separate_energy:
            return self._mlp(event_shape[0], 1), None
        if not isinstance(reward, EnergyReward) or not isinstance(reward.energy, AtTime):
            raise ValueError("train.separate_energy=false shares the value with the default energy reward (train.reward=energy)")
        return reward.energy.net, reward.optimizer if self.config.train.shared_optimizer else None

    # ------------------------------------------------------------ scores and outputs

    def score(self, samples: Tensor, split: str, energy: nn.Module | None) -> dict[str, float]:
        """SW-2 and MMD of samples vs the split (data units); energy AUC of the split vs uniform outliers."""
        samples, reference = self.normalizer.decode(samples.cpu()), self.raw[split]
        n = min(samples.shape[0], reference.shape[0])
        out = {
            "sw": sliced_wasserstein(samples[:n], reference[:n]),
            "mmd": mmd_rbf(self.normalizer.encode(samples[:_MMD_POINTS]), self.normalizer.encode(reference[:_MMD_POINTS])),
        }
        if energy is not None:
            device = next(energy.parameters()).device
            with torch.no_grad():
                e_ref = energy(self.normalizer.encode(reference).to(device))
                e_out = energy(self.normalizer.encode(self.outliers).to(device))
            out["auc"] = energy_auc(e_ref, e_out)
        return out

    def save_outputs(self, path: Path, samples: Tensor, title: str, cost_to_go: CostToGo | None = None) -> None:
        """samples.npy (data units); for D = 2 also samples.png over the test data and, with a value,
        value_energy.png: V(., t) for t = 0..T-1 and E (the paper's Figure 3)."""
        save_array(path / "samples.npy", self.to_output(samples))
        if self.dim != 2:
            return
        plot_samples(self.normalizer.decode(samples.cpu()), self.raw["test"], path / "samples.png", title=title)
        if cost_to_go is None:
            return
        horizon = self.config.train.horizon
        enc = self.normalizer.encode
        panels = {f"V(x, {t})": (lambda x, t=t: cost_to_go(enc(x), t).cpu()) for t in range(horizon)}
        panels["E(x)"] = lambda x: cost_to_go(enc(x), horizon).cpu()
        box = float(self.outliers.abs().max())
        plot_heatmaps(panels, box, path / "value_energy.png", title="soft value V(x, t) of the final state and its energy E = V(., T)")
