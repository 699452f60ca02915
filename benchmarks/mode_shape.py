"""Where a sampler's SW on 8 Gaussians comes from: the shape of each generated mode.

    python benchmarks/mode_shape.py runs/bench-toy2d/8gaussians/dxmi-tau0.1-s0 --which last

Each sample is assigned to its nearest mode centre; its offset from the centre is split into a
radial part (along the centre's direction) and a tangential part (along the circle). The data
have radial bias 0 and both standard deviations 0.5 / 1.414 = 0.354; every mode holds 1/8 of
the mass. Printed per run, with a fresh draw of the data as the reference row: test SW, radial
bias and std, tangential std, and the largest deviation of a mode's share from 1/8.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor

from diffrl.app import pipeline
from diffrl.data import EIGHT_GAUSSIANS_CENTRES, toy_data
from diffrl.metrics import sliced_wasserstein


def mode_shape(x: Tensor) -> dict[str, float]:
    """Radial bias and std, tangential std and the worst mode-share error of samples x (N, 2)."""
    nearest = torch.cdist(x, EIGHT_GAUSSIANS_CENTRES).argmin(1)
    centre = EIGHT_GAUSSIANS_CENTRES[nearest]
    radial_dir = centre / centre.norm(dim=1, keepdim=True)
    offset = x - centre
    radial = (offset * radial_dir).sum(1)
    tangential = offset[:, 1] * radial_dir[:, 0] - offset[:, 0] * radial_dir[:, 1]
    share = nearest.bincount(minlength=8).double() / x.shape[0]
    return {
        "radial_bias": float(radial.mean()),
        "radial_std": float(radial.std()),
        "tangential_std": float(tangential.std()),
        "worst_share_error": float((share - 1 / 8).abs().max()),
    }


def sampler_of(path: str, which: str, steps: int | None, schedule: str) -> pipeline.Run:
    """The run to sample: a DxMI run's ``which`` model, or a teacher run's ``steps``-step ``schedule`` chain."""
    _, config, state = pipeline.open_run(path)
    if config.data.name != "8gaussians":
        raise ValueError(f"{path} was trained on {config.data.name!r}, not 8gaussians")
    return pipeline.from_run(path, which if state["kind"] == "dxmi" else "best", steps, schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="8gaussians run folders (DxMI or teacher)")
    parser.add_argument("--which", choices=["best", "last"], default="last", help="DxMI runs: selected or final model")
    parser.add_argument("--steps", type=int, default=None, help="teacher runs: steps of its chain")
    parser.add_argument("--schedule", choices=["strided", "var"], default="strided", help="teacher runs: which chain")
    parser.add_argument("--guidance", type=float, default=0.0, help="DxMI runs: value-guidance strength lambda")
    args = parser.parse_args()
    print("| run | test SW | radial bias | radial std | tangential std | worst mode-share error |")
    print("|---|---|---|---|---|---|")
    for i, run in enumerate(args.runs):
        r = sampler_of(run, args.which, args.steps, args.schedule)
        test = r.task.raw["test"]  # data units
        # seed + 1: the sample seed pipeline.evaluate uses, so test SW matches `diffrl evaluate` (teachers: toy2d.py)
        samples = r.task.to_output(r.sample(test.shape[0], r.config.seed + 1, args.guidance))
        rows = {run: torch.from_numpy(samples)}
        if i == 0:
            rows = {"data (an independent draw)": toy_data("8gaussians", test.shape[0], r.config.seed + 777), **rows}
        for name, x in rows.items():
            s = mode_shape(x)
            print(
                f"| {name} | {sliced_wasserstein(x, test):.3f} | {s['radial_bias']:+.3f} | {s['radial_std']:.3f} "
                f"| {s['tangential_std']:.3f} | {s['worst_share_error']:.4f} |"
            )


if __name__ == "__main__":
    main()
