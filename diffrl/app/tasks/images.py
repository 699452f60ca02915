"""Images (N, C, H, W) in [-1, 1]: digits, CIFAR-10, an image folder or a uint8 array; a diffusers
UNet teacher; one EnergyResNet as energy and time-independent value (spec sections 6, 7).

Scores (``image.features``): digits use the project's classifier (FD / KID / class coverage
against the val or test split); Inception FID (CIFAR-10, or any data with ``image.fid_weights``)
is computed against the training images' statistics, cached under ``data.root/fid_stats`` (the
paper's CIFAR-10 protocol), split across processes in a distributed run; with no feature
network a run keeps its last model. Run folders add RUN/teacher/ (pretrain: the diffusers
layout that ``--teacher RUN`` loads) and samples.png (a grid of the selected model's samples).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...data import BatchSampler
from ...ddpm import DDPM
from ...distributed import Dist, rank0_first
from ...ebm import EnergyResNet, TimeIndependentValue
from ...image_data import DIGITS, ImageBatches, ImageData, load_image_data, to_uint8, to_unit
from ...rewards import EnergyReward, RewardModel
from ...run import RunDir
from ...unet import build_unet, check_image_shape, load_pretrained_ddpm, save_pretrained_ddpm, unet_from_config
from .base import CostToGo, Draw, Task

__all__ = ["ImagesTask"]

CIFAR10 = "cifar10"
_GRID = 100


def _load_cifar10(root: str) -> ImageData:
    """CIFAR-10: the 50k training images train; the 10k test images are split into val and test halves."""
    from torchvision.datasets import CIFAR10 as Dataset

    def images(train: bool) -> Tensor:
        try:
            ds = Dataset(root, train=train, download=True)
        except Exception as e:  # offline (URLError), a broken archive
            raise FileNotFoundError(
                f"CIFAR-10 is not in {root} and could not be downloaded ({str(e).splitlines()[0][:100]}); "
                f"put cifar-10-python.tar.gz in data.root or use data.name=FOLDER"
            ) from None
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    test = to_unit(images(False))
    return ImageData(to_unit(images(True)), test[: test.shape[0] // 2], test[test.shape[0] // 2 :])


class ImagesTask(Task):
    name = "images"
    sample_chunk = 500

    def __init__(self, config, ctx: Dist | None = None, load: bool = True) -> None:
        super().__init__(config)
        if not load:
            return
        name = config.data.name
        if name == CIFAR10:
            self.data = _load_cifar10(config.data.root)
        else:
            self.data = load_image_data(name, config.data.n_eval, config.image.image_size, config.image.channels)
        self.features = config.image.features
        if self.features == "auto":
            inception = name == CIFAR10 or config.image.fid_weights is not None
            self.features = "digits" if name == DIGITS else "inception" if inception else "none"
        if self.features == "digits" and name != DIGITS:
            raise ValueError("image.features=digits scores digits only; use inception (FID) or none")
        self.ctx = ctx or Dist(0, 1, torch.device("cpu"))
        self._fid = None

    @property
    def select_metric(self) -> str | None:
        return {"digits": "fd", "none": None}.get(self.features, self.fid_name(self.config.image.eval_samples))

    @staticmethod
    def fid_name(n: int) -> str:
        from ...fid import fid_name

        return fid_name(n)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.data.shape

    def split(self, name: str) -> Tensor:
        return getattr(self.data, name)

    def batches(self, batch_size: int, seed: int, device: torch.device) -> BatchSampler:
        return ImageBatches(self.data.train.to(device), batch_size, seed, self.config.image.hflip)

    def to_output(self, samples: Tensor) -> np.ndarray:
        """uint8 images (N, H, W, C)."""
        return to_uint8(samples.cpu()).permute(0, 2, 3, 1).numpy()

    # ------------------------------------------------------------ networks

    def new_teacher(self) -> DDPM:
        c, h, _ = self.event_shape
        image = self.config.image
        eps_model = build_unet(h, c, tuple(image.unet_channels), image.unet_layers_per_block)
        check_image_shape(eps_model, self.event_shape)
        return DDPM(eps_model, num_steps=self.config.pretrain.num_timesteps)

    def teacher_state(self, ddpm: DDPM) -> dict[str, Any]:
        betas = ddpm.betas
        return {"unet_config": ddpm.eps_model.unet_config(), "betas": [ddpm.num_steps, float(betas[0]), float(betas[-1])]}

    def teacher_from_state(self, state: dict[str, Any]) -> DDPM:
        num_steps, beta_start, beta_end = state["betas"]
        return DDPM(unet_from_config(state["unet_config"]), num_steps=int(num_steps), beta_start=beta_start, beta_end=beta_end)

    def load_teacher(self, source: str | None) -> DDPM:
        """A pretrain run folder (its teacher/), a diffusers DDPM folder or a hub id."""
        if source is None:
            raise ValueError("image DxMI fine-tunes a teacher: set train.teacher (--teacher: a pretrain run, a diffusers folder or a hub id)")
        path = Path(source)
        if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
            from ..pipeline import open_run

            _, config, state = open_run(path)
            if state.get("kind") != "teacher" or config.task != self.name:
                raise ValueError(f"--teacher {source} is a {config.task} {state.get('kind')} run, not an image teacher run")
            if not (path / "teacher").is_dir():
                raise FileNotFoundError(f"{path} is a run folder without a teacher/ folder: has its pretraining finished?")
            path = path / "teacher"
        ddpm = load_pretrained_ddpm(path if path.exists() else source)
        check_image_shape(ddpm.eps_model, self.event_shape, f"the data ({self.config.data.name})")
        return ddpm

    def save_teacher(self, run: RunDir, ddpm: DDPM) -> None:
        save_pretrained_ddpm(ddpm, run.path / "teacher")

    def energy_reward(self, event_shape: tuple[int, ...]) -> RewardModel:
        t, image = self.config.train, self.config.image
        energy = EnergyResNet(event_shape[0], width=image.ebm_width, mults=tuple(image.ebm_mults))
        return EnergyReward(energy, lr=self.energy_lr, gamma=t.gamma)

    def dxdp_value(self, reward: RewardModel, event_shape: tuple[int, ...]) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        """V(x, t) = E(x): the energy network itself; one Adam for both with ``shared_optimizer``."""
        if not isinstance(reward, EnergyReward):
            raise ValueError("image DxDP's value is the energy network: it needs the energy reward (train.reward=energy)")
        return TimeIndependentValue(reward.energy), reward.optimizer if self.config.train.shared_optimizer else None

    # ------------------------------------------------------------ scores and outputs

    def has_scores(self) -> bool:
        return self.features != "none"

    def prepare_scores(self) -> None:
        if self.features in ("inception", "small"):
            self._fid_metric()

    def _fid_metric(self):
        """The FID metric with the training images' reference statistics (cached on disk), built once."""
        if self._fid is None:
            from ...fid import SmallFeatures, build_fid, load_reference_stats

            image = self.config.image
            feature = SmallFeatures() if self.features == "small" else None
            metric, feature_tag = rank0_first(self.ctx, lambda: build_fid(image.fid_weights, feature))  # a download happens once
            metric = metric.to(self.ctx.device)
            train = to_uint8(self.data.train)
            n_ref = min(image.fid_ref_images or train.shape[0], train.shape[0])
            data_tag = hashlib.sha1(train[:n_ref].numpy().tobytes()).hexdigest()[:12]
            cache = Path(self.config.data.root) / "fid_stats" / f"{data_tag}_{feature_tag}_n{n_ref}.pt"
            load_reference_stats(metric, train[:n_ref], cache, image.fid_batch, self.ctx)
            self._fid = metric
        return self._fid

    @property
    def eval_samples(self) -> int:
        return self.config.image.eval_samples

    @property
    def output_samples(self) -> int:
        return _GRID

    def on_evaluation(self, run: RunDir, samples: Tensor) -> None:
        """grids/step_<step>.png: a grid of this evaluation's first samples (rank 0)."""
        from ...image_metrics import save_grid

        if not run.readonly:
            step = len([line for line in run.read_metrics() if any(k.startswith("eval/") for k in line)])
            (run.path / "grids").mkdir(exist_ok=True)
            save_grid(samples[:64], run.path / "grids" / f"eval_{step:04d}.png", scale=max(1, 32 // samples.shape[-1]))

    def cost_to_go(self, value: nn.Module | None, energy: nn.Module | None) -> CostToGo | None:
        """The value is the energy (spec section 6): V(x, t) = E(x) for every t, with the evaluation energy."""
        return None if energy is None else (lambda x, t: energy(x))

    def evaluate(self, draw: Draw, n: int, seed: int, split: str, energy: nn.Module | None, device: torch.device) -> tuple[dict[str, float], Tensor]:
        """Scores of n samples drawn with ``draw`` and the first samples for a grid. FID is against
        the training images (``split`` does not apply) and its draws are split across processes."""
        if self.features not in ("inception", "small"):
            return super().evaluate(draw, n, seed, split, energy, device)
        from ...fid import sample_fid

        fid, energy_mean, grid = sample_fid(draw, n, self._fid_metric(), self.config.image.fid_batch, self.ctx, seed, energy)
        scores = {self.fid_name(n): fid}
        if energy_mean is not None:
            scores["energy_samples"] = energy_mean
        return scores, grid

    def score(self, samples: Tensor, split: str, energy: nn.Module | None) -> dict[str, float]:
        from ...image_metrics import digits_classifier, image_scores

        reference = self.split(split)
        scores = image_scores(samples, reference, digits_classifier(0)[0])
        if energy is not None:
            device = next(energy.parameters()).device
            with torch.no_grad():
                scores["energy_data"] = float(energy(reference.to(device)).mean())
                scores["energy_samples"] = float(energy(samples[: self.sample_chunk].to(device)).mean())
        return scores

    def save_outputs(self, path: Path, samples: Tensor, title: str, cost_to_go: CostToGo | None = None) -> None:
        """samples.png: a grid of the first 100 samples."""
        from ...image_metrics import save_grid

        save_grid(samples[:_GRID], path / "samples.png", scale=max(1, 32 // samples.shape[-1]))

