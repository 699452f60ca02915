"""Issue 3's table: DxMI on scikit-learn's digits from a 1000-step DDPM teacher, against the teacher
and its naive and DDIM T-step samplers.

    python benchmarks/digits.py --seeds 0 1 2 --workers 2
    python benchmarks/digits.py --quick --workers 1      # tiny sizes: checks the plumbing
    python benchmarks/digits.py --variants dxmi_4 dxmi_10 --keep-from OLD.json   # rerun two rows

One teacher (``diffrl pretrain --preset digits``), scored with its own 1000-step ancestral chain
(teacher_1000), spec section 7's VAR chain before fine-tuning (naive_T, DxMI's start:
``evaluate(teacher, steps=T, schedule="var")``) and deterministic DDIM over strided timesteps
(ddim_T: ``schedule="ddim"``), T = 4 and 10. Then, per seed, DxMI runs of
the digits preset: dxmi_4, dxmi_10, dxmi_10_tau0 (tau1 = tau2 = 0), dxmi_10_no_time_cost
(value target without time cost), dxmi_4_ratio and dxmi_10_ratio (issue 14's larger, slower energy
with cosine decay, ``RATIO``); dxmi_10_guided samples the dxmi_10 runs with value guidance
lambda = 0.3. Every number is a test-split score (FD, KID and class coverage on the project's
digits classifier features) of a run's selected model (best validation FD); DxMI rows hold the
mean over seeds and ``*_std`` the standard deviation over seeds. Each score is the mean over
--draws independent sample draws of n samples, and ``*_draw_std`` the std between those draws (for
DxMI rows, its mean over seeds): read a difference against it. Also recorded: the wall time of
each stage and the sampling throughput of the T-step sampler against a bare loop of T UNet calls
on the same batch (ratio = bare time / sampler time; 1 means no overhead).

Runs are resumable: finished runs are skipped. Writes --out (default docs/results/digits.json;
with --quick, ROOT/digits.json), the validation-FD learning curves beside it (digits_curves.png),
and prints the markdown table for docs/results.md.
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

STEPS = (4, 10)
GUIDANCE = 0.3
RATIO = ["image.ebm_width=24", "train.lr_energy=1e-4", "train.lr_decay=cosine"]
"""Issue 14's attempt: the energy at the paper's ratio to the sampler (95k parameters against the UNet's
0.65M; CIFAR 5M / 35.7M), learning at 1e-4, every rate decayed to 0 by a cosine over the run."""
VARIANTS = {
    "dxmi_4": ["train.horizon=4"],
    "dxmi_10": [],
    "dxmi_10_tau0": ["train.tau_entropy=0", "train.tau_velocity=0"],
    "dxmi_10_no_time_cost": ["train.dxdp.value_target=none"],
    "dxmi_4_ratio": ["train.horizon=4", *RATIO],
    "dxmi_10_ratio": RATIO,
}
QUICK = [
    "image.unet_channels=[8,16]", "image.unet_layers_per_block=1", "image.ebm_width=8", "image.eval_samples=32",
    "pretrain.steps=30", "pretrain.eval_horizon=5", "train.loop.steps=4", "train.loop.eval_every=2",
    "train.loop.checkpoint_every=2", "train.loop.log_every=2", "train.batch_size=16",
]
ROW_KEYS = ("fd", "kid", "coverage")
BASELINES = {"naive": "var", "ddim": "ddim"}
"""The teacher's T-step baselines: the schedule ``pipeline.evaluate`` samples a teacher run with."""


def _scores(result: dict) -> dict:
    return {k: result[k] for k in (*ROW_KEYS, "n", "steps")}


def _drawn_scores(draws: int, score, seed: int = 0) -> dict:
    """``score(seed)`` of ``draws`` independent sample draws: the mean per metric, and beside it
    ``*_draw_std``, the std between draws (how far one draw of n samples moves a number)."""
    results = [_scores(score(seed + 1000 * d)) for d in range(draws)]
    row = {k: statistics.fmean(r[k] for r in results) for k in ROW_KEYS}
    if draws > 1:
        row.update({f"{k}_draw_std": statistics.stdev(r[k] for r in results) for k in ROW_KEYS})
    return {**row, "n": results[0]["n"], "steps": results[0]["steps"], "draws": draws}


def train_teacher(root: str, overrides: list[str]) -> float:
    """Pretrain (or reuse) the teacher every DxMI run starts from; its training seconds."""
    import torch

    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    torch.set_num_threads(1)
    run = Path(root, "teacher")

    def train() -> None:
        config = load_config("digits", ["threads=1", *overrides])
        pipeline.pretrain(config, run, resume=(run / "config.yaml").is_file(), progress=False)

    return train_seconds(run, train)


def score_teacher(root: str, n: int | None, draws: int = 1) -> dict:
    """Scores of the teacher's 1000-step chain and of its naive / DDIM T-step baselines, kept in
    ROOT/teacher/scores-n{n}-draws{draws}.json so that a rerun does not sample the 1000-step chain again."""
    import torch

    from diffrl.app import pipeline

    torch.set_num_threads(1)
    run = Path(root, "teacher")
    record = run / f"scores-n{n or 'test'}-draws{draws}.json"
    if record.is_file():
        return json.loads(record.read_text())
    rows, seconds = {}, {}
    for key, steps, schedule in [("teacher_1000", None, "strided"), *((f"{b}_{T}", T, BASELINES[b]) for b in BASELINES for T in STEPS)]:
        start = time.time()
        rows[key] = _drawn_scores(draws, lambda seed: pipeline.evaluate(run, n=n, steps=steps, schedule=schedule, seed=seed))
        seconds[f"evaluate_{key}"] = time.time() - start
    record.write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=1))
    return {"rows": rows, "seconds": seconds}


def run_dxmi(root: str, name: str, seed: int, overrides: list[str], n: int | None, draws: int = 1) -> dict:
    import torch

    from diffrl.app import pipeline
    from diffrl.app.config import load_config
    from diffrl.run import RunDir

    torch.set_num_threads(1)
    run = Path(root, f"{name}-s{seed}")

    def train() -> None:
        config = load_config("digits", [f"seed={seed}", "threads=1", f"train.teacher={Path(root, 'teacher')}", *VARIANTS[name], *overrides])
        pipeline.train(config, run, resume=(run / "config.yaml").is_file(), progress=False)

    seconds = train_seconds(run, train)
    out = {"name": name, "seed": seed, "train_seconds": seconds,
           "test": _drawn_scores(draws, lambda s: pipeline.evaluate(run, n=n, seed=s), seed)}
    if name == "dxmi_10":
        out["guided"] = _drawn_scores(draws, lambda s: pipeline.evaluate(run, n=n, seed=s, guidance=GUIDANCE), seed)
    first_eval = next((r for r in RunDir(run).read_metrics() if "eval/fd" in r), {})
    out["start_val_fd"] = first_eval.get("eval/fd")
    return out


def throughput(root: str, batch: int = 256, steps: int = 10, repeats: int = 5) -> dict:
    """Seconds per batch of the T-step sampler (policy.sample) and of a bare loop of T UNet calls; best of ``repeats``."""
    import torch

    from diffrl.app import pipeline

    torch.set_num_threads(1)
    teacher = pipeline.from_run(Path(root, "teacher"))
    ddpm, shape = teacher.teacher, teacher.task.event_shape
    policy = ddpm.step_policy(steps, shape)
    timesteps = [torch.full((batch,), float(s)) for s in policy.mean_model.timesteps]

    def bare() -> None:
        x = torch.randn(batch, *shape)
        for t in range(steps):
            x = ddpm.eps_model(x, timesteps[t])

    def sampler() -> None:
        policy.sample(batch)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.no_grad():
        bare(), sampler()  # warm up
        t_bare, t_sampler = best(bare), best(sampler)
    return {"batch": batch, "steps": steps, "bare_unet_seconds": t_bare, "sampler_seconds": t_sampler, "ratio": t_bare / t_sampler}


def _mean_std(runs: list[dict], part: str) -> dict:
    row: dict = {}
    for key in ROW_KEYS:
        values = [r[part][key] for r in runs]
        row[key] = statistics.fmean(values)
        row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        if f"{key}_draw_std" in runs[0][part]:  # the mean over seeds of the std between sample draws
            row[f"{key}_draw_std"] = statistics.fmean(r[part][f"{key}_draw_std"] for r in runs)
    row["n"], row["steps"], row["seeds"] = runs[0][part]["n"], runs[0][part]["steps"], [r["seed"] for r in runs]
    row["draws"] = runs[0][part].get("draws", 1)
    row["per_seed"] = [r[part] for r in runs]
    return row


def plot_curves(root: str, seeds: list[int], variants: list[str], path: Path) -> None:
    """Validation FD over training of every DxMI run, against the teacher's own validation FD at
    the end of pretraining (its ``pretrain.eval_horizon``-step strided chain, same split and n)."""
    from diffrl.plots import plot_learning_curves
    from diffrl.run import RunDir

    def curve(run: Path) -> tuple[list[float], list[float]]:
        rows = [r for r in RunDir(run).read_metrics() if "eval/fd" in r]
        return [r["step"] for r in rows], [r["eval/fd"] for r in rows]

    curves = {name: [curve(Path(root, f"{name}-s{s}")) for s in seeds] for name in variants}
    teacher_fd = curve(Path(root, "teacher"))[1][-1]
    plot_learning_curves(curves, path, "validation FD (digits classifier features)", {"teacher, last pretraining eval": teacher_fd})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", default=None, help="run folders (default runs/bench-digits, or runs/bench-digits-quick)")
    parser.add_argument("--n", type=int, default=None, help="samples per score (default: as many as test images, 360)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny runs to check the plumbing")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="the DxMI runs (default all)")
    parser.add_argument("--draws", type=int, default=3, help="independent sample draws per score; their std is the draw noise")
    parser.add_argument("--keep-from", default=None, help="an earlier digits.json: its DxMI rows not rerun here are kept under 'earlier'")
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws must be >= 1, got {args.draws}")
    root = args.root or ("runs/bench-digits-quick" if args.quick else "runs/bench-digits")
    out = Path(args.out or (Path(root, "digits.json") if args.quick else "docs/results/digits.json"))
    overrides = QUICK if args.quick else []
    n = args.n or (64 if args.quick else None)
    start = time.time()

    teacher_train = train_teacher(root, overrides)  # every DxMI run needs it first
    with ProcessPoolExecutor(args.workers) as pool:
        teacher_job = pool.submit(score_teacher, root, n, args.draws)
        jobs = [pool.submit(run_dxmi, root, name, s, overrides, n, args.draws) for name in args.variants for s in args.seeds]
        dxmi = [f.result() for f in jobs]
        teacher = teacher_job.result()
    speed = throughput(root)

    from diffrl.image_metrics import digits_classifier

    result: dict = dict(teacher["rows"])
    for name in args.variants:
        result[name] = _mean_std([r for r in dxmi if r["name"] == name], "test")
    if "dxmi_10" in args.variants:
        result["dxmi_10_guided"] = {**_mean_std([r for r in dxmi if r["name"] == "dxmi_10"], "guided"), "guidance": GUIDANCE}
    result["timings_seconds"] = {
        "teacher_train": teacher_train,
        **teacher["seconds"],
        **{f"train_{name}": [r["train_seconds"] for r in dxmi if r["name"] == name] for name in args.variants},
        "total": time.time() - start,
    }
    result["throughput"] = speed
    result["start_val_fd"] = {r["name"] + f"-s{r['seed']}": r["start_val_fd"] for r in dxmi}
    result["classifier_test_accuracy"] = digits_classifier(0)[1]
    result["meta"] = {
        "command": "python benchmarks/digits.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "quick": args.quick,
    }
    if args.keep_from:
        old = json.loads(Path(args.keep_from).read_text())
        kept = {k: row for k, row in old.items() if k.startswith("dxmi_") and k not in result}
        result["earlier"] = {"meta": old["meta"], "teacher_1000": old["teacher_1000"], **kept}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot_curves(root, args.seeds, args.variants, out.with_name(out.stem + "_curves.png"))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["| sampler | T | FD (± seeds) | FD draw noise | KID | coverage |", "|---|---|---|---|---|---|"]
    labels = {"teacher": "DDPM teacher", "naive": "naive (VAR, before DxMI)", "ddim": "DDIM", "dxmi": "DxMI"}
    for key, row in result.items():
        if not isinstance(row, dict) or "fd" not in row:
            continue
        method = labels[key.split("_")[0]] + {"tau0": ", tau = 0", "cost": ", no time cost", "guided": f", guided {GUIDANCE}",
                                              "ratio": ", energy at the paper's ratio, 1e-4, cosine"}.get(key.rsplit("_", 1)[1], "")
        cell = lambda k: f"{row[k]:.3f}" + (f" ± {row[k + '_std']:.3f}" if k + "_std" in row else "")  # noqa: E731
        noise = f"{row['fd_draw_std']:.3f}" if "fd_draw_std" in row else ""
        lines.append(f"| {method} | {row['steps']} | {cell('fd')} | {noise} | {cell('kid')} | {cell('coverage')} |")
    t, s = result["timings_seconds"], result["throughput"]
    train = ", ".join(f"{k[6:]} {statistics.fmean(v) / 60:.1f} min" for k, v in t.items() if k.startswith("train_"))
    lines.append(
        f"\nTeacher training {t['teacher_train'] / 60:.1f} min; DxMI per run: {train}; total {t['total'] / 60:.1f} min "
        f"on {result['meta']['machine']}. Sampler throughput vs bare UNet loop (T = {s['steps']}, batch {s['batch']}): "
        f"{s['ratio']:.3f}. Classifier test accuracy {result['classifier_test_accuracy']:.3f}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
