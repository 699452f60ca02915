"""An energy-based anomaly detector trained by DxMI (no MCMC), on digits or on your own feature maps.

    python examples/anomaly_dxmi.py                                  # digits, class 3 held out
    python examples/anomaly_dxmi.py --holdout 1 --out runs/anomaly1
    python examples/anomaly_dxmi.py --features train.npy --test test.npy --labels labels.npy --out runs/mine

Digits: trains on the nine other classes, then prints the test AUROC of the trained energy and of
the pretrained autoencoder it started from (class K against the nine classes' test images).

Features: ``train.npy`` is a float array (N, C, H, W) of normal images' feature maps (e.g. a
pretrained backbone's features of MVTec-AD, extracted on your machine); each of the H * W
locations is one sample, normalised onto the unit sphere as in the paper. With ``--test`` (M, C,
H, W) and ``--labels`` (M,) (1 = anomalous) it prints the detection AUROC (each image scored by the
maximum of its energy map) and writes the localisation maps upsampled to ``--map-size``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from diffrl.anomaly import ReconstructionEnergy, auroc, energies
from diffrl.app import from_run, load_config, score, train
from diffrl.app.tasks.anomaly import read_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holdout", type=int, default=3, help="digits: the class held out and scored as the anomaly")
    parser.add_argument("--features", default=None, help="train on this (N, C, H, W) float .npy of normal feature maps instead of digits")
    parser.add_argument("--test", default=None, help="feature maps (M, C, H, W) to score")
    parser.add_argument("--labels", default=None, help="(M,) 0 / 1 labels of --test (1 = anomalous)")
    parser.add_argument("--map-size", type=int, default=224, help="side of the upsampled localisation maps")
    parser.add_argument("--out", default=None, help="the run folder (default runs/anomaly_<holdout or features name>)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.loop.steps=1000 seed=1")
    args = parser.parse_args()

    if args.features is None:
        out = Path(args.out or f"runs/anomaly_digits{args.holdout}")
        config = load_config("digits-anomaly", [f"data.holdout={args.holdout}", *args.overrides])
    else:
        out = Path(args.out or f"runs/anomaly_{Path(args.features).stem}")
        config = load_config("digits-anomaly", [f"data.name={args.features}", "data.normalize=sphere", *args.overrides])
    train(config, out)

    run = from_run(out)
    if args.features is None:
        task = run.task
        normal, anomalous = task.split("test"), task.anomalies("test")
        ae = ReconstructionEnergy(task.pretrained_autoencoder())
        for name, energy in (("DxMI energy", run.energy), ("pretrained autoencoder", ae)):
            print(f"{name}: test AUROC {auroc(energies(energy, normal), energies(energy, anomalous)):.3f} (class {args.holdout} vs the rest)")
        return
    if args.test is None:
        print(f"trained {out}; score feature maps with: diffrl score {out} --data FEATURES.npy --map-size {args.map_size}")
        return
    scores = score(out, read_features(args.test), map_size=args.map_size)
    np.save(out / "test_maps.npy", scores["maps"])
    print(f"wrote {out / 'test_maps.npy'} {scores['maps'].shape}")
    if args.labels is not None:
        labels = torch.from_numpy(np.load(args.labels)).bool()
        energy = torch.from_numpy(scores["energy"])
        print(f"detection AUROC {auroc(energy[~labels], energy[labels]):.3f}")


if __name__ == "__main__":
    main()
