"""Issue 15's table: the energy as an anomaly detector on scikit-learn's digits, leave one class out.

    python benchmarks/anomaly.py                                   # 10 classes x 3 seeds, every method
    python benchmarks/anomaly.py --classes 1 7 --seeds 0 --split val --root runs/tune --set train.lr_energy=3e-4
    python benchmarks/anomaly.py --quick                           # tiny runs: checks the plumbing

Per held-out class K and seed, every method trains through the pipeline (``diffrl train --preset
digits-anomaly data.holdout=K seed=S`` plus the method's overrides) and is scored by the AUROC of
its energy separating class K from the nine normal classes (task anomaly's splits; ``--split val``
for tuning, ``test`` for the table). Methods:

    ae               the pretrained autoencoder's reconstruction error (the start of every other method)
    dxmi             DxMI, tau = 0.1 (tau_entropy = tau_velocity)
    dxmi_tau0        DxMI, tau = 0
    langevin         contrastive divergence with short-run Langevin negatives from the same start
    langevin_replay  the same with a replay buffer of negatives

A run diverged when it stopped on a non-finite loss, or when its energy ordered the training data
no better than chance against its own negatives at the end (the last logged energy gap, mean
E(negatives) - mean E(data), below 0). Writes --out (docs/results/anomaly.json), the gap curves
(anomaly_gap.png beside it) and prints the markdown table of docs/anomaly.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _timing import train_seconds

METHODS = {
    "dxmi": [],
    "dxmi_tau0": ["train.tau_entropy=0", "train.tau_velocity=0"],
    "langevin": ["train.agent=langevin", "train.horizon=20"],
    "langevin_replay": ["train.agent=langevin", "train.horizon=20", "anomaly.replay=2000"],
}
TABLE = ("dxmi", "dxmi_tau0", "langevin", "langevin_replay", "ae")
QUICK = ["anomaly.ae_steps=50", "train.loop.steps=20", "train.loop.eval_every=10", "train.loop.checkpoint_every=10",
         "train.loop.log_every=5", "net.hidden=32", "anomaly.ae_hidden=32", "data.n_eval=64"]


def _config(root: str, holdout: int, seed: int, overrides: list[str]):
    from diffrl.app.config import load_config

    return load_config("digits-anomaly", [f"data.holdout={holdout}", f"seed={seed}", "threads=1", f"data.root={Path(root, 'data')}", *overrides])


def _auroc(task, energy, split: str) -> float:
    from diffrl.anomaly import auroc, energies

    return auroc(energies(energy, task.split(split)), energies(energy, task.anomalies(split)))


def run_ae(root: str, holdout: int, seed: int, overrides: list[str]) -> dict:
    """The pretrained autoencoder's reconstruction error (cached: the other methods start from it)."""
    import torch

    from diffrl.anomaly import ReconstructionEnergy
    from diffrl.app.tasks import make_task

    torch.set_num_threads(1)
    task = make_task(_config(root, holdout, seed, overrides))
    start = time.time()
    energy = ReconstructionEnergy(task.pretrained_autoencoder())
    seconds = time.time() - start
    return {"method": "ae", "holdout": holdout, "seed": seed, "seconds": seconds, "diverged": False,
            **{split: _auroc(task, energy, split) for split in ("val", "test")}}


def run_method(root: str, method: str, holdout: int, seed: int, overrides: list[str]) -> dict:
    """Train (or reuse) one run; its AUROC on val and test, divergence, and energy-gap curve."""
    import torch

    from diffrl.app import pipeline
    from diffrl.loop import NonFiniteLossError
    from diffrl.run import RunDir

    torch.set_num_threads(1)
    run = Path(root, method, f"k{holdout}-s{seed}")
    failure = run / "bench_failure.json"
    config = _config(root, holdout, seed, [*METHODS[method], *overrides])

    def train() -> None:
        try:
            pipeline.train(config, run, resume=(run / "checkpoint.pt").is_file(), progress=False)
        except NonFiniteLossError as e:
            failure.write_text(json.dumps({"error": str(e)}))

    seconds = train_seconds(run, train)
    rows = RunDir(run).read_metrics()
    curve = [(r["step"], r["energy_model"] - r["energy_data"]) for r in rows if "energy_model" in r]
    out = {"method": method, "holdout": holdout, "seed": seed, "seconds": seconds, "gap_curve": curve}
    out["diverged"] = failure.is_file() or not curve or curve[-1][1] < 0
    restored = pipeline.from_run(run)  # its last model: task anomaly selects none
    for split in ("val", "test"):
        out[split] = _auroc(restored.task, restored.energy, split)
    return out


def summarise(runs: list[dict], classes: list[int], split: str) -> dict:
    """Per method: mean and std over seeds of the mean AUROC over classes, per-class means and stds,
    divergences and seconds per run."""
    table = {}
    for method in TABLE:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        per_seed = [statistics.fmean(r[split] for r in mine if r["seed"] == s) for s in seeds]
        per_class = [[r[split] for r in mine if r["holdout"] == k] for k in classes]
        seconds = [r["seconds"] for r in mine if r["seconds"] is not None]
        table[method] = {
            "auroc_mean": statistics.fmean(per_seed),
            "auroc_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
            "per_class": [statistics.fmean(v) for v in per_class],
            "per_class_std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_class],
            "diverged": sum(r["diverged"] for r in mine),
            "runs": len(mine),
            "seconds_per_run": statistics.fmean(seconds) if seconds else None,
        }
    return table


def markdown(table: dict, classes: list[int], split: str) -> str:
    head = "| method | mean AUROC (" + split + ") | " + " | ".join(str(k) for k in classes) + " | diverged | s / run |"
    lines = [head, "|" + "---|" * (len(classes) + 4)]
    for method, row in table.items():
        cells = " | ".join(f"{m:.3f}" for m in row["per_class"])
        sec = f"{row['seconds_per_run']:.1f}" if row["seconds_per_run"] is not None else "?"
        lines.append(f"| {method} | {row['auroc_mean']:.3f} ± {row['auroc_std']:.3f} | {cells} | {row['diverged']} / {row['runs']} | {sec} |")
    return "\n".join(lines)


def plot_gaps(runs: list[dict], path: Path) -> None:
    """Energy gap E(negatives) - E(data) over training, one thin line per run, for each trained method."""
    from diffrl.plots import plt

    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    if not methods:
        return
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.4), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for r in runs:
            if r["method"] == method and r["gap_curve"]:
                steps, gaps = zip(*r["gap_curve"])
                ax.plot(steps, gaps, lw=0.6, alpha=0.5, color="tab:red" if r["diverged"] else "tab:blue")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(method)
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("E(negatives) - E(data)")
    fig.suptitle("energy gap over training, every class and seed (red: diverged)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(TABLE), choices=list(TABLE))
    parser.add_argument("--split", choices=["val", "test"], default="test", help="the split of the table (tune on val)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every run (tuning)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--root", default=None, help="run folders (default runs/bench-anomaly)")
    parser.add_argument("--out", default=None, help="default docs/results/anomaly.json (ROOT/anomaly.json with --quick or --split val)")
    parser.add_argument("--quick", action="store_true", help="tiny runs to check the plumbing")
    args = parser.parse_args()
    root = args.root or ("runs/bench-anomaly-quick" if args.quick else "runs/bench-anomaly")
    default_out = Path(root, "anomaly.json") if args.quick or args.split == "val" else Path("docs/results/anomaly.json")
    out = Path(args.out) if args.out else default_out
    overrides = [*(QUICK if args.quick else []), *args.set]
    start = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = [pool.submit(run_ae, root, k, s, overrides) for k in args.classes for s in args.seeds if "ae" in args.methods]
        runs = [f.result() for f in jobs]  # every trained method starts from these autoencoders
        jobs = [pool.submit(run_method, root, m, k, s, overrides) for m in METHODS if m in args.methods for k in args.classes for s in args.seeds]
        runs += [f.result() for f in jobs]
    table = summarise(runs, args.classes, args.split)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_gaps(runs, out.with_name("anomaly_gap.png"))
    result = {
        "digits": table,
        "split": args.split,
        "classes": args.classes,
        "seeds": args.seeds,
        "overrides": overrides,
        "runs": runs,
        "meta": {
            "command": " ".join(["python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch threads 1",
            "python": platform.python_version(),
            "total_seconds": time.time() - start,
        },
    }
    out.write_text(json.dumps(result, indent=1))
    print(markdown(table, args.classes, args.split))
    print(f"\nwrote {out} and {out.with_name('anomaly_gap.png')} in {time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
