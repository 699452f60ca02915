"""How many torch threads a run should use: seconds per DxMI iteration for each task at 1, 2, ...
threads, alone and next to another busy process (a shared machine).

    python benchmarks/threads.py --threads 1 2 --iters 60 --out docs/results/threads.json

Each measurement is a fresh process (torch fixes its thread pool at start) that builds the task's
default DxMI run exactly as ``diffrl train`` does (points: the 8gaussians preset at batch 512;
images: the digits preset, tiny teacher) and times ``iters`` iterations after 5 warm-up ones.
"Loaded" runs the same measurement while a second process does dense matrix products on all
cores. The thread default of each task (``Task.default_threads``) is the fastest setting here
under load, the case this 2-core machine was measured to be in.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MEASURE = r"""
import sys, time, torch
from diffrl.app import pipeline
from diffrl.app.config import load_config
from diffrl.app.tasks import make_task
task_name, threads, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
overrides = {"points": ["data.n_train=5000", "data.n_eval=100"],
             "images": ["image.unet_channels=[32,64]", "image.unet_layers_per_block=1"]}[task_name]
config = load_config("8gaussians" if task_name == "points" else "digits", overrides)
torch.manual_seed(0)
task = make_task(config)
c = pipeline.compose(config, task, task.new_teacher(), torch.device("cpu"))
dxmi = pipeline._dxmi(config, c, task.batches(config.train.batch_size, 0, torch.device("cpu")))
for _ in range(5):
    dxmi.step()
start = time.perf_counter()
for _ in range(iters):
    dxmi.step()
print((time.perf_counter() - start) / iters)
"""

LOAD = "import torch\ntorch.set_num_threads(2)\na = torch.randn(1500, 1500)\nwhile True:\n    a = (a @ a).tanh()\n"


def measure(task: str, threads: int, iters: int, loaded: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load = subprocess.Popen([sys.executable, "-c", LOAD]) if loaded else None
    try:
        if load is not None:
            time.sleep(2)
        out = subprocess.run([sys.executable, "-c", MEASURE, task, str(threads), str(iters)], env=env, capture_output=True, text=True, check=True)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--tasks", nargs="+", default=["points", "images"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = {}
    print("| task | threads | s/iter alone | s/iter loaded |")
    print("|---|---|---|---|")
    for task in args.tasks:
        iters = args.iters if task == "points" else max(args.iters // 6, 5)
        for threads in args.threads:
            alone, loaded = measure(task, threads, iters, False), measure(task, threads, iters, True)
            rows[f"{task}/{threads}"] = {"alone": alone, "loaded": loaded}
            print(f"| {task} | {threads} | {alone:.4f} | {loaded:.4f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "iters": args.iters, "seconds_per_iter": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
