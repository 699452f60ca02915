"""The ``diffrl`` command line: pretrain, train, sample, evaluate and config, for every task.

    diffrl pretrain --preset 8gaussians --out runs/teacher
    diffrl train    --preset 8gaussians --out runs/dxmi --teacher runs/teacher train.tau_entropy=0.1
    diffrl train    --out runs/dxmi --resume train.loop.steps=8000
    diffrl train    --preset 8gaussians --teacher runs/teacher --out runs/pg --agent examples.custom_agent:make
    diffrl sample   runs/teacher --n 10000 --steps 1000 --out teacher1000.npy
    diffrl evaluate runs/dxmi --which last --guidance 0.3 --split val
    diffrl config   --show digits
    diffrl train    --preset digits-anomaly --out runs/anomaly3 data.holdout=3
    diffrl score    runs/anomaly3 --data features.npy --map-size 224

Every bad input ends in one line on stderr and exit code 2, before any work starts. Nothing
here imports torch until a job runs, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from importlib import resources
from pathlib import Path

__all__ = ["main"]

OVERRIDES_HELP = (
    "Config overrides: any field as a dotted key=value after the options, e.g. train.tau_entropy=0.01 "
    "train.loop.steps=8000 data.n_eval=5000 seed=1. Sections: data, net, pretrain, train (train.dxdp: DxDP's "
    "options, train.loop: steps and intervals), image, and seed / device / threads / amp / task. "
    "`diffrl config --show PRESET` prints every field with its value."
)


def _presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("diffrl.configs").iterdir() if p.name.endswith(".yaml"))


def _number(kind, low: float, what: str):
    """An argparse type: ``kind`` (int / float), finite and >= ``low``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a{'n integer' if kind is int else ' number'}, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{what} must be a finite number >= {low}, got {text}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit code 2), like every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diffrl", description="DxMI / DxDP: diffusion sampling as reinforcement learning.", epilog=OVERRIDES_HELP)
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB", parser_class=_Parser)
    for name, help_text in (("pretrain", "train a DDPM teacher"), ("train", "train a few-step sampler (DxMI by default) from a teacher")):
        job = jobs.add_parser(name, help=help_text, description=help_text, epilog=OVERRIDES_HELP)
        job.add_argument("--preset", default=None, help=f"a preset ({', '.join(_presets())}) or a YAML file")
        job.add_argument("--out", required=True, help="the run folder: new or empty (or, with --resume, the run to continue)")
        job.add_argument("--data", default=None, help="sets data.name: a toy set, a .npy array (N, D), digits, cifar10, an image folder or a uint8 .npy/.npz")
        job.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint (overrides: train.loop.*, threads, ...)")
        job.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
        if name == "train":
            job.add_argument("--teacher", default=None, help="sets train.teacher: a pretrain run folder (images also: a diffusers folder or hub id)")
            job.add_argument("--agent", default=None, help="sets train.agent: dxdp, reinforce, ppo or MODULE:FACTORY, FACTORY(policy, mdp, config) -> Agent")
            job.add_argument("--reward", default=None, help="sets train.reward: energy or MODULE:FACTORY, FACTORY(event_shape, config) -> RewardModel")

    job = jobs.add_parser("sample", help="draw samples from a run into a .npy file (points: data units; images: uint8 (N, H, W, C) and a PNG grid)")
    _run_options(job)
    job.add_argument("--n", type=_number(int, 1, "--n"), default=10_000, help="number of samples")
    job.add_argument("--out", default=None, help="output .npy (default: RUN/samples_<which>[_g<guidance>]_<steps>.npy)")
    job.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    job = jobs.add_parser("evaluate", help="scores of a run on its test split, printed as JSON")
    _run_options(job)
    job.add_argument("--n", type=_number(int, 2, "--n"), default=None, help="number of samples (default: as many as the split holds)")
    job.add_argument("--split", choices=["val", "test"], default="test", help="score against this split (choose settings such as --guidance on val)")
    job.add_argument("--data", default=None, help="point runs: score against another .npy array of the same D")

    job = jobs.add_parser("score", help="anomaly runs: energies of new data (higher = more anomalous) into a .npy file")
    job.add_argument("run", help="a run folder of task anomaly")
    job.add_argument("--data", required=True, help="a float .npy array in the training data's units: vectors (N, C) or feature maps (N, C, H, W)")
    job.add_argument("--out", default=None, help="output .npy of the (N,) scores (default: RUN/scores_<data name>.npy); maps go to <out>_maps.npy")
    job.add_argument("--which", choices=["best", "last"], default="best", help="the model kept by the run, or the final training state")
    job.add_argument("--map-size", type=_number(int, 1, "--map-size"), default=None,
                     help="feature maps: upsample the (H, W) energy maps bilinearly to this square size (localisation)")
    job.add_argument("--force", action="store_true", help="overwrite --out if it exists")

    job = jobs.add_parser("config", help="print a preset's resolved config (every field, with overrides applied)")
    job.add_argument("--show", metavar="PRESET", default=None, help=f"a preset ({', '.join(_presets())}) or a YAML file; default: the defaults")
    return parser


def _run_options(job: argparse.ArgumentParser) -> None:
    job.add_argument("run", help="a run folder (pretrain or train)")
    job.add_argument("--which", choices=["best", "last"], default="best", help="DxMI runs: the model selected on validation, or the final training state")
    job.add_argument("--steps", type=_number(int, 1, "--steps"), default=None, help="teacher runs: steps of its chain (default: all)")
    job.add_argument("--schedule", choices=["strided", "var", "ddim"], default="strided",
                     help="teacher runs: its strided ancestral chain, the VAR chain a DxMI run starts from, or deterministic DDIM")
    job.add_argument("--seed", type=_number(int, 0, "--seed"), default=0, help="seed of the sampling noise")
    job.add_argument("--guidance", type=_number(float, 0, "--guidance"), default=0.0, help="DxMI runs: value-guidance strength lambda (spec section 6)")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        unknown = [a for a in extra if "=" not in a or a.startswith("-")]
        if unknown or (extra and args.job not in ("pretrain", "train", "config")):
            parser.error(f"unrecognized arguments: {' '.join(unknown or extra)} (overrides look like key.sub=value; pretrain, train and config take them)")
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return int(e.code or 0)
    try:
        result = _run(args, extra)
        if result is not None:
            print(json.dumps(result))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"diffrl {args.job}: error: {message}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace, overrides: list[str]) -> dict | None:
    from .config import load_config, to_yaml

    if args.job == "config":
        config = load_config(args.show, overrides)
        sys.stdout.write(to_yaml(config))
        return None
    from . import pipeline

    if args.job in ("pretrain", "train"):
        flags = {"data.name": args.data}
        if args.job == "train":
            flags.update({"train.teacher": args.teacher, "train.agent": args.agent, "train.reward": args.reward})
        given = [f"{k}={v}" for k, v in flags.items() if v is not None]
        if args.resume:
            if args.preset is not None or given:
                raise ValueError(f"--resume continues {args.out} with its saved config: --preset, --data, --teacher, --agent and --reward do not apply")
            config = None
        else:
            config = load_config(args.preset, overrides + given)
            overrides = []
        job = pipeline.pretrain if args.job == "pretrain" else pipeline.train
        progress = False if args.no_progress else None
        result = job(config, args.out, resume=args.resume, progress=progress, overrides=overrides)
        return {"run": args.out, **result}
    _threads_of(args.run)
    if args.job == "score":
        from .tasks.anomaly import score_file

        return score_file(args.run, args.data, args.out, args.force, args.which, args.map_size)
    if args.job == "sample":
        out = Path(args.out) if args.out else Path(args.run) / _sample_name(args)
        if out.suffix != ".npy":
            raise ValueError(f"--out {out} must end in .npy")
        if out.exists() and not args.force:
            raise FileExistsError(f"{out} exists; pass --force to overwrite it or choose another --out")
        run = pipeline.from_run(args.run, args.which, args.steps, args.schedule)
        samples = run.sample(args.n, args.seed, args.guidance)
        from ..checkpoint import save_array

        output = run.task.to_output(samples)
        save_array(out, output)
        result = {"out": str(out), "shape": list(output.shape), "kind": run.kind}
        if run.config.task == "images":
            result["grid"] = str(_grid(samples, out.with_suffix(".png")))
        return result
    return pipeline.evaluate(args.run, args.n, args.steps, args.seed, args.which, args.schedule, args.guidance, args.split, args.data)


def _threads_of(run: str) -> None:
    """Sample and evaluate with the run's threads (or its task's default), as training did."""
    import torch

    from .pipeline import open_run
    from .tasks import DEFAULT_THREADS

    config = open_run(run, need_model=False)[1]
    threads = config.threads if config.threads is not None else DEFAULT_THREADS[config.task]
    if threads is not None:
        torch.set_num_threads(threads)


def _grid(samples, path: Path) -> Path:
    from ..image_metrics import save_grid

    return save_grid(samples[:100], path, scale=max(1, 32 // samples.shape[-1]))


def _sample_name(args: argparse.Namespace) -> str:
    guidance = f"_g{args.guidance:g}" if args.guidance else ""
    return f"samples_{args.which}{guidance}_{args.steps or 'model'}.npy"


if __name__ == "__main__":
    raise SystemExit(main())
