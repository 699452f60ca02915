"""Issue 14 tuning (docs/results.md): one seed-0 DxMI run with overrides, scored on validation.

    python benchmarks/toy2d_tune.py gmm4aniso dxmi-tau0.1-s0            # the defaults, in ROOT (the table's run)
    python benchmarks/toy2d_tune.py 8gaussians NAME train.dxdp.lr_sigma=1e-4 train.loop.steps=2000
    python benchmarks/toy2d_tune.py TEACHERS 0 gmm4aniso grid25         # teachers (as toy2d.py) + their val SW and widths

Prints and appends to runs/tune14/results.jsonl: the validation SW curve, a fresh validation draw
of the final state, the sigmas, the largest mode-share error and the per-mode width ratio
(RMS distance to the nearest centre, samples over validation data) on sets with known centres.
"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from diffrl.app import pipeline
from diffrl.app.config import load_config
from diffrl.data import EIGHT_GAUSSIANS_CENTRES, _GMM4_CENTRES
from diffrl.metrics import sliced_wasserstein

ROOT = Path("runs/bench-toy2d-v5")
CENTRES = {"8gaussians": EIGHT_GAUSSIANS_CENTRES, "gmm4aniso": _GMM4_CENTRES,
           "grid25": torch.cartesian_prod(torch.arange(-4., 5., 2.), torch.arange(-4., 5., 2.))}

def shape(x, ds):
    if ds in CENTRES:
        c = CENTRES[ds]; k = c.shape[0]
        lab = torch.cdist(x, c).argmin(1)
        share = lab.bincount(minlength=k).double() / x.shape[0]
        widths = torch.stack([((x[lab == i] - c[i]).pow(2).sum(1).mean().sqrt()) if (lab == i).sum() > 1 else torch.tensor(float('nan')) for i in range(k)])
        return share, widths
    if ds == "rings":
        r = x.norm(dim=1); lab = (r > 1.75).long()
        share = lab.bincount(minlength=2).double() / x.shape[0]
        widths = torch.stack([(r[lab == i] - (1.0, 2.5)[i]).pow(2).mean().sqrt() for i in range(2)])
        return share, widths
    return None

def main():
    if sys.argv[1] == "TEACHERS":  # TEACHERS SEED DS...: train (resumable) and evaluate teachers in this process
        sys.path.insert(0, str(Path(__file__).parent))
        from toy2d import run_teacher
        seed = int(sys.argv[2])
        for ds in sys.argv[3:]:
            r = run_teacher(str(ROOT), ds, seed, [])
            val = pipeline.evaluate(ROOT / ds / f"teacher-s{seed}", steps=1000, seed=seed, split="val")["sw"]
            x = torch.from_numpy(pipeline.sample(str(ROOT / ds / f"teacher-s{seed}"), 10_000, steps=1000, seed=seed)).float()
            sh, shr = shape(x, ds), shape(pipeline.from_run(str(ROOT / ds / f"teacher-s{seed}")).task.raw["val"], ds)
            extra = {} if sh is None else {"share_err_max": round(float((sh[0] - shr[0]).abs().max()), 4), "width_ratio_mean": round(float((sh[1] / shr[1]).nanmean()), 3)}
            out = {"teacher": ds, **extra, "seed": seed, "seconds": r["teacher_seconds"], "val_ddpm_1000": round(val, 4), **{k: round(v["sw"], 4) for k, v in r["rows"].items()}}
            print(json.dumps(out), flush=True)
            Path("runs/tune14").mkdir(parents=True, exist_ok=True)
            with open("runs/tune14/teachers.jsonl", "a") as f:
                f.write(json.dumps(out) + "\n")
        return
    ds, name, *over = sys.argv[1:]
    run = (ROOT / ds / name) if name == "dxmi-tau0.1-s0" else Path("runs/tune14", ds, name)
    if name == "dxmi-tau0.1-s0":
        over = ["train.tau_entropy=0.1", "train.tau_velocity=0.1", *over]
    t0 = time.time()
    if not (run / "model.pt").is_file():
        cfg = load_config(ds, ["seed=0", "threads=1", f"train.teacher={ROOT / ds / 'teacher-s0'}", *over])
        pipeline.train(cfg, run, progress=False)
    wall = time.time() - t0
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    ev = [(r.get("step"), r["eval/sw"]) for r in rows if "eval/sw" in r]
    sig = [r for r in rows if "eval/sigma_0" in r][-1]
    sigmas = [round(sig[f"eval/sigma_{i}"], 4) for i in range(10) if f"eval/sigma_{i}" in sig]
    last = pipeline.evaluate(run, seed=0, which="last", split="val")
    best = pipeline.evaluate(run, seed=0, which="best", split="val")
    out = {"ds": ds, "name": name, "over": over, "wall": round(wall), "val_sw_curve": [(s, round(v, 4)) for s, v in ev],
           "val_sw_last": round(last["sw"], 4), "val_sw_best": round(best["sw"], 4), "auc_last": round(last.get("auc", float('nan')), 3), "sigmas": sigmas}
    x = torch.from_numpy(pipeline.sample(str(run), 10_000, seed=0, which="last")).float()
    ref = pipeline.from_run(str(run), "last").task.raw["val"]
    sh, shr = shape(x, ds), shape(ref, ds)
    if sh is not None:
        out["share_err_max"] = round(float((sh[0] - shr[0]).abs().max()), 4)
        out["width_ratio_mean"] = round(float((sh[1] / shr[1]).nanmean()), 3)
        out["width_ratio_range"] = [round(float((sh[1] / shr[1]).nan_to_num(1).min()), 3), round(float((sh[1] / shr[1]).nan_to_num(1).max()), 3)]
    print(json.dumps(out))
    Path("runs/tune14").mkdir(parents=True, exist_ok=True)
    with open("runs/tune14/results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")

main()
