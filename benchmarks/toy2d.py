"""The paper's Table 1 re-measured on this machine, plus 2spirals and checkerboard.

    python benchmarks/toy2d.py --seeds 0 1 2 --workers 2

For each data set and seed: a DDPM teacher (1000 steps), evaluated with its own chain at
T = 5, 10, 100, 1000 strided steps and with the naive 5-step VAR chain DxMI starts from; then
DxMI at T = 5 with tau in {0, 0.01, 0.1, 1} from the teacher and tau = 0.1 from scratch
(8gaussians), tau = 0.1 from the teacher (the others). Every number is a test-split metric,
of the run's selected model (best validation SW) and of its final state; the final state is
also sampled with value guidance (spec section 6), its strength lambda chosen per run on the
validation split from GUIDANCE. Runs are resumable: finished runs are skipped.
Writes docs/results/toy2d.json and prints the markdown table of docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from _timing import train_seconds

TAUS = (0.0, 0.01, 0.1, 1.0)
DDPM_STEPS = (5, 10, 100, 1000)
SCRATCH = ["train.dxdp.lr_sampler=1e-4", "train.dxdp.lr_sigma=1e-3", "train.loop.steps=6000"]
GUIDANCE = (0.1, 0.2, 0.3, 0.5)


def _finished(run: Path) -> bool:
    return (run / "model.pt").is_file() and (run / "samples.npy").is_file()


def evaluate_teacher(run: Path, steps: int, seed: int, schedule: str = "strided") -> dict:
    """Test scores of a teacher run's ``steps``-step ``schedule`` chain (``pipeline.evaluate``)."""
    from diffrl.app import pipeline

    return {**pipeline.evaluate(run, steps=steps, seed=seed, schedule=schedule), "schedule": schedule}


def run_teacher(root: str, dataset: str, seed: int, overrides: list[str]) -> dict:
    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    run = Path(root, dataset, f"teacher-s{seed}")

    def train() -> None:
        config = load_config(dataset, [f"seed={seed}", "threads=1", *overrides])
        pipeline.pretrain(config, run, resume=(run / "config.yaml").is_file(), progress=False)

    wall = train_seconds(run, train, finished=_finished(run))
    rows = {}
    for steps in DDPM_STEPS:
        rows[f"ddpm_{steps}"] = evaluate_teacher(run, steps, seed)
    rows["naive_var_5"] = evaluate_teacher(run, 5, seed, schedule="var")
    return {"dataset": dataset, "seed": seed, "teacher_seconds": wall, "rows": rows}


def run_dxmi(root: str, dataset: str, seed: int, name: str, overrides: list[str]) -> dict:
    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    run = Path(root, dataset, f"{name}-s{seed}")

    def train() -> None:
        config = load_config(dataset, [f"seed={seed}", "threads=1", *overrides])
        pipeline.train(config, run, resume=(run / "config.yaml").is_file(), progress=False)

    wall = train_seconds(run, train, finished=_finished(run))
    best, last = pipeline.evaluate(run, seed=seed), pipeline.evaluate(run, seed=seed, which="last")
    val_sw = {g: pipeline.evaluate(run, seed=seed, which="last", guidance=g, split="val")["sw"] for g in GUIDANCE}
    guidance = min(val_sw, key=val_sw.get)
    guided = pipeline.evaluate(run, seed=seed, which="last", guidance=guidance)
    return {
        "dataset": dataset, "seed": seed, "name": name, "seconds": wall, "test": best, "test_last": last,
        "val_sw_by_guidance": val_sw, "test_last_guided": guided,
    }


def _one_thread() -> None:
    """Each worker uses one torch thread, evaluations included (two workers share the 2 cores)."""
    import torch

    torch.set_num_threads(1)


class _InlineExecutor:
    """--workers 1: every job runs in this process, in order (no pool whose worker can die unseen)."""

    def __enter__(self) -> "_InlineExecutor":
        _one_thread()
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


def mean_std(values: list[float | None]) -> dict:
    """Mean and std of the known values (None: a time not recorded)."""
    known = [v for v in values if v is not None]
    if not known:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(known), "std": statistics.stdev(known) if len(known) > 1 else 0.0, "n": len(known)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", default="runs/bench-toy2d")
    parser.add_argument("--datasets", nargs="+", default=["8gaussians", "2spirals", "checkerboard"])
    parser.add_argument("--out", default="docs/results/toy2d.json")
    parser.add_argument("--quick", action="store_true", help="tiny runs to check the plumbing")
    parser.add_argument("--taus", type=float, nargs="+", default=list(TAUS), help="8gaussians' tau sweep (the others: 0.1)")
    parser.add_argument("--no-scratch", action="store_true", help="skip 8gaussians' from-scratch row")
    parser.add_argument("--teachers-only", action="store_true", help="train and evaluate the teachers, then stop")
    parser.add_argument("--keep-from", default=None, help="an earlier toy2d.json: its table rows not rerun here are kept under 'earlier'")
    args = parser.parse_args()
    quick = ["pretrain.steps=200", "train.loop.steps=100", "train.loop.eval_every=50", "data.n_eval=1000"] if args.quick else []
    start = time.time()

    pool_of = _InlineExecutor() if args.workers == 1 else ProcessPoolExecutor(args.workers, initializer=_one_thread)
    with pool_of as pool:
        teachers = [pool.submit(run_teacher, args.root, ds, s, quick) for ds in args.datasets for s in args.seeds]
        teacher_results = [f.result() for f in teachers]
        if args.teachers_only:
            return
        specs = []
        for ds in args.datasets:
            taus = args.taus if ds == "8gaussians" else (0.1,)
            for s in args.seeds:
                teacher = f"train.teacher={Path(args.root, ds, f'teacher-s{s}')}"
                for tau in taus:
                    o = [teacher, f"train.tau_entropy={tau}", f"train.tau_velocity={tau}", *quick]
                    specs.append((ds, s, f"dxmi-tau{tau}", o))
                if ds == "8gaussians" and not args.no_scratch:
                    specs.append((ds, s, "dxmi-scratch-tau0.1", [*SCRATCH, *quick]))
        specs.sort(key=lambda spec: spec[2] != "dxmi-tau0.1")  # the headline rows first
        jobs = [pool.submit(run_dxmi, args.root, *spec) for spec in specs]
        dxmi_results = [f.result() for f in jobs]
    wall = time.time() - start

    table: dict[str, dict] = {}
    for ds in args.datasets:
        rows: dict[str, dict] = {}
        for key in [*(f"ddpm_{n}" for n in DDPM_STEPS), "naive_var_5"]:
            rows[key] = {"sw": mean_std([r["rows"][key]["sw"] for r in teacher_results if r["dataset"] == ds])}
        names = sorted({r["name"] for r in dxmi_results if r["dataset"] == ds})
        for name in names:
            runs = [r for r in dxmi_results if r["dataset"] == ds and r["name"] == name]
            rows[name] = {
                "sw": mean_std([r["test"]["sw"] for r in runs]),
                "auc": mean_std([r["test"]["auc"] for r in runs]),
                "sw_last": mean_std([r["test_last"]["sw"] for r in runs]),
                "auc_last": mean_std([r["test_last"]["auc"] for r in runs]),
                "sw_last_guided": mean_std([r["test_last_guided"]["sw"] for r in runs]),
                "guidance": [r["test_last_guided"]["guidance"] for r in runs],
                "seconds": mean_std([r["seconds"] for r in runs]),
            }
        table[ds] = rows
    result = {
        "command": "python benchmarks/toy2d.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "wall_seconds_total": wall,
        "teacher_seconds": mean_std([r["teacher_seconds"] for r in teacher_results]),
        "table": table,
        "runs": {"teachers": teacher_results, "dxmi": dxmi_results},
    }
    if args.keep_from:
        old = json.loads(Path(args.keep_from).read_text())
        kept = {ds: {k: row for k, row in rows.items() if k not in table.get(ds, {})} for ds, rows in old["table"].items()}
        result["earlier"] = {"command": old["command"], "date": old["date"], "table": {ds: r for ds, r in kept.items() if r}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


def markdown(result: dict) -> str:
    def fmt(cell: dict | None) -> str:
        return "" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}"

    lines = [
        "| data | method | T | pretrained | tau | SW, selected | AUC, selected | SW, final | AUC, final | SW, final, guided (lambda) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, rows in result["table"].items():
        for key, row in rows.items():
            if key.startswith("ddpm_"):
                lines.append(f"| {ds} | DDPM | {key[5:]} | | | {fmt(row['sw'])} | | | | |")
            elif key == "naive_var_5":
                lines.append(f"| {ds} | DDPM, VAR chain (DxMI's start) | 5 | | | {fmt(row['sw'])} | | | | |")
            else:
                scratch = "scratch" in key
                tau = key.rsplit("tau", 1)[1]
                cells = " | ".join(fmt(row[k]) for k in ("sw", "auc", "sw_last", "auc_last"))
                guided = f"{fmt(row['sw_last_guided'])} ({' / '.join(f'{g:g}' for g in row['guidance'])})"
                lines.append(f"| {ds} | DxMI | 5 | {'no' if scratch else 'yes'} | {tau} | {cells} | {guided} |")
    lines.append(f"\nWall time: {result['wall_seconds_total'] / 60:.1f} min in all; {result['machine']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
