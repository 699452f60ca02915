"""GPU benchmark of the CIFAR-10 DxMI example: iterations per second, peak GPU memory, and fid10k at the
start and after N iterations, measured by running ``examples/cifar_dxmi.py`` itself (the same code path
as a real run) and reading its metrics.

    python benchmarks/cifar_gpu.py --iters 500                       # one GPU
    python benchmarks/cifar_gpu.py --iters 500 --nproc 4             # torchrun on 4 GPUs
    python benchmarks/cifar_gpu.py --iters 500 --teacher /models/ddpm-cifar10-32 \\
        --data-dir /data --fid-weights /weights/weights-inception-2015-12-05-6726825d.pth   # offline machine

Prints a table and writes JSON (``--json``, default docs/results/cifar_gpu.json). Timing is
``perf/sec_per_iter``: the example's wall time of a training iteration (CUDA-synchronised), averaged
over the last log window, evaluations excluded. Peak memory is torch's max_memory_allocated on rank 0,
for training and for the FID evaluation separately. On a machine without CUDA it refuses.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cifar_dxmi.py"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=500, help="training iterations between the two fid10k evaluations")
    p.add_argument("--nproc", type=int, default=1, help="GPUs (torchrun processes)")
    p.add_argument("--teacher", default="google/ddpm-cifar10-32")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--fid-weights", default=None)
    p.add_argument("--fid-samples", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("--json", default=str(ROOT / "docs" / "results" / "cifar_gpu.json"))
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/cifar_gpu.py measures GPU speed and needs CUDA, which this machine lacks "
              "(torch.cuda.is_available() is False). On a CPU run `python examples/cifar_dxmi.py --smoke` instead.",
              file=sys.stderr)
        raise SystemExit(2)
    if args.nproc > torch.cuda.device_count():
        print(f"--nproc {args.nproc} but only {torch.cuda.device_count()} GPU(s) are visible", file=sys.stderr)
        raise SystemExit(2)

    out = Path(args.out or tempfile.mkdtemp(prefix="cifar_gpu_bench_")) / "run"
    launcher = [sys.executable] if args.nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    command = [
        *launcher, str(EXAMPLE), "--out", str(out), "--teacher", args.teacher, "--data-dir", args.data_dir,
        f"train.loop.steps={args.iters}", f"train.loop.eval_every={args.iters}", f"train.loop.checkpoint_every={args.iters}",
        f"train.loop.log_every={min(50, args.iters)}", f"image.eval_samples={args.fid_samples}",
        f"train.batch_size={args.batch_size}", "--amp", args.amp, "--no-progress",
    ]
    if args.fid_weights:
        command += ["--fid-weights", args.fid_weights]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    wall = time.perf_counter() - start

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "perf/sec_per_iter" in r]
    evals = [r for r in records if any(k.startswith("eval/fid") for k in r)]
    fid_key = next(k for k in evals[0] if k.startswith("eval/fid"))
    steady = [r["perf/sec_per_iter"] for r in train[1:]] or [train[-1]["perf/sec_per_iter"]]  # skip the warm-up window
    sec = statistics.median(steady)
    result = {
        "device": torch.cuda.get_device_name(0),
        "gpus": args.nproc,
        "global_batch": args.batch_size,
        "amp": args.amp,
        "iters": args.iters,
        "sec_per_iter": sec,
        "iters_per_sec": 1 / sec,
        "images_per_sec": args.batch_size / sec,
        "peak_train_mem_gib": max(r.get("perf/peak_mem_gib", float("nan")) for r in train),
        "peak_eval_mem_gib": max(r.get("eval/peak_mem_gib", float("nan")) for r in evals),
        f"{fid_key[5:]}_start": evals[0][fid_key],
        f"{fid_key[5:]}_after_{args.iters}": evals[-1][fid_key],
        "wall_s": wall,
        "command": " ".join(command),
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
