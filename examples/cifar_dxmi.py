"""DxMI on CIFAR-10, the paper's row: fine-tune the pretrained 1000-step DDPM (``google/ddpm-cifar10-32``)
into a 10-step sampler by maximum-entropy inverse RL, with DxDP as the RL algorithm.

    python examples/cifar_dxmi.py                                     # one process (one GPU, or the CPU)
    torchrun --nproc_per_node=4 examples/cifar_dxmi.py                # 4 GPUs (NCCL) or 4 CPU processes (gloo)
    python examples/cifar_dxmi.py --fid-weights weights-inception-2015-12-05-6726825d.pth   # offline FID
    python examples/cifar_dxmi.py --resume                            # continue runs/cifar_dxmi
    python examples/cifar_dxmi.py --smoke                             # the whole script, tiny, on a CPU

Defaults (spec sections 6, 7, 9): T = 10 FastDPM "VAR" sampler over the teacher's UNet with trainable
sigmas and the last sigma fixed at 1e-3; an IGEBM-style EnergyResNet (width 128) that is both the
energy and the time-independent value; tau1 = 0.1 (entropy), tau2 = 0.01 (velocity), gamma = 1;
Adam at 1e-7 (sampler), 1e-5 (sigma), 1e-5 (value = energy: ONE Adam steps the shared network for
the energy step and the value steps, as the reference does); global batch 128; AVR 0.99; sigmoid
time cost; sampler gradient-norm clip 0.1; random horizontal flips.

Run folder (``--out``): config.yaml (the library's ExperimentConfig, so ``diffrl.image_experiment.
restore`` reads model.pt), args.json, checkpoint.pt (latest, everything for ``--resume``), model.pt
(best fid10k), metrics.jsonl and tb/ (TensorBoard), grids/step_*.png (one per evaluation),
fid_history.json, samples.png (best model) and final.json. Reference FID statistics of the training
images are cached in ``--data-dir``/fid_stats/, keyed by data, feature network and image count.

Many processes. ``torchrun`` starts one process per GPU; the global batch is split across them.
Gradients are averaged explicitly, not through ``DistributedDataParallel``: DxDP steps each
optimiser on ``loss.backward(inputs=...)`` with the value network sitting inside the sampler's loss,
and a DDP wrapper would put ``module.`` into every state-dict key (a torchrun checkpoint would no
longer resume in one process) while leaving the sampler's log-sigmas, which belong to no wrapped
module, unsynchronised. So one hook per optimiser (``register_step_pre_hook``) all-reduces the
gradients of all its parameters (one flat tensor, averaged) right before every ``step()``, then
clips (the sampler's 0.1 clip therefore applies to the averaged gradient, as in one process with
the whole batch). AVR's EMA and the logged losses are averaged the same way. All ranks start from
rank 0's parameters, draw their own noise and data (per-rank seeds) and end every step with
identical parameters. Rank 0 alone writes. Value guidance needs no synchronisation (it only
differentiates the energy with respect to images). FID samples are split across ranks; torchmetrics
sums the feature statistics over ranks.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from diffrl.agents import DxDP
from diffrl.checkpoint import load_checkpoint, save_checkpoint
from diffrl.config import DataConfig, ExperimentConfig, ImageConfig, TrainConfig, to_yaml
from diffrl.ddpm import DDPM
from diffrl.dxmi import DxMI
from diffrl.experiment import dxdp_config
from diffrl.image_data import ImageBatches, read_image_array, read_image_folder, to_uint8, to_unit
from diffrl.image_experiment import _teacher_state, build_image_dxmi
from diffrl.image_metrics import save_grid
from diffrl.loop import LoopConfig, fit
from diffrl.run import RunDir
from diffrl.sampling import value_guided_sample
from diffrl.unet import build_unet, check_image_shape, load_pretrained_ddpm, save_pretrained_ddpm


def opt(default: Any, help: str, type: Any = None, choices: list[str] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass
class Args:
    # --- teacher, data, run folder
    teacher: str = opt("google/ddpm-cifar10-32", "pretrained DDPM: a hub id or a local diffusers folder")
    data: str = opt(None, "an image folder or a uint8 .npy/.npz array instead of torchvision's CIFAR-10", str)
    data_dir: str = opt("data", "where CIFAR-10 is downloaded and FID reference statistics are cached")
    out: str = opt("runs/cifar_dxmi", "run folder")
    resume: bool = opt(False, "continue the run in --out from its checkpoint")
    # --- DxMI, the paper's CIFAR-10 row
    horizon: int = opt(10, "T, sampler steps")
    last_sigma: float = opt(1e-3, "the last step's sigma, fixed (fix_last)")
    tau_entropy: float = opt(0.1, "tau1, weight of the entropy bonus log sigma_t")
    tau_velocity: float = opt(0.01, "tau2, weight of the velocity cost")
    gamma: float = opt(1.0, "energy regulariser")
    lr_sampler: float = opt(1e-7, "Adam learning rate of the sampler's UNet")
    lr_sigma: float = opt(1e-5, "Adam learning rate of the sampler's log sigmas")
    lr_value: float = opt(1e-5, "Adam learning rate of the value = energy network (one Adam for both steps)")
    batch_size: int = opt(128, "global batch, split across ranks")
    avr_decay: float = opt(0.99, "adaptive velocity regularisation EMA")
    time_cost: str = opt("sigmoid", "value-target time cost", choices=["sigmoid", "constant", "none"])
    sampler_grad_clip: float = opt(0.1, "gradient-norm clip of the sampler (after averaging over ranks)")
    hflip: bool = opt(True, "random horizontal flips of training images")
    energy_width: int = opt(128, "EnergyResNet width (128: about 5M parameters)")
    ema_decay: float = opt(None, "evaluate an EMA of the sampler's weights (default: none, as the paper)", float)
    # --- schedule
    steps: int = opt(78_000, "training iterations (200 epochs of CIFAR-10 at batch 128, the reference's length)")
    log_every: int = opt(50, "iterations between logged losses")
    fid_every: int = opt(390, "iterations between FID evaluations (390 = one CIFAR-10 epoch at batch 128)")
    checkpoint_every: int = opt(390, "iterations between checkpoints")
    # --- evaluation
    fid_samples: int = opt(10_000, "samples per FID evaluation during training (named fid10k)")
    fid_batch: int = opt(500, "sampling / feature batch per rank during evaluation")
    fid_weights: str = opt(None, "torch-fidelity Inception weights file (pt_inception / weights-inception-2015-12-05-6726825d.pth) for offline machines", str)
    fid_ref_images: int = opt(None, "training images in the FID reference statistics (default: all)", int)
    final_fid50k: bool = opt(False, "after training, FID of the best model on --final-samples samples (fid50k)")
    final_samples: int = opt(50_000, "samples of the final FID")
    guidance: float = opt(0.0, "value-guidance strength lambda for evaluation samples (paper: up to 0.5)")
    # --- machine
    seed: int = opt(0, "seed (rank r uses its own stream derived from it)")
    device: str = opt("auto", "auto, cpu or cuda", choices=["auto", "cpu", "cuda"])
    amp: str = opt("none", "autocast on GPUs (fp16 runs without loss scaling: prefer bf16)", choices=["none", "bf16", "fp16"])
    threads: int = opt(None, "torch CPU threads per process", int)
    progress: bool = opt(True, "progress bar on rank 0")
    smoke: bool = opt(False, "tiny CPU run of the whole script: a made-up teacher, images and feature network")
    dump_params: str = opt(None, argparse.SUPPRESS, str)  # test hook: each rank saves its final parameters here


# A smoke run changes sizes only; anything given on the command line still wins.
SMOKE = dict(batch_size=8, energy_width=8, steps=4, log_every=1, fid_every=2, checkpoint_every=2,
             fid_samples=64, fid_batch=32, final_samples=96, threads=1, out="runs/cifar_dxmi_smoke")
SMOKE_IMAGES, SMOKE_SIZE = 96, 16
# On --resume the run keeps its saved arguments; these may change (a longer run, moved files, ...).
RESUME_MAY_CHANGE = {"steps", "log_every", "fid_every", "checkpoint_every", "fid_batch", "final_fid50k", "final_samples",
                     "teacher", "data", "data_dir", "fid_weights", "device", "amp", "threads", "progress", "resume",
                     "dump_params", "out", "guidance"}


class SetupError(Exception):
    """Something the user has to fix before training can start (printed without a traceback)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv: list[str] | None = None) -> tuple[Args, set[str]]:
    """Args, and the names given explicitly on the command line."""
    def parser(suppress: bool) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
        for f in dataclasses.fields(Args):
            meta, flag = f.metadata, "--" + f.name.replace("_", "-")
            kw: dict[str, Any] = {"help": meta["help"], "dest": f.name}
            if suppress:
                kw["default"] = argparse.SUPPRESS
            else:
                kw["default"] = f.default
            if isinstance(f.default, bool):
                p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            else:
                p.add_argument(flag, type=meta["type"] or type(f.default), choices=meta["choices"], **kw)
        return p

    argv = sys.argv[1:] if argv is None else argv
    full = parser(False)
    if "--smoke" in argv:
        full.set_defaults(**SMOKE)
    args = Args(**vars(full.parse_args(argv)))
    return args, set(vars(parser(True).parse_args(argv)))


# ---------------------------------------------------------------- processes


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean_(self, x: Tensor) -> Tensor:
        """In-place average over ranks (identical result on every rank)."""
        if self.world > 1:
            dist.all_reduce(x)
            x.div_(self.world)
        return x


def init_processes(device: str) -> Dist:
    """One process (plain python) or a torchrun group: NCCL on GPUs, gloo on CPUs."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda, but CUDA is not available")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30), device_id=dev if cuda else None)
    return Dist(dist.get_rank() if world > 1 else 0, world, dev)


def rank_seed(seed: int, rank: int, stream: int) -> int:
    """Seeds of a rank's independent streams: 0 = torch's global RNG, 1 = data batches, 2 = evaluation noise."""
    return seed * 100_003 + stream * 10_007 + rank


def rank0_first(ctx: Dist, fn):
    """fn() on rank 0, then on the others (downloads and caches happen once)."""
    out = fn() if ctx.main else None
    ctx.barrier()
    return out if ctx.main else fn()


# ---------------------------------------------------------------- smoke inputs: same code path, tiny sizes


def make_smoke_inputs(folder: Path, seed: int) -> tuple[str, str]:
    """A tiny UNet teacher in the diffusers layout and a folder of 16x16 RGB images (smooth colour
    blobs), both deterministic in ``seed`` (every rank and every resume makes the same ones)."""
    from PIL import Image

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        save_pretrained_ddpm(DDPM(build_unet(SMOKE_SIZE, 3, (16, 32), layers_per_block=1)), folder / "teacher")
        coarse = torch.rand(SMOKE_IMAGES, 3, 4, 4) * 2 - 1
        images = F.interpolate(coarse, size=SMOKE_SIZE, mode="bilinear", align_corners=False)
        images = to_uint8(images + 0.05 * torch.randn_like(images))
    (folder / "images" / "all").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / "images" / "all" / f"{i:03d}.png")
    return str(folder / "teacher"), str(folder / "images")


class SmokeFeatures(nn.Module):
    """A fixed random CNN as the smoke run's FID feature network: uint8 (B, 3, H, W) -> (B, 32)."""

    num_features = 32

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float() / 127.5 - 1)


# ---------------------------------------------------------------- teacher and data


def load_teacher(args: Args, ctx: Dist) -> DDPM:
    try:
        return rank0_first(ctx, lambda: load_pretrained_ddpm(args.teacher))
    except (FileNotFoundError, ValueError) as e:
        raise SetupError(f"teacher: {e}") from e


def load_training_images(args: Args, ctx: Dist) -> tuple[Tensor, str]:
    """uint8 (N, C, H, W) training images and a tag naming them (for the FID cache)."""
    if args.data is not None:
        path = Path(args.data)
        try:
            if path.is_dir():
                images = read_image_folder(path)
            elif path.suffix in (".npy", ".npz"):
                images = read_image_array(path)
            else:
                raise FileNotFoundError(f"--data {path}: not an image folder or a .npy/.npz array (missing?)")
        except (FileNotFoundError, ValueError) as e:
            raise SetupError(str(e)) from e
        return images, "data-" + hashlib.sha1(images.numpy().tobytes()).hexdigest()[:12]

    from torchvision.datasets import CIFAR10

    def cifar() -> Tensor:
        try:
            ds = CIFAR10(args.data_dir, train=True, download=ctx.main)
        except Exception as e:  # offline (URLError), a broken archive, a missing folder on the other ranks
            raise SetupError(f"CIFAR-10 is not in {args.data_dir} and could not be downloaded ({e}); "
                             f"put cifar-10-python.tar.gz there or pass --data") from e
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    images = rank0_first(ctx, cifar)
    return images, f"cifar10-train{images.shape[0]}"


# ---------------------------------------------------------------- FID (torchmetrics on torch-fidelity Inception features)


def fid_name(n: int) -> str:
    """Metric names carry their sample count: fid10k, fid50k (fid64 in a smoke run)."""
    return f"fid{n // 1000}k" if n % 1000 == 0 else f"fid{n}"


def build_fid(args: Args) -> tuple[Any, str]:
    """The FID metric (reference statistics kept across resets) and a tag of its feature network.

    Inception weights: --fid-weights, or torch-fidelity's download. A missing file, a file that is not
    a state dict, one of the wrong shape, or a failed download is a SetupError."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if args.smoke and args.fid_weights is None:
        return FrechetInceptionDistance(feature=SmokeFeatures(), reset_real_features=False), "smoke-features-v1"
    if args.fid_weights is not None:
        path = Path(args.fid_weights).expanduser()
        if not path.is_file():
            raise SetupError(f"--fid-weights {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SetupError(f"--fid-weights {path}: not a PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise SetupError(f"--fid-weights {path}: expected a state dict of tensors")
        tag = "inception-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    else:
        tag = "inception-2015-12-05-6726825d"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric = FrechetInceptionDistance(feature=2048, reset_real_features=False, antialias=False,
                                              feature_extractor_weights_path=None if args.fid_weights is None else str(path))
    except RuntimeError as e:  # load_state_dict: missing keys or size mismatches
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise SetupError(f"--fid-weights {path} does not fit torch-fidelity's Inception v3 (2048 features): {detail}") from e
    except OSError as e:  # URLError and friends: no internet
        raise SetupError(f"could not download the FID Inception weights ({e}); on a machine with internet fetch "
                         f"{_inception_url()} and pass it with --fid-weights PATH") from e
    return metric, tag


def _inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def load_reference_stats(metric: Any, images: Tensor, cache: Path, batch: int, ctx: Dist) -> None:
    """Rank 0 holds the training images' feature statistics (from the cache, or computed once and
    cached); the other ranks hold zeros, so the sum over ranks at compute() is exact."""
    if not ctx.main:
        return
    if cache.is_file():
        stats = load_checkpoint(cache, ctx.device)
    else:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch):
                metric.update(images[i : i + batch].to(ctx.device), real=True)
        stats = {"sum": metric.real_features_sum, "cov_sum": metric.real_features_cov_sum, "n": metric.real_features_num_samples}
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint({k: v.cpu() for k, v in stats.items()}, cache)
    metric.real_features_sum = stats["sum"].to(ctx.device)
    metric.real_features_cov_sum = stats["cov_sum"].to(ctx.device)
    metric.real_features_num_samples = stats["n"].to(ctx.device)


def autocast(args: Args, ctx: Dist):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    return torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None)


def evaluate_fid(policy, energy, metric, n: int, args: Args, ctx: Dist) -> tuple[float, dict[str, float], Tensor]:
    """FID of n samples (split across ranks, the same noise at every evaluation), the samples'
    mean energy, and rank 0's first 64 samples for a grid."""
    n_local = n // ctx.world + (ctx.rank < n % ctx.world)
    g = torch.Generator(device=ctx.device).manual_seed(rank_seed(args.seed, ctx.rank, 2))
    energy_sum, grid = torch.zeros((), device=ctx.device), []
    for i in range(0, n_local, args.fid_batch):
        b = min(args.fid_batch, n_local - i)
        with autocast(args, ctx):
            x = value_guided_sample(policy, lambda y, t: energy(y), b, args.guidance, g, ctx.device)[-1].float()
        with torch.no_grad():
            energy_sum += energy(x).float().sum()
            metric.update(to_uint8(x), real=False)
        if sum(len(c) for c in grid) < 64:
            grid.append(x[:64].cpu())
    fid = float(metric.compute())  # sums the feature statistics over ranks
    metric.reset()  # fake statistics only (reset_real_features=False)
    energy_mean = float(ctx.mean_(energy_sum / max(n_local, 1)))
    return fid, {"energy_samples": energy_mean}, torch.cat(grid)[:64]


# ---------------------------------------------------------------- synchronised training


def experiment_config(args: Args) -> ExperimentConfig:
    """The library's config for build_image_dxmi (and config.yaml): the paper's CIFAR-10 row."""
    train = TrainConfig(
        horizon=args.horizon, schedule="var", teacher=args.teacher, tau_entropy=args.tau_entropy,
        tau_velocity=args.tau_velocity, gamma=args.gamma, lr_sampler=args.lr_sampler, lr_sigma=args.lr_sigma,
        lr_value=args.lr_value, lr_energy=args.lr_value, separate_energy=False, avr_decay=args.avr_decay,
        fix_last=True, last_sigma=args.last_sigma, value_target=args.time_cost, sampler_grad_clip=args.sampler_grad_clip,
        ema_decay=args.ema_decay, steps=args.steps, batch_size=args.batch_size, log_every=args.log_every,
        eval_every=args.fid_every, checkpoint_every=args.checkpoint_every,
    )
    image = ImageConfig(ebm_width=args.energy_width, ebm_mults=[1, 2, 2], hflip=args.hflip, eval_samples=args.fid_samples)
    config = ExperimentConfig(data=DataConfig(name=args.data or "cifar10"), train=train, image=image, seed=args.seed,
                              device="cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu", threads=args.threads)
    try:
        config.validate()
    except ValueError as e:
        raise SetupError(str(e)) from e
    return config


def average_gradients_before_step(optimizer: torch.optim.Optimizer, ctx: Dist, clip: float | None) -> None:
    """Before every optimizer.step(): average its parameters' gradients over ranks (one flat
    all-reduce), then clip their norm. DxDP's own clip is off; this one sees the averaged gradient."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def hook(opt, args, kwargs) -> None:
        if ctx.world > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = ctx.mean_(torch.cat([g.reshape(-1) for g in grads]))
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad = g.view_as(p)
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)

    optimizer.register_step_pre_hook(hook)


def average_avr_over_ranks(mdp, ctx: Dist) -> None:
    """AVR's EMA of the step sizes is linear in the batch statistic: averaging the updated s_t^2 over
    ranks gives exactly the update on the global batch."""
    update = mdp.update_velocity_scale

    def synced(chain: Tensor) -> None:
        update(chain)
        ctx.mean_(mdp.velocity_scale_sq)

    mdp.update_velocity_scale = synced


class Trainer:
    """DxMI.step under autocast with losses averaged over ranks, and a training state that holds every
    rank's RNG streams, the step count and the FID history (for diffrl.loop.fit)."""

    def __init__(self, dxmi: DxMI, args: Args, ctx: Dist) -> None:
        self.dxmi, self.args, self.ctx = dxmi, args, ctx
        self.step_count, self.fid_history = 0, []
        self._rng_to_restore: dict[str, Tensor] | None = None
        self._seconds: list[float] = []  # the last log_every iterations' durations

    def step(self) -> dict[str, Tensor]:
        if self._rng_to_restore is not None:  # after fit has set rank 0's CPU RNG everywhere
            self._set_rng(self._rng_to_restore)
            self._rng_to_restore = None
        t0 = time.perf_counter()
        with autocast(self.args, self.ctx):
            metrics = self.dxmi.step()
        keys = sorted(metrics)
        values = self.ctx.mean_(torch.stack([metrics[k].float() for k in keys]))
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        self._seconds.append(time.perf_counter() - t0)
        del self._seconds[: -self.args.log_every]
        self.step_count += 1
        out = dict(zip(keys, values.cpu()))
        out["perf/sec_per_iter"] = torch.tensor(sum(self._seconds) / len(self._seconds))
        if self.ctx.device.type == "cuda":
            out["perf/peak_mem_gib"] = torch.tensor(torch.cuda.max_memory_allocated(self.ctx.device) / 2**30)
        return out

    def _rng(self) -> dict[str, Tensor]:
        state = {"cpu": torch.get_rng_state(), "data": self.dxmi.data.generator.get_state()}
        if self.ctx.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.ctx.device)
        return state

    def _set_rng(self, state: dict[str, Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        self.dxmi.data.generator.set_state(state["data"])
        if "cuda" in state and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.ctx.device)

    def training_state(self) -> dict[str, Any]:
        """Collective: every rank calls it (fit saves at the same steps on all ranks)."""
        rngs = [None] * self.ctx.world
        if self.ctx.world > 1:
            dist.all_gather_object(rngs, {k: v.cpu() for k, v in self._rng().items()})
        else:
            rngs = [self._rng()]
        return {"dxmi": self.dxmi.training_state(), "rng": rngs, "world_size": self.ctx.world,
                "step": self.step_count, "fid_history": self.fid_history}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.dxmi.load_training_state(state["dxmi"])
        self.step_count, self.fid_history = state["step"], list(state["fid_history"])
        if state["world_size"] == self.ctx.world:
            self._rng_to_restore = state["rng"][self.ctx.rank]
        else:
            if self.ctx.main:
                print(f"resuming with {self.ctx.world} process(es) instead of {state['world_size']}: "
                      "the random streams restart (not an exact continuation)", file=sys.stderr)
            self._rng_to_restore = None
            torch.manual_seed(rank_seed(self.args.seed, self.ctx.rank, 0) + self.step_count)
            self.dxmi.data.generator.manual_seed(rank_seed(self.args.seed, self.ctx.rank, 1) + self.step_count)


class QuietRun(RunDir):
    """Ranks other than 0: the run folder, read-only (checkpoints are read, nothing is written)."""

    def save_checkpoint(self, state: dict[str, Any]) -> None: ...
    def save_model(self, state: dict[str, Any]) -> None: ...
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def truncate_metrics(self, after_step: int) -> None: ...


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, explicit = parse_args(argv)
    ctx = init_processes(args.device)
    try:
        return run(args, explicit, ctx)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def run(args: Args, explicit: set[str], ctx: Dist) -> dict[str, Any]:
    out = Path(args.out)
    # 1. arguments: a resumed run keeps its own, except RESUME_MAY_CHANGE given on the command line
    if args.resume:
        saved_path = out / "args.json"
        if not saved_path.is_file() or not (out / "checkpoint.pt").is_file():
            raise SetupError(f"--resume: no run to continue in {out} (args.json or checkpoint.pt missing)")
        saved = json.loads(saved_path.read_text())
        for name, value in saved.items():
            if name in explicit and name in RESUME_MAY_CHANGE:
                continue
            if name in explicit and getattr(args, name) != value and ctx.main:
                print(f"--resume: keeping the run's {name}={value!r} (ignoring {getattr(args, name)!r})", file=sys.stderr)
            setattr(args, name, value)
        args.resume = True
    elif (out / "checkpoint.pt").exists():
        raise SetupError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.amp != "none" and ctx.device.type != "cuda":
        raise SetupError(f"--amp {args.amp} needs a CUDA device; leave it at none on CPUs")
    if args.amp == "fp16" and ctx.main:
        print("--amp fp16: DxDP steps its own optimisers, so there is no loss scaling; small gradients may "
              "underflow (bf16 does not need scaling)", file=sys.stderr)
    if args.batch_size % ctx.world:
        raise SetupError(f"--batch-size {args.batch_size} must be divisible by the {ctx.world} processes")
    if args.fid_samples < 2 * ctx.world or args.final_samples < 2 * ctx.world:
        raise SetupError("FID needs at least 2 samples per process")

    # 2. everything that can be missing, checked before any training
    smoke_dir = None
    if args.smoke:
        smoke_dir = Path(tempfile.mkdtemp(prefix="cifar_dxmi_smoke_"))
        smoke_teacher, smoke_data = make_smoke_inputs(smoke_dir, args.seed)
        args.teacher = args.teacher if "teacher" in explicit else smoke_teacher  # an explicit --teacher / --data wins
        args.data = args.data if "data" in explicit else smoke_data
    try:
        config = experiment_config(args)  # validates the hyperparameters
        teacher = load_teacher(args, ctx)
        images, data_tag = load_training_images(args, ctx)
        shape = tuple(images.shape[1:])
        try:
            check_image_shape(teacher.eps_model, shape, "the training images")
        except ValueError as e:
            raise SetupError(str(e)) from e
        metric, feature_tag = rank0_first(ctx, lambda: build_fid(args))  # a download happens once
        metric = metric.to(ctx.device)
        return train(args, ctx, config, teacher, images, data_tag, metric, feature_tag, shape)
    finally:
        if smoke_dir is not None:
            shutil.rmtree(smoke_dir, ignore_errors=True)


def train(args, ctx, config, teacher, images, data_tag, metric, feature_tag, shape) -> dict[str, Any]:
    out = Path(args.out)
    # 3. the run folder (rank 0 writes), the FID reference statistics (cached in the data folder)
    if ctx.main:
        rundir = RunDir.open(out) if args.resume else RunDir.create(out, to_yaml(config))
        (out / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2) + "\n")
        (out / "grids").mkdir(exist_ok=True)
    else:
        rundir = QuietRun(out)
    ctx.barrier()
    n_ref = min(args.fid_ref_images or images.shape[0], images.shape[0])
    cache = Path(args.data_dir) / "fid_stats" / f"{data_tag}_{feature_tag}_n{n_ref}.pt"
    load_reference_stats(metric, images[:n_ref], cache, args.fid_batch, ctx)
    ctx.barrier()

    # 4. models: the sampler around the teacher's UNet, the energy = value, one Adam for the energy/value
    torch.manual_seed(args.seed)  # the same initial energy on every rank (and rank 0's broadcast below)
    m = build_image_dxmi(config, teacher, shape)
    for module in (m.policy, m.energy, m.mdp):
        module.to(ctx.device)
        if ctx.world > 1:
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, 0)
    shared = m.mdp.reward.optimizer  # Adam(energy.parameters(), lr_value): the energy step and the value steps
    agent = DxDP(m.policy, m.value, m.mdp, dataclasses.replace(dxdp_config(config.train), sampler_grad_clip=None),
                 value_optimizer=shared)
    average_gradients_before_step(agent.policy_optimizer, ctx, clip=args.sampler_grad_clip)
    average_gradients_before_step(shared, ctx, clip=None)
    average_avr_over_ranks(m.mdp, ctx)
    torch.manual_seed(rank_seed(args.seed, ctx.rank, 0))
    if ctx.device.type == "cuda":
        torch.cuda.manual_seed(rank_seed(args.seed, ctx.rank, 0))
    batches = ImageBatches(to_unit(images).to(ctx.device), args.batch_size // ctx.world,
                           rank_seed(args.seed, ctx.rank, 1), hflip=args.hflip)
    dxmi = DxMI(agent, m.mdp, batches, ema_decay=args.ema_decay)
    trainer = Trainer(dxmi, args, ctx)
    name = fid_name(args.fid_samples)

    # 5. evaluation: fidNk, an image grid, the FID history; model.pt keeps the best
    def evaluate() -> dict[str, float]:
        fid, extra, grid = evaluate_fid(dxmi.sampling_policy, m.energy, metric, args.fid_samples, args, ctx)
        trainer.fid_history.append({"step": trainer.step_count, name: fid})
        best = min(h[name] for h in trainer.fid_history)
        if ctx.main:
            save_grid(grid, out / "grids" / f"step_{trainer.step_count:07d}.png")
            (out / "fid_history.json").write_text(json.dumps(trainer.fid_history, indent=1) + "\n")
            message = f"step {trainer.step_count}: {name} {fid:.3f} (best {best:.3f})"
            print(message, file=sys.stderr, flush=True)
        sigmas = {f"sigma_{i}": float(s) for i, s in enumerate(m.policy.sigma.detach())}
        if ctx.device.type == "cuda":  # the evaluation's peak (Inception), kept apart from training's
            extra["peak_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
            torch.cuda.reset_peak_memory_stats(ctx.device)
        return {name: fid, **extra, **sigmas}

    def model_state() -> dict[str, Any]:
        return {"kind": "dxmi", "policy": dxmi.sampling_policy.state_dict(), "energy": m.energy.state_dict(),
                "mdp": m.mdp.state_dict(), **_teacher_state(teacher, shape)}

    loop = LoopConfig(args.steps, args.log_every, args.fid_every, args.checkpoint_every, select_metric=name)
    result = fit(trainer, rundir, loop, evaluate, model_state, resume=args.resume, progress=args.progress and ctx.main)
    if args.dump_params:  # test hook: this rank's trained parameters, before the best model is loaded below
        tensors = [*m.policy.parameters(), *m.energy.parameters(), m.mdp.velocity_scale_sq]
        Path(args.dump_params).mkdir(parents=True, exist_ok=True)
        torch.save({"flat": torch.cat([t.detach().float().reshape(-1).cpu() for t in tensors]), "step": trainer.step_count},
                   Path(args.dump_params) / f"rank{ctx.rank}.pt")

    # 6. the best model: a sample grid and, on request, fid50k
    ctx.barrier()
    best = load_checkpoint(out / "model.pt", ctx.device)
    dxmi.sampling_policy.load_state_dict(best["policy"])
    m.energy.load_state_dict(best["energy"])
    final = {"step": result["step"], "best_step": best["step"], f"best_{name}": result["best"],
             "fid_history": trainer.fid_history, "guidance": args.guidance}
    if args.final_fid50k:
        final_name = fid_name(args.final_samples)
        fid, _, grid = evaluate_fid(dxmi.sampling_policy, m.energy, metric, args.final_samples, args, ctx)
        final[final_name] = fid
        rundir.log(result["step"], {f"final/{final_name}": fid})
        rundir.close()
    else:
        with autocast(args, ctx):
            g = torch.Generator(device=ctx.device).manual_seed(rank_seed(args.seed, 0, 3))
            grid = value_guided_sample(dxmi.sampling_policy, lambda x, t: m.energy(x), 64, args.guidance, g, ctx.device)[-1].float()
    if ctx.main:
        save_grid(grid, out / "samples.png")
        (out / "final.json").write_text(json.dumps(final, indent=2) + "\n")
        print(json.dumps({k: v for k, v in final.items() if k != "fid_history"}), flush=True)
    return final


if __name__ == "__main__":
    try:
        main()
    except SetupError as e:
        print(f"cifar_dxmi.py: error: {e}", file=sys.stderr)
        sys.exit(2)
