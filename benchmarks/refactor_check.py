"""Fingerprints the final training state of fixed-seed short runs, so a refactor can be shown to change no numbers.

    python benchmarks/refactor_check.py --root runs/refactor-before --out before.json   # on the old code
    python benchmarks/refactor_check.py --root runs/refactor-after --out after.json     # on the new code
    python benchmarks/refactor_check.py --compare before.json after.json

Runs through the command line (the one interface both sides share): a 2-D teacher and DxMI on
8 Gaussians, a digits teacher and DxMI. The fingerprint of a run is the sorted list of SHA-256
digests of every tensor in its checkpoint.pt (parameters, optimiser moments, EMA copies, AVR
state, RNG states): independent of how the state is keyed, equal only if every number is equal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

RUNS = {
    "points_teacher": ["pretrain", "--preset", "8gaussians", "pretrain.steps=300", "data.n_eval=2000"],
    "points_dxmi": ["train", "--preset", "8gaussians", "--teacher", "{root}/points_teacher", "train.steps=200",
                    "train.eval_every=100", "train.checkpoint_every=100", "train.log_every=50", "data.n_eval=2000"],
    "digits_teacher": ["pretrain", "--preset", "digits", "pretrain.steps=40", "pretrain.batch_size=32", "image.eval_samples=100"],
    "digits_dxmi": ["train", "--preset", "digits", "--teacher", "{root}/digits_teacher", "train.steps=12", "train.batch_size=16",
                    "train.eval_every=6", "train.checkpoint_every=6", "train.log_every=3", "image.eval_samples=100"],
}


def tensor_digests(state) -> list[str]:
    import torch

    out = []
    if isinstance(state, torch.Tensor):
        out.append(hashlib.sha256(state.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16])
    elif isinstance(state, dict):
        for value in state.values():
            out += tensor_digests(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            out += tensor_digests(value)
    return out


def _command(args: list[str]) -> list[str]:
    """The command line of this checkout: ``diffrl.app.cli`` with its nested keys, or the 0.1 ``diffrl.cli``."""
    try:
        from diffrl.app.config import MOVED
    except ImportError:
        return [sys.executable, "-m", "diffrl.cli", *args]
    return [sys.executable, "-m", "diffrl.app.cli", *(MOVED.get(a.split("=")[0], a.split("=")[0]) + a[a.index("="):] if "=" in a else a for a in args)]


def fingerprint(root: Path) -> dict[str, list[str]]:
    import torch

    result = {}
    for name, args in RUNS.items():
        cmd = _command([*(a.format(root=root) for a in args), "--out", str(root / name), "--no-progress"])
        subprocess.run(cmd, check=True)
        state = torch.load(root / name / "checkpoint.pt", weights_only=True)
        result[name] = sorted(tensor_digests(state["trainer"]) + tensor_digests(state["torch_rng"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="folder for the runs (must not exist)")
    parser.add_argument("--out", type=Path, help="where to write the fingerprints (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        same = {name: before[name] == after.get(name) for name in before}
        print(json.dumps({"bitwise_equal": same, "tensors": {k: len(v) for k, v in before.items()}}, indent=1))
        raise SystemExit(0 if all(same.values()) else 1)
    if args.root is None or args.out is None:
        parser.error("give --root and --out, or --compare BEFORE AFTER")
    args.out.write_text(json.dumps(fingerprint(args.root), indent=1) + "\n")


if __name__ == "__main__":
    main()
