"""The fault table of docs/reliability.md: bad inputs and faults against the command line, each
run and classified (a one-line error before any work, or something else).

    python benchmarks/faults.py --root runs/faults --out docs/results/faults.json

A "world" folder is made first: a tiny 2-D teacher run, a DxMI run on it, a tiny digits teacher
run, bad data files and broken copies of the runs. Every case then runs ``diffrl ARGS`` in this
process and is classified "one-line error" when it exits with code 2, prints exactly one line on
stderr, no traceback, and leaves every file of the world byte-identical (and creates nothing).
``tests/test_faults.py`` runs the same table.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np

TINY = [
    "net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=500", "data.n_eval=100", "threads=1",
    "pretrain.steps=20", "pretrain.batch_size=32", "pretrain.eval_horizon=5",
    "train.loop.steps=4", "train.batch_size=16", "train.loop.eval_every=2", "train.loop.checkpoint_every=2", "train.loop.log_every=2",
]
TINY_DIGITS = [
    "image.unet_channels=[8,16]", "image.unet_layers_per_block=1", "image.ebm_width=8", "image.eval_samples=16",
    "pretrain.steps=2", "pretrain.eval_horizon=2", "threads=1",
]
NEW = "{w}/new"
"""The --out of every case that must not create anything."""

# (case, what the issue calls it, arguments; {w} is the world folder)
CASES: list[tuple[str, str, list[str]]] = [
    # configuration
    ("unknown preset", "config", ["train", "--preset", "nine-gaussians", "--out", NEW]),
    ("unknown key", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.no_such_key=1"]),
    ("moved key (0.1 name)", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.steps=10"]),
    ("override without =", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.horizon"]),
    ("horizon 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.horizon=0"]),
    ("negative tau", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.tau_entropy=-0.1"]),
    ("lr_value nan", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.dxdp.lr_value=nan"]),
    ("lr_sampler nan", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.dxdp.lr_sampler=nan"]),
    ("lr_energy inf", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.lr_energy=inf"]),
    ("negative learning rate", "config", ["pretrain", "--preset", "8gaussians", "--out", NEW, "pretrain.lr=-1"]),
    ("eval_every 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.loop.eval_every=0"]),
    ("checkpoint_every 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.loop.checkpoint_every=0"]),
    ("log_every 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.loop.log_every=0"]),
    ("negative steps", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.loop.steps=-5"]),
    ("net.time_dim 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "net.time_dim=0"]),
    ("negative outlier box", "config", ["train", "--preset", "8gaussians", "--out", NEW, "data.outlier_box=-1"]),
    ("horizon above the teacher's steps", "config", ["train", "--preset", "8gaussians", "--teacher", "{w}/teacher", "--out", NEW, *TINY, "train.horizon=2000"]),
    ("horizon above a fresh teacher's steps", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.horizon=2000"]),
    ("threads -1", "config", ["train", "--preset", "8gaussians", "--out", NEW, "threads=-1"]),
    ("threads 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "threads=0"]),
    ("device cuda without a GPU", "config", ["pretrain", "--preset", "8gaussians", "--out", NEW, *TINY, "device=cuda"]),
    ("unknown device", "config", ["train", "--preset", "8gaussians", "--out", NEW, "device=tpu"]),
    ("amp on a CPU", "config", ["pretrain", "--preset", "8gaussians", "--out", NEW, *TINY, "amp=bf16"]),
    ("batch size 0", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.batch_size=0"]),
    ("one evaluation point", "config", ["train", "--preset", "8gaussians", "--out", NEW, "data.n_eval=1"]),
    ("EMA decay 1", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.energy_ema_decay=1.0"]),
    ("unknown lr decay", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.lr_decay=linear"]),
    ("negative seed", "config", ["train", "--preset", "8gaussians", "--out", NEW, "seed=-1"]),
    ("unknown task", "config", ["train", "--preset", "8gaussians", "--out", NEW, "task=audio"]),
    ("unknown schedule", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.schedule=cosine"]),
    ("unknown value target", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.dxdp.value_target=huber"]),
    ("target update above 1", "config", ["train", "--preset", "8gaussians", "--out", NEW, "train.dxdp.target_update=2"]),
    ("image channels 2", "config", ["train", "--preset", "digits", "--out", NEW, "image.channels=2"]),
    ("preset YAML that is a list", "config", ["train", "--preset", "{w}/list.yaml", "--out", NEW]),
    ("missing preset YAML", "config", ["train", "--preset", "{w}/nope.yaml", "--out", NEW]),
    ("unknown agent", "config", ["train", "--preset", "8gaussians", "--teacher", "{w}/teacher", "--out", NEW, *TINY, "--agent", "a2c"]),
    ("agent module missing", "config", ["train", "--preset", "8gaussians", "--teacher", "{w}/teacher", "--out", NEW, *TINY, "--agent", "no_such_module:make"]),
    ("reward factory missing", "config", ["train", "--preset", "8gaussians", "--teacher", "{w}/teacher", "--out", NEW, *TINY, "--reward", "json:no_such_factory"]),
    # data
    ("data with a NaN row", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/nan.npy"]),
    ("3-D float array", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/cube.npy"]),
    ("missing data file", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/nope.npy"]),
    ("10-row array", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/ten.npy"]),
    ("empty array", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/empty.npy"]),
    ("constant column", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/constant.npy"]),
    ("object array (pickle)", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/objects.npy"]),
    ("text file as data", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "{w}/notes.txt"]),
    ("unknown toy set", "data", ["train", "--preset", "8gaussians", "--out", NEW, "--data", "9gaussians"]),
    # teachers
    ("missing teacher folder", "teacher", ["train", "--preset", "8gaussians", "--out", NEW, "--teacher", "{w}/nope"]),
    ("digits teacher for 2-D data", "teacher", ["train", "--preset", "8gaussians", "--out", NEW, "--teacher", "{w}/digits", *TINY]),
    ("a DxMI run as teacher", "teacher", ["train", "--preset", "8gaussians", "--out", NEW, "--teacher", "{w}/dxmi", *TINY]),
    ("teacher of another D", "teacher", ["train", "--preset", "8gaussians", "--out", NEW, "--teacher", "{w}/teacher", "--data", "{w}/three.npy", *TINY]),
    ("2-D teacher for digits", "teacher", ["train", "--preset", "digits", "--out", NEW, "--teacher", "{w}/teacher", *TINY_DIGITS]),
    # run folders
    ("--out a user's folder", "overwrite", ["train", "--preset", "8gaussians", "--out", "{w}/mine", *TINY]),
    ("--out a run whose checkpoint was deleted", "overwrite", ["pretrain", "--preset", "8gaussians", "--out", "{w}/no-checkpoint", *TINY]),
    ("--out a finished run", "overwrite", ["train", "--preset", "8gaussians", "--teacher", "{w}/teacher", "--out", "{w}/dxmi", *TINY]),
    ("--out a file", "overwrite", ["pretrain", "--preset", "8gaussians", "--out", "{w}/notes.txt"]),
    # resume
    ("resume a missing run", "resume", ["train", "--out", "{w}/nope", "--resume"]),
    ("resume with --preset", "resume", ["train", "--out", "{w}/dxmi", "--resume", "--preset", "8gaussians"]),
    ("resume with a forbidden override", "resume", ["train", "--out", "{w}/dxmi", "--resume", "train.dxdp.lr_sampler=1"]),
    ("resume with an invalid key", "resume", ["train", "--out", "{w}/dxmi", "--resume", "train.loop.no_such=1"]),
    ("resume with a bad value", "resume", ["train", "--out", "{w}/dxmi", "--resume", "train.loop.eval_every=0"]),
    ("train --resume on a teacher run", "resume", ["train", "--out", "{w}/teacher", "--resume"]),
    ("pretrain --resume on a DxMI run", "resume", ["pretrain", "--out", "{w}/dxmi", "--resume"]),
    ("resume a truncated checkpoint", "resume", ["train", "--out", "{w}/truncated", "--resume"]),
    ("resume an empty checkpoint", "resume", ["train", "--out", "{w}/empty-checkpoint", "--resume"]),
    ("resume a malicious pickle", "resume", ["train", "--out", "{w}/malicious", "--resume"]),
    ("resume an empty config.yaml", "resume", ["train", "--out", "{w}/empty-config", "--resume"]),
    # sample and evaluate
    ("sample --guidance nan", "sample", ["sample", "{w}/dxmi", "--guidance", "nan", "--out", "{w}/s.npy"]),
    ("sample --guidance -1", "sample", ["sample", "{w}/dxmi", "--guidance", "-1", "--out", "{w}/s.npy"]),
    ("sample --n 0", "sample", ["sample", "{w}/dxmi", "--n", "0", "--out", "{w}/s.npy"]),
    ("sample --steps 0", "sample", ["sample", "{w}/teacher", "--steps", "0", "--out", "{w}/s.npy"]),
    ("sample --steps 2000 of a 1000-step teacher", "sample", ["sample", "{w}/teacher", "--steps", "2000", "--out", "{w}/s.npy"]),
    ("sample --out foo.txt", "sample", ["sample", "{w}/dxmi", "--out", "{w}/foo.txt"]),
    ("sample over an existing file", "sample", ["sample", "{w}/dxmi", "--n", "5", "--out", "{w}/three.npy"]),
    ("guidance on a teacher", "sample", ["sample", "{w}/teacher", "--guidance", "0.3", "--out", "{w}/s.npy"]),
    ("--which last on a teacher", "sample", ["sample", "{w}/teacher", "--which", "last", "--out", "{w}/s.npy"]),
    ("DxMI run at another T", "sample", ["evaluate", "{w}/dxmi", "--steps", "7"]),
    ("evaluate --guidance nan", "evaluate", ["evaluate", "{w}/dxmi", "--guidance", "nan"]),
    ("evaluate --n -5", "evaluate", ["evaluate", "{w}/dxmi", "--n", "-5"]),
    ("evaluate --n 1", "evaluate", ["evaluate", "{w}/dxmi", "--n", "1"]),
    ("evaluate --split train", "evaluate", ["evaluate", "{w}/dxmi", "--split", "train"]),
    ("evaluate a missing run", "evaluate", ["evaluate", "{w}/nope"]),
    ("evaluate a truncated model.pt", "evaluate", ["evaluate", "{w}/truncated"]),
    ("evaluate an empty model.pt", "evaluate", ["evaluate", "{w}/empty-model"]),
    ("evaluate a garbled config.yaml", "evaluate", ["evaluate", "{w}/garbled-config"]),
    ("evaluate --data of another D", "evaluate", ["evaluate", "{w}/dxmi", "--data", "{w}/three.npy"]),
    ("evaluate --data on an image run", "evaluate", ["evaluate", "{w}/digits", "--data", "{w}/three.npy"]),
    ("unknown option", "cli", ["evaluate", "{w}/dxmi", "--bogus"]),
    ("override on evaluate", "cli", ["evaluate", "{w}/dxmi", "seed=3"]),
    ("no job", "cli", []),
]


class _Malicious:
    def __reduce__(self):
        return (print, ("pwned",))


def make_world(root: Path) -> Path:
    """The runs and files every case refers to (a few seconds)."""
    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    root.mkdir(parents=True, exist_ok=True)
    pipeline.pretrain(load_config("8gaussians", TINY), root / "teacher", progress=False)
    pipeline.train(load_config("8gaussians", [*TINY, f"train.teacher={root / 'teacher'}"]), root / "dxmi", progress=False)
    pipeline.pretrain(load_config("digits", TINY_DIGITS), root / "digits", progress=False)
    rng = np.random.default_rng(0)
    nan = rng.normal(size=(100, 2))
    nan[7, 1] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "cube.npy", rng.normal(size=(100, 2, 2)))
    np.save(root / "ten.npy", rng.normal(size=(10, 2)))
    np.save(root / "empty.npy", np.zeros((0, 2)))
    np.save(root / "constant.npy", np.stack([rng.normal(size=200), np.ones(200)], 1))
    np.save(root / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(root / "three.npy", rng.normal(size=(500, 3)))
    (root / "notes.txt").write_text("not data\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "mine").mkdir()
    (root / "mine" / "config.yaml").write_text("my own notes\n")
    (root / "mine" / "samples.npy").write_bytes(b"precious")
    shutil.copytree(root / "teacher", root / "no-checkpoint")
    (root / "no-checkpoint" / "checkpoint.pt").unlink()
    for name, broken in (("truncated", "half"), ("empty-checkpoint", "empty"), ("malicious", "pickle"), ("empty-config", "config"),
                         ("empty-model", "model"), ("garbled-config", "garbled")):
        shutil.copytree(root / "dxmi", root / name)
        run = root / name
        if broken == "half":
            for f in ("checkpoint.pt", "model.pt"):
                data = (run / f).read_bytes()
                (run / f).write_bytes(data[: len(data) // 2])
        elif broken == "empty":
            (run / "checkpoint.pt").write_bytes(b"")
        elif broken == "pickle":
            (run / "checkpoint.pt").write_bytes(pickle.dumps(_Malicious()))
        elif broken == "config":
            (run / "config.yaml").write_text("")
        elif broken == "model":
            (run / "model.pt").write_bytes(b"")
        else:
            (run / "config.yaml").write_text("train: [unclosed\n  : :\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def run_case(root: Path, args: list[str]) -> dict:
    """Run ``diffrl ARGS`` in this process; the exit code, stderr, and what changed in the world."""
    from diffrl.app.cli import main

    argv = [a.replace("{w}", str(root)) for a in args]
    before = snapshot(root)
    err, out = io.StringIO(), io.StringIO()
    traceback = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except BaseException as e:  # an escaped exception is a traceback for a user
            code, traceback = None, f"{type(e).__name__}: {e}"
    lines = err.getvalue().strip().splitlines()
    new = Path(NEW.replace("{w}", str(root)))
    changed = before != snapshot(root) or new.exists()
    shutil.rmtree(new, ignore_errors=True)  # so one failing case does not hide the next ones
    one_line = code == 2 and len(lines) == 1 and traceback is None and "Traceback" not in err.getvalue() and not changed
    return {"exit": code, "stderr": lines, "traceback": traceback, "changed_files": changed, "one_line_error": one_line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder for the world (must not exist)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the fault table (markdown) here")
    args = parser.parse_args()
    root = make_world(args.root)
    results = []
    for case, kind, argv in CASES:
        r = run_case(root, argv)
        r["stderr"] = [line.replace(str(root), "{w}") for line in r["stderr"]]
        r["traceback"] = r["traceback"] and r["traceback"].replace(str(root), "{w}")
        results.append({"case": case, "kind": kind, "command": "diffrl " + " ".join(argv), **r})
        print(f"{'ok  ' if r['one_line_error'] else 'FAIL'} {case}: {r['stderr'][:1] or r['traceback']}")
    ok = sum(r["one_line_error"] for r in results)
    print(f"{ok} of {len(results)} end in a one-line error before any work")
    if args.out:
        args.out.write_text(json.dumps({"one_line_errors": ok, "cases": len(results), "results": results}, indent=1) + "\n")
    if args.markdown:
        rows = [
            f"| {r['case']} | {r['kind']} | {'one-line error' if r['one_line_error'] else 'other'} | "
            f"`{r['command']}` | {(r['stderr'][:1] or [r['traceback']])[0].replace('|', '/')} |"
            for r in results
        ]
        header = "| bad input | class | outcome | command ({w}: the world folder) | what the user reads |\n|---|---|---|---|---|\n"
        args.markdown.write_text(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
