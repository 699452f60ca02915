"""DxMI on CIFAR-10, the paper's row: fine-tune the pretrained 1000-step DDPM google/ddpm-cifar10-32
into a 10-step sampler by maximum-entropy inverse RL (DxDP as the RL algorithm), on the library.

    python examples/cifar_dxmi.py --out runs/cifar                               # one GPU (or the CPU)
    torchrun --standalone --nproc_per_node=4 examples/cifar_dxmi.py --out runs/cifar --amp bf16
    python examples/cifar_dxmi.py --out runs/cifar --resume train.loop.steps=100000
    python examples/cifar_dxmi.py --out runs/cifar --resume --final-fid50k --guidance 0.3
    python examples/cifar_dxmi.py --teacher models/ddpm --data-dir data --fid-weights pt_inception.pth
    python examples/cifar_dxmi.py --smoke                                        # the same path, tiny, on a CPU

The hyperparameters are the preset configs/cifar10.yaml (`diffrl config --show cifar10`); any of
them is a dotted override after the options (train.dxdp.lr_sampler=2e-7 seed=1). The run folder is
the library's (config.yaml, checkpoint.pt, model.pt = best fid10k, metrics.jsonl, tb/, grids/,
samples.png) plus final.json; `diffrl sample` / `diffrl evaluate` read it. Under torchrun the global
batch is split across processes, gradients and AVR's statistic are averaged, and rank 0 writes
(diffrl.distributed). FID reference statistics are cached in --data-dir/fid_stats/; --smoke keeps
its made-up teacher and images in --data-dir/cifar_dxmi_smoke_seed<seed>/ (the run folder names them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch.nn import functional as F

from diffrl.app import evaluate, load_config, train
from diffrl.app.pipeline import open_run
from diffrl.ddpm import DDPM
from diffrl.distributed import init_processes
from diffrl.image_data import to_uint8
from diffrl.unet import build_unet, save_pretrained_ddpm

# --smoke: sizes only (a tiny teacher, 16x16 images, a small fixed feature network); the code path is the real one.
SMOKE = ["image.features=small", "train.batch_size=8", "image.ebm_width=8", "image.eval_samples=64", "image.fid_batch=32",
         "train.loop.steps=4", "train.loop.log_every=1", "train.loop.eval_every=2", "train.loop.checkpoint_every=2",
         "threads=1", "device=cpu"]
SMOKE_IMAGES, SMOKE_SIZE = 128, 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Overrides: KEY=VALUE of configs/cifar10.yaml, "
                                "e.g. train.loop.steps=1000 image.eval_samples=5000 (a resumed run accepts train.loop.* and the flags' paths).")
    p.add_argument("--out", default=None, help="run folder (default runs/cifar_dxmi, or runs/cifar_dxmi_smoke)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--teacher", default=None, help="train.teacher: a hub id, a diffusers folder or a pretrain run")
    p.add_argument("--data", default=None, help="data.name: an image folder or a uint8 .npy/.npz instead of CIFAR-10")
    p.add_argument("--data-dir", default=None, help="data.root: where CIFAR-10 is downloaded and FID statistics are cached")
    p.add_argument("--fid-weights", default=None, help="torch-fidelity Inception weights file (offline machines)")
    p.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"], help="autocast on GPUs (prefer bf16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default: auto (cpu with --smoke)")
    p.add_argument("--final-fid50k", action="store_true", help="after training: FID of model.pt on --final-samples")
    p.add_argument("--final-samples", type=int, default=None, help="samples of the final FID (default 50000, 96 with --smoke)")
    p.add_argument("--guidance", type=float, default=0.0, help="value-guidance strength of the final FID (paper: up to 0.5)")
    p.add_argument("--smoke", action="store_true", help="a tiny CPU run of this script: made-up teacher, images and features")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.add_argument("--dump-params", default=None, help=argparse.SUPPRESS)  # test hook: each rank's final parameters
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (overrides look like key.sub=value)")
    args.overrides = extra
    return args


def make_smoke_inputs(folder: Path, seed: int) -> tuple[str, str]:
    """A tiny diffusers UNet teacher and a folder of 16x16 RGB images (smooth colour blobs) in ``folder``,
    deterministic in ``seed``. Kept (the run folder names them; sample, evaluate and --resume read them);
    written under a temporary name and renamed, so torchrun ranks racing to make them are safe."""
    if not folder.is_dir():
        from PIL import Image

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            save_pretrained_ddpm(DDPM(build_unet(SMOKE_SIZE, 3, (16, 32), layers_per_block=1)), tmp / "teacher")
            coarse = torch.rand(SMOKE_IMAGES, 3, 4, 4) * 2 - 1
            images = F.interpolate(coarse, size=SMOKE_SIZE, mode="bilinear", align_corners=False)
            images = to_uint8(images + 0.05 * torch.randn_like(images))
        (tmp / "images" / "all").mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp / "images" / "all" / f"{i:03d}.png")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder / "teacher"), str(folder / "images")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out or ("runs/cifar_dxmi_smoke" if args.smoke else "runs/cifar_dxmi"))
    final_samples = args.final_samples or (96 if args.smoke else 50_000)

    # 1. the config: the preset, --smoke's sizes, the flags, then the user's overrides (the last word wins)
    if args.fid_weights is not None and not Path(args.fid_weights).expanduser().is_file():
        raise FileNotFoundError(f"--fid-weights {args.fid_weights}: no such file")
    flags = {"data.root": args.data_dir, "image.fid_weights": args.fid_weights, "threads": args.threads, "device": args.device,
             "train.teacher": args.teacher, "data.name": args.data, "amp": args.amp}
    given = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.smoke and args.fid_weights is not None:
        given.append("image.features=inception")  # an explicit weights file wins over the smoke features
    if args.resume:  # the run keeps its config.yaml; the library refuses overrides that would change the run
        config, overrides = None, [*given, *args.overrides]
    else:
        smoke = SMOKE if args.smoke else []
        config, overrides = load_config("cifar10", [*smoke, *given, *args.overrides]), None
        if args.smoke:  # the made-up teacher and images, unless --teacher / --data (or an override) name others
            teacher, images = make_smoke_inputs(Path(config.data.root) / f"cifar_dxmi_smoke_seed{config.seed}", config.seed)
            config = load_config("cifar10", [*smoke, f"train.teacher={teacher}", f"data.name={images}", *given, *args.overrides])
    dump = dump_params_after_training(args.dump_params) if args.dump_params else None

    # 2. train (fresh or resumed): fid10k every epoch, the best model in model.pt
    result = train(config, out, resume=args.resume, progress=False if args.no_progress else None, overrides=overrides)
    if dump is not None:
        dump()

    # 3. the best model: its step and scores, and on request the final FID (every process takes its share)
    _, saved, model = open_run(out)
    ctx = init_processes(args.device or saved.device)  # the process group train() started, or one process
    final = {"run": str(out), "step": result["step"], "best_step": model["step"], "best": model["eval"]}
    if args.final_fid50k:
        final["final"] = evaluate(out, n=final_samples, guidance=args.guidance, ctx=ctx)
    if ctx.main:
        (out / "final.json").write_text(json.dumps(final, indent=2) + "\n")
        print(json.dumps(final), flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return final


def dump_params_after_training(folder: str):
    """Test hook: after training, every rank saves its flattened sampler, energy and MDP tensors to
    folder/rank<r>.pt (ranks must agree bitwise). It records what the pipeline hands to ``distribute``."""
    import diffrl.app.pipeline as pipeline

    real, parts = pipeline.distribute, {}

    def spy(ctx, agent, reward, mdp):
        parts.update(rank=ctx.rank, modules=[agent.policy, reward, mdp])
        real(ctx, agent, reward, mdp)

    def dump() -> None:
        pipeline.distribute = real
        tensors = [t for m in parts["modules"] for t in [*m.parameters(), *m.buffers()]]
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat([t.detach().reshape(-1).cpu() for t in tensors]), Path(folder) / f"rank{parts['rank']}.pt")

    pipeline.distribute = spy
    return dump


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"cifar_dxmi.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
