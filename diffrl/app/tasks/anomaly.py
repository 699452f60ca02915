"""Anomaly detection with an energy (paper section 5.3) as a task of the run pipeline.

Data: vectors (N, C), one per sample, or feature maps (N, C, H, W), each of whose H * W locations
is a sample (the paper's MVTec-AD protocol); the energy scores a vector, an image is scored by the
maximum of its energy map and localised by the map bilinearly upsampled (``diffrl.anomaly``).

* ``data.name=digits`` with ``data.holdout=K``: leave-one-class-out on scikit-learn's digits, each
  image a 64-vector in [-1, 1]. Train: the other nine classes' training split. Validation: their
  validation split against class K's validation images. Test: their test split against every other
  image of class K (its training and test splits: it is never trained on). Without ``holdout``
  every class is normal and there is no AUROC.
* ``data.name=PATH.npy``: a float array (N, C) or (N, C, H, W) of normal data, split per item
  (seed 0) into test and validation (``n_eval`` items each, at most a fifth) and training.

``data.normalize``: none, standardize (per channel, fitted on train) or sphere (each vector onto
the unit sphere, the paper's feature normalisation; the autoencoder's output and the sampler's
mean are projected onto it too).

Models (spec section 9, MVTec row): the energy is the reconstruction error of an MLP autoencoder,
pretrained (``anomaly.ae_*``; cached under ``data.root/anomaly_ae`` keyed by the training data and
the settings, so every method of a benchmark starts from the same autoencoder) and then trained
contrastively with its own Adam (``train.lr_energy``); the value is a time-conditioned MLP with
V(x, T) = E(x); the sampler's step mean is x + MLP(x, t), trained from scratch (the MLP lives in the
teacher slot, as in a point run from scratch); chains start at x_0 = decode(encode(x) + noise).
``train.agent=langevin`` replaces the sampler by ``train.horizon`` Langevin steps on the energy:
contrastive divergence with short-run MCMC, optionally from a replay buffer (``anomaly.replay``).
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...anomaly import (
    Autoencoder, AutoencoderStart, LangevinAgent, OnSphere, ReconstructionEnergy, ReplayStart, auroc, detection_scores,
    energies, energy_maps, langevin_policy, localisation_maps, pretrain_autoencoder,
)
from ...checkpoint import load_checkpoint, save_array, save_checkpoint
from ...data import BatchSampler, Normalizer
from ...ddpm import DDPM
from ...image_data import DIGITS, SPLIT_SEED, load_digits_images
from ...mdp import ChainMDP
from ...nets import ResidualMean, TimeMLP
from ...policy import GaussianStepPolicy
from ...rewards import EnergyReward, RewardModel
from ..config import ExperimentConfig
from .base import CostToGo, Task

__all__ = ["AnomalyTask", "AnomalySplits", "langevin_agent", "read_features", "score", "score_file"]

NORMALIZE = ("none", "standardize", "sphere")
_AE_MEMO: dict[str, dict[str, Tensor]] = {}
"""Pretrained autoencoders of this process by cache key (the reward and the start both ask)."""


@dataclass
class AnomalySplits:
    """Vectors (N, C) in data units: training data, and per evaluation split its normal vectors and its
    anomalies (None without labels). ``map_shape``: (H, W) of the feature maps the vectors came from."""

    train: Tensor
    normal: dict[str, Tensor]
    anomalies: dict[str, Tensor | None]
    map_shape: tuple[int, int] = (1, 1)


def read_features(path: str | Path) -> Tensor:
    """A numeric .npy array (N, C) or (N, C, H, W) as a float32 tensor, checked: file, dtype, shape, finite values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature array not found: {path}")
    if path.suffix != ".npy":
        raise ValueError(f"expected a .npy array (N, C) or (N, C, H, W), got {path.name}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path.name}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)) or array.dtype == np.bool_:
        raise ValueError(f"{path.name}: expected numbers, got dtype {array.dtype}")
    if array.ndim not in (2, 4) or array.shape[0] < 1 or min(array.shape) < 1:
        raise ValueError(f"{path.name}: expected an array (N, C) or (N, C, H, W), got shape {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        raise ValueError(f"{path.name}: {int(bad.sum())} items hold NaN or inf (first: {bad.nonzero().flatten()[:5].tolist()})")
    return x


def _vectors(x: Tensor) -> Tensor:
    """(N, C) or (N, C, H, W) -> one C-vector per item and location, (N * H * W, C)."""
    return x if x.ndim == 2 else x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _digits_splits(holdout: int | None) -> AnomalySplits:
    d = load_digits_images()
    flat = {k: getattr(d, k).flatten(1) for k in ("train", "val", "test")}
    labels = {"train": d.train_labels, "val": d.val_labels, "test": d.test_labels}
    if holdout is None:
        return AnomalySplits(flat["train"], {"val": flat["val"], "test": flat["test"]}, {"val": None, "test": None})
    out = {k: flat[k][labels[k] != holdout] for k in flat}
    held = {k: flat[k][labels[k] == holdout] for k in flat}
    return AnomalySplits(out["train"], {"val": out["val"], "test": out["test"]},
                         {"val": held["val"], "test": torch.cat([held["train"], held["test"]])})


def _array_splits(path: str, n_eval: int) -> AnomalySplits:
    x = read_features(path)
    n_eval = min(n_eval, x.shape[0] // 5)
    if n_eval < 1:
        raise ValueError(f"{path}: {x.shape[0]} items are too few: validation and test need one item each (a fifth of the data at most)")
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, val, train = x[perm[:n_eval]], x[perm[n_eval : 2 * n_eval]], x[perm[2 * n_eval :]]
    shape = (1, 1) if x.ndim == 2 else tuple(x.shape[2:])
    return AnomalySplits(_vectors(train), {"val": _vectors(val), "test": _vectors(test)}, {"val": None, "test": None}, shape)


class AnomalyTask(Task):
    name = "anomaly"
    sample_chunk = 10_000
    select_metric = None
    """No model selection: a run keeps its last model (validation anomalies only tune settings)."""

    def __init__(self, config: ExperimentConfig, load: bool = True) -> None:
        super().__init__(config)
        if config.data.normalize not in NORMALIZE:
            raise ValueError(f"task anomaly: data.normalize must be one of {', '.join(NORMALIZE)}, got {config.data.normalize!r}")
        if config.train.teacher is not None:
            raise ValueError("task anomaly trains its sampler from scratch: train.teacher must be null")
        if config.anomaly.replay and config.train.agent != "langevin":
            raise ValueError("anomaly.replay is a replay buffer of Langevin negatives: it needs train.agent=langevin")
        self._splits: AnomalySplits | None = None
        self.normalizer: Normalizer | None = None
        if load:
            self._load()

    def _load(self) -> AnomalySplits:
        """The splits and the normaliser, read once (a task built with load=False reads them when first needed)."""
        if self._splits is None:
            d = self.config.data
            if d.name == DIGITS:
                self._splits = _digits_splits(d.holdout)
            elif d.name.endswith(".npy"):
                self._splits = _array_splits(d.name, d.n_eval)
            else:
                raise ValueError(f"task anomaly reads digits or a .npy feature array (N, C) or (N, C, H, W), got {d.name!r}")
            if self.normalizer is None:
                mode = "none" if d.normalize == "sphere" else d.normalize
                self.normalizer = Normalizer.fit(self._splits.train, mode)
        return self._splits

    @property
    def sphere(self) -> bool:
        return self.config.data.normalize == "sphere"

    def encode(self, x: Tensor) -> Tensor:
        """Data-unit vectors (..., C) -> model units."""
        x = self.normalizer.encode(x)
        return F.normalize(x, dim=-1) if self.sphere else x

    # ------------------------------------------------------------ data

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self._load().train.shape[1],)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def split(self, name: str) -> Tensor:
        """The training vectors, or the normal vectors of the "val" / "test" split, in model units."""
        s = self._load()
        return self.encode(s.train if name == "train" else s.normal[name])

    def anomalies(self, name: str) -> Tensor | None:
        """The anomalous vectors of the "val" / "test" split in model units (None: the data have no labels)."""
        a = self._load().anomalies[name]
        return None if a is None else self.encode(a)

    def batches(self, batch_size: int, seed: int, device: torch.device) -> BatchSampler:
        return BatchSampler(self.split("train").to(device), batch_size, seed)

    def data_state(self) -> dict[str, Any]:
        return {**super().data_state(), "normalizer": self.normalizer.state_dict()}

    def load_data_state(self, state: dict[str, Any]) -> None:
        super().load_data_state(state)
        self.normalizer = Normalizer.from_state_dict(state["normalizer"])

    def to_output(self, samples: Tensor) -> np.ndarray:
        """Vectors (N, C) in data units (sphere: on the sphere)."""
        return self.normalizer.decode(samples.cpu()).numpy()

    # ------------------------------------------------------------ the autoencoder

    def _new_autoencoder(self) -> Autoencoder:
        a = self.config.anomaly
        return Autoencoder(self.dim, a.latent, a.ae_hidden, a.ae_depth, a.ae_activation, sphere=self.sphere)

    def pretrained_autoencoder(self) -> Autoencoder:
        """The autoencoder pretrained on the training split (``anomaly.ae_*``, seeded by ``seed``),
        from the cache ``data.root/anomaly_ae/<key>.pt`` when there, else trained and cached. The
        global RNG is left as it was either way."""
        a, train = self.config.anomaly, self.split("train")
        settings = {k: getattr(a, k) for k in ("latent", "ae_hidden", "ae_depth", "ae_activation", "ae_steps", "ae_lr", "ae_batch")}
        tag = json.dumps({**settings, "seed": self.config.seed, "sphere": self.sphere}, sort_keys=True).encode()
        key = hashlib.sha1(train.numpy().tobytes() + tag).hexdigest()[:16]
        path = Path(self.config.data.root) / "anomaly_ae" / f"{key}.pt"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            ae = self._new_autoencoder()
            if key not in _AE_MEMO and path.is_file():
                _AE_MEMO[key] = load_checkpoint(path)["autoencoder"]
            if key not in _AE_MEMO:
                losses = pretrain_autoencoder(ae, train, a.ae_steps, a.ae_lr, a.ae_batch, self.config.seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint({"autoencoder": ae.state_dict(), "settings": settings, "losses": losses}, path)
                _AE_MEMO[key] = copy.deepcopy(ae.state_dict())
        ae.load_state_dict(_AE_MEMO[key])
        return ae

    # ------------------------------------------------------------ teacher (the sampler's network)

    def new_teacher(self) -> DDPM:
        raise ValueError("task anomaly has no DDPM teacher to pretrain: diffrl train pretrains its autoencoder (anomaly.ae_steps)")

    def teacher_state(self, ddpm: DDPM) -> dict[str, Any]:
        eps = ddpm.eps_model
        return {"dim": self.dim, "num_steps": ddpm.num_steps, "hidden": eps.inp.out_features, "depth": len(eps.blocks) + 1, "time_dim": eps.time_dim}

    def teacher_from_state(self, state: dict[str, Any]) -> DDPM:
        if state["dim"] != self.dim:
            raise ValueError(f"the data have C = {self.dim} channels but the run was trained on C = {state['dim']}")
        net = TimeMLP(self.dim, self.dim, hidden=state["hidden"], depth=state["depth"], time_dim=state["time_dim"])
        return DDPM(net, num_steps=state["num_steps"])

    def load_teacher(self, source: str | None) -> DDPM:
        """The sampler's MLP, freshly initialised with its output layer at zero (the chain starts as a random walk)."""
        n = self.config.net
        net = TimeMLP(self.dim, self.dim, hidden=n.hidden, depth=n.depth, time_dim=n.time_dim)
        with torch.no_grad():
            net.out[-1].weight.zero_()
            net.out[-1].bias.zero_()
        return DDPM(net, num_steps=self.config.pretrain.num_timesteps)

    # ------------------------------------------------------------ models

    def step_policy(self, teacher: DDPM) -> GaussianStepPolicy:
        """DxMI: x_{t+1} ~ N(x_t + MLP(x_t, t), sigma_t^2), sigma_t from ``anomaly.sigma``; with
        ``train.agent=langevin``: ``train.horizon`` Langevin steps (bound to the energy by the agent)."""
        t, a = self.config.train, self.config.anomaly
        if t.agent == "langevin":
            return langevin_policy(t.horizon, a.langevin_step, self.event_shape, a.langevin_noise)
        sigma = torch.full((t.horizon,), a.sigma)
        if t.fix_last:
            sigma[-1] = t.last_sigma
        mean = ResidualMean(teacher.eps_model)
        return GaussianStepPolicy(OnSphere(mean) if self.sphere else mean, sigma, self.event_shape, fix_last=t.fix_last)

    def start(self) -> nn.Module:
        """x_0 = decode(encode(x) + anomaly.start_noise * eps) with the frozen pretrained autoencoder,
        x drawn from the training split; behind a replay buffer when ``anomaly.replay`` > 0."""
        a = self.config.anomaly
        start = AutoencoderStart(self.pretrained_autoencoder(), self.split("train"), a.start_noise)
        return ReplayStart(start, a.replay, self.event_shape, a.replay_reinit) if a.replay else start

    def energy_reward(self, event_shape: tuple[int, ...]) -> RewardModel:
        """E(x) = the reconstruction error of a copy of the pretrained autoencoder, with its own Adam at ``train.lr_energy``."""
        t = self.config.train
        return EnergyReward(ReconstructionEnergy(self.pretrained_autoencoder(), self.config.anomaly.temperature), lr=t.lr_energy, gamma=t.gamma)

    def dxdp_value(self, reward: RewardModel, event_shape: tuple[int, ...]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """A time-conditioned MLP V(x, t) of its own (V(x, T) = E(x) through the MDP)."""
        n = self.config.net
        return TimeMLP(event_shape[0], 1, hidden=n.hidden, depth=n.depth, time_dim=n.time_dim), None

    # ------------------------------------------------------------ scores and outputs

    def score(self, samples: Tensor, split: str, energy: nn.Module | None) -> dict[str, float]:
        """Mean energies of the split's normal vectors and of the samples, their gap (samples - data),
        and the AUROC of the energy separating the split's anomalies from its normal vectors (labelled data)."""
        if energy is None:
            return {}
        e_data, e_samples = energies(energy, self.split(split)), energies(energy, samples)
        out = {"energy_data": float(e_data.mean()), "energy_samples": float(e_samples.mean())}
        out["energy_gap"] = out["energy_samples"] - out["energy_data"]
        anomalies = self.anomalies(split)
        if anomalies is not None:
            out["auroc"] = auroc(e_data, energies(energy, anomalies))
        return out

    def save_outputs(self, path: Path, samples: Tensor, title: str, cost_to_go: CostToGo | None = None) -> None:
        """samples.npy (data units) and, with an energy, energies.png: histograms of E on the validation
        split's normal vectors, its anomalies and the samples."""
        save_array(path / "samples.npy", self.to_output(samples))
        if cost_to_go is None:
            return
        from ...plots import plt

        horizon = self.config.train.horizon
        groups = {"validation, normal": self.split("val"), "samples": samples}
        if self.anomalies("val") is not None:
            groups["validation, anomalies"] = self.anomalies("val")
        fig, ax = plt.subplots(figsize=(6, 4))
        with torch.no_grad():
            for name, x in groups.items():
                ax.hist(cost_to_go(x, horizon).cpu().numpy(), bins=40, alpha=0.5, density=True, label=name)
        ax.set_xlabel("energy E(x)")
        ax.set_ylabel("density")
        ax.legend()
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path / "energies.png", dpi=120)
        plt.close(fig)


def langevin_agent(policy: GaussianStepPolicy, mdp: ChainMDP, config: ExperimentConfig) -> LangevinAgent:
    """The Langevin-CD baseline's agent (``train.agent=langevin``): Langevin steps on the MDP's energy."""
    return LangevinAgent(policy, mdp)


# ---------------------------------------------------------------- scoring new data


def score(path: str | Path, x: Tensor, which: str = "best", map_size: int | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores of data-unit x under the energy of an anomaly run: vectors (N, C) -> {"energy":
    (N,)}; feature maps (N, C, H, W) -> {"energy": (N,) the maximum of each map, "maps": (N, H, W)
    per-location energies, or upsampled bilinearly to (N, map_size, map_size)}. Higher = more anomalous."""
    from ..pipeline import from_run

    run = from_run(path, which)
    if run.config.task != "anomaly":
        raise ValueError(f"{path} is a {run.config.task} run: diffrl score scores runs of task anomaly")
    task: AnomalyTask = run.task
    if x.ndim not in (2, 4) or x.shape[1] != task.dim:
        raise ValueError(f"the run scores vectors (N, {task.dim}) or feature maps (N, {task.dim}, H, W), got {tuple(x.shape)}")
    if map_size is not None and (x.ndim != 4 or map_size < 1):
        raise ValueError("map_size applies to feature maps (N, C, H, W) and must be >= 1")
    if x.ndim == 2:
        return {"energy": energies(run.energy, task.encode(x)).numpy()}
    maps = energy_maps(run.energy, task.encode(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    out = {"energy": detection_scores(maps).numpy()}
    out["maps"] = (localisation_maps(maps, (map_size, map_size)) if map_size else maps).numpy()
    return out


def score_file(run: str, data: str, out: str | None = None, force: bool = False, which: str = "best", map_size: int | None = None) -> dict[str, Any]:
    """``diffrl score``: scores of the .npy array ``data`` into ``out`` (default RUN/scores_<name>.npy,
    (N,)); feature maps also write the maps beside it (<out>_maps.npy)."""
    out_path = Path(out) if out else Path(run) / f"scores_{Path(data).stem}.npy"
    maps_path = out_path.with_name(out_path.stem + "_maps.npy")
    if out_path.suffix != ".npy":
        raise ValueError(f"--out {out_path} must end in .npy")
    for p in (out_path, maps_path):
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists; pass --force to overwrite it or choose another --out")
    x = read_features(data)
    scores = score(run, x, which, map_size)
    save_array(out_path, scores["energy"])
    result = {"out": str(out_path), "shape": list(scores["energy"].shape)}
    if "maps" in scores:
        save_array(maps_path, scores["maps"])
        result.update(maps=str(maps_path), maps_shape=list(scores["maps"].shape))
    return result
