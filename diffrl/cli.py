"""The ``diffrl`` command line: pretrain, train, sample, evaluate.

    diffrl pretrain --preset 8gaussians --out runs/teacher
    diffrl train    --preset 8gaussians --out runs/dxmi --teacher runs/teacher train.tau_entropy=0.1
    diffrl train    --out runs/dxmi --resume
    diffrl sample   runs/teacher --n 10000 --steps 1000 --out teacher1000.npy
    diffrl evaluate runs/dxmi
    diffrl evaluate runs/dxmi --guidance 0.3 --split val

Image data (data.name = digits, an image folder or a uint8 .npy / .npz array) run the same jobs
through ``diffrl.image_experiment``:

    diffrl pretrain --preset digits --out runs/digits-teacher
    diffrl train    --preset digits --teacher runs/digits-teacher --out runs/digits-dxmi
    diffrl sample   runs/digits-dxmi --guidance 0.3
    diffrl evaluate runs/digits-dxmi
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .config import available_presets, load_config

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffrl", description="DxMI / DxDP: diffusion sampling as reinforcement learning.")
    parser.epilog = "pretrain and train also take dotted config overrides, e.g. train.tau_entropy=0.01"
    jobs = parser.add_subparsers(dest="job", required=True)

    for name, help_text in (("pretrain", "train a DDPM teacher"), ("train", "train DxMI (from a teacher run or from scratch)")):
        job = jobs.add_parser(name, help=help_text)
        job.add_argument("--preset", default=None, help=f"a preset ({', '.join(available_presets())}) or a YAML file")
        job.add_argument("--out", required=True, help="run folder")
        job.add_argument("--data", default=None, help="a toy set name or a .npy array (N, D); sets data.name")
        job.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
        job.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "train":
            job.add_argument("--teacher", default=None, help="teacher run folder; sets train.teacher")

    job = jobs.add_parser("sample", help="draw samples (data units) from a run into a .npy file")
    job.add_argument("run")
    job.add_argument("--n", type=int, default=10_000)
    job.add_argument("--steps", type=int, default=None, help="teacher runs: steps of its chain (default: all)")
    job.add_argument("--seed", type=int, default=0)
    job.add_argument("--out", default=None, help="output .npy (default: RUN/samples_<steps>.npy)")
    _add_guidance(job)
    _add_which(job)

    job = jobs.add_parser("evaluate", help="test-split metrics of a run, printed as JSON")
    job.add_argument("run")
    job.add_argument("--n", type=int, default=None)
    job.add_argument("--steps", type=int, default=None)
    job.add_argument("--seed", type=int, default=0)
    job.add_argument("--data", default=None, help="evaluate against another .npy array of the same D")
    job.add_argument("--split", choices=["val", "test"], default="test", help="point-data runs: score against this split")
    _add_guidance(job)
    _add_which(job)
    return parser


def _add_guidance(job: argparse.ArgumentParser) -> None:
    job.add_argument("--guidance", type=float, default=0.0, help="DxMI runs: value-guidance strength lambda (spec 6)")


def _add_which(job: argparse.ArgumentParser) -> None:
    job.add_argument(
        "--which", choices=["best", "last"], default="best",
        help="point-data DxMI runs: the model selected on validation SW, or the final training state",
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown or (extra and args.job not in ("pretrain", "train")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    from . import experiment, image_experiment

    try:
        if args.job in ("pretrain", "train"):
            overrides = extra
            if args.data is not None:
                overrides.append(f"data.name={args.data}")
            teacher = getattr(args, "teacher", None)
            if teacher is not None:
                overrides.append(f"train.teacher={teacher}")
            if args.resume:
                if not Path(args.out, "checkpoint.pt").is_file():
                    raise FileNotFoundError(f"nothing to resume: {args.out} has no checkpoint.pt")
                config, images = None, image_experiment.is_image_run(args.out)
            else:
                config = load_config(args.preset, overrides)
                images = image_experiment.is_image_config(config)
            if teacher is not None and not images and not Path(teacher).is_dir():
                raise FileNotFoundError(f"teacher run folder not found: {teacher}")
            jobs = image_experiment if images else experiment
            job = jobs.pretrain if args.job == "pretrain" else jobs.train
            result = job(config, args.out, resume=args.resume, progress=not args.no_progress)
            print(json.dumps({"run": args.out, **result}, default=float))
        elif args.job == "sample":
            out = args.out or str(Path(args.run) / f"samples_{args.steps or 'model'}.npy")
            if image_experiment.is_image_run(args.run):
                _best_only(args.which)
                samples = image_experiment.sample(args.run, args.n, args.steps, args.seed, args.guidance, grid=Path(out).with_suffix(".png"))
            else:
                samples = experiment.sample(args.run, args.n, args.steps, args.seed, which=args.which, guidance=args.guidance)
            np.save(out, samples)
            print(json.dumps({"out": out, "shape": list(samples.shape)}))
        elif image_experiment.is_image_run(args.run):
            _best_only(args.which)
            if args.data is not None or args.split != "test":
                raise ValueError("--data and --split apply to point-data runs only; image runs are scored on their own test split")
            print(json.dumps(image_experiment.evaluate(args.run, args.n, args.steps, args.seed, args.guidance)))
        else:
            report = experiment.evaluate(
                args.run, args.n, args.steps, args.seed, args.data, which=args.which, guidance=args.guidance, split=args.split
            )
            print(json.dumps(report))
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"diffrl {args.job}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _best_only(which: str) -> None:
    """Image runs keep one model (the best validation FD): --which last has nothing to load."""
    if which != "best":
        raise ValueError("--which last applies to point-data DxMI runs only; image runs keep their selected model")


if __name__ == "__main__":
    raise SystemExit(main())
