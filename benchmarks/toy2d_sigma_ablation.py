"""python benchmarks/toy2d_sigma_ablation.py RUN 0 1 2 3

Where the width comes from: sample a finished DxMI run's final state with one step's sigma scaled,
and report val SW and the mode width ratio (val split). Light: sampling only."""
import sys, json, torch
torch.set_num_threads(1)
run_path, steps = sys.argv[1], [int(a) for a in sys.argv[2:]]; sys.argv = sys.argv[:1]
from diffrl.app import pipeline
from diffrl.metrics import sliced_wasserstein
src = open(__file__.replace("toy2d_sigma_ablation", "toy2d_tune")).read().split("def main")[0]
ns = {}; exec(src, ns); shape = ns["shape"]
run = pipeline.from_run(run_path, "last")
ds = run.config.data.name
val = run.task.raw["val"]
pol = run.policy
base = pol.log_sigma_train.detach().clone(); basef = pol.log_sigma_fixed.clone()
shr = shape(val, ds)
def score(tag):
    sw = []; wr = []
    for seed in (0,):
        x = run.task.normalizer.decode(run.sample(10_000, seed)).float()
        sw.append(sliced_wasserstein(x, val)); sh = shape(x, ds)
        wr.append(float((sh[1] / shr[1]).nanmean()) if sh else float('nan'))
    print(json.dumps({"run": run_path.split("runs/")[-1], "variant": tag, "val_sw_2draws": [round(s, 4) for s in sw], "width_ratio": round(sum(wr), 3), "width_ratios": [round(float(v), 3) for v in (sh[1] / shr[1])] if sh else None, "sigmas": [round(float(s), 4) for s in pol.sigma]}), flush=True)
score("as trained")
T = pol.horizon
for t in steps:
    for f in (0.0,):
        with torch.no_grad():
            ls = torch.cat([base, basef]).clone(); ls[t] += torch.log(torch.tensor(max(f, 1e-6)))
            n = base.numel(); pol.log_sigma_train.copy_(ls[:n]); pol.log_sigma_fixed.copy_(ls[n:])
        score(f"sigma_{t} x {f}")
with torch.no_grad():
    pol.log_sigma_train.copy_(base); pol.log_sigma_fixed.copy_(basef)
