"""Seconds per DxMI iteration: diffrl against the authors' published trainer, interleaved fresh processes.

    python benchmarks/official_compare.py AUTHORS                # full run (about 11 min, 2 threads): docs/results/speed.json
    python benchmarks/official_compare.py AUTHORS --quick        # one round, few iterations (a smoke test)
    python benchmarks/official_compare.py AUTHORS --with-batched # also diffrl with train.dxdp.value_steps=batched (+50%)

AUTHORS is a work tree of the authors' code (swyoon/Diffusion-by-MaxEntIRL), e.g. made with
``git --git-dir=REPO archive HEAD | tar -x -C AUTHORS``. It is imported from there, never copied.

Configurations (issue 14); the samplers have equal parameter counts, the energies nearly (reported):
  cifar10_5m    the Ho et al. CIFAR-10 UNet (35.7M) with a ~5M energy, batch 8
  small8_5m     an 8x8 single-channel UNet (0.92M, channels 32, 64) with a ~5M energy, batch 128
  small8_0.3m   the same UNet with a ~0.3M energy, batch 128
Both run the image variant at T = 10 (spec sections 6-8): VAR chain, trainable sigma (last fixed),
value = energy (one network, one Adam), sigmoid time cost, AVR 0.99, Adam 1e-7 / 1e-5 / 1e-5.
Their side is their CIFAR-10 config (configs/cifar10/T10.yaml: ``unet_small.Model`` with its
dropout 0.1, ``IGEBMEncoderV2``, ``DxMI_Trainer``), with the networks resized for the small
configurations.
diffrl's energy is an ``EnergyResNet`` of mults (1, 2, 4) and one block per stage, width 128 or
32: 4.8% fewer parameters and 4% fewer forward FLOPs than their IGEBM network of width 128 or 32
(widths 131 and 33 would match the parameters within 1.3%, but a width that is not a multiple
of 16 costs up to 2x on CPU convolutions); the diffrl presets' shape (mults (1, 2, 2), two blocks)
spends 1.6x the FLOPs per parameter of their network.

Timing: per configuration, ``--rounds`` rounds; in each, one fresh process per implementation
(the order alternates between rounds) builds the models, runs ``--warmup`` iterations, then
``--iters`` timed ones. Reported: the median over rounds of each process's mean seconds per
iteration, the ratio diffrl / theirs of those medians and the median of the per-round ratios,
and where the time goes: sampling, energy step, value steps, sampler step, other. Data batches
are uniform noise in the data range, drawn from a fixed tensor (data loading is not timed).

What their trainer needs to run here (the harness is this file; their files are not changed):
  - their training script (train_cifar10.py) needs CUDA, torch.distributed, wandb, the CIFAR-10
    PNGs and FID statistics, so the harness builds what that script builds (sampler net, VARSampler,
    value, the two Adams, DxMI_Trainer from T10.yaml) and runs the body of its ``train_one_epoch``
    loop (sample, append_buffer, update_f_v, update_sampler, reset_buffer), without DDP, logging
    or FID;
  - with NumPy >= 2, ``var_sampler._log_cont_noise`` receives float32 scalars and the bisection for
    the continuous timesteps runs in float32 (the last step lands at 0.497 and their own assert
    fails); the harness casts those arguments to float64, as NumPy 1 did, which gives the spec's
    timesteps (616.73 .. 0.00015);
  - ``unet_small.Model`` needs ``ch_mult`` as a tuple.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SIDES = ("theirs", "diffrl", "diffrl_batched")
PHASES = ("sampling", "energy_step", "value_steps", "sampler_step", "other")
AUTHORS_FILES = (
    "models/DxMI/trainer.py", "models/DxMI/var_sampler.py", "models/DxMI/unet_small.py", "models/modules.py",
    "models/value.py", "configs/cifar10/T10.yaml",
)

CONFIGS: dict[str, dict] = {
    "cifar10_5m": {"shape": (3, 32, 32), "batch": 8, "unet": "ho_cifar10", "energy_width": 128, "igebm_nh": 128},
    "small8_5m": {"shape": (1, 8, 8), "batch": 128, "unet": (32, 64), "energy_width": 128, "igebm_nh": 128},
    "small8_0.3m": {"shape": (1, 8, 8), "batch": 128, "unet": (32, 64), "energy_width": 32, "igebm_nh": 32},
}
ENERGY_MULTS, ENERGY_BLOCKS = (1, 2, 4), 1
UNET_LAYERS = 2  # res blocks per level of the small UNet (both sides)
FULL = {"rounds": 3, "warmup": 1, "iters": {"cifar10_5m": 3, "small8_5m": 5, "small8_0.3m": 8}}
QUICK = {"rounds": 1, "warmup": 1, "iters": {"cifar10_5m": 1, "small8_5m": 2, "small8_0.3m": 2}}


def check_authors_path(path: str | Path | None) -> Path:
    """The authors' work tree as a resolved Path; a ValueError naming what is missing otherwise."""
    if path is None or str(path) == "":
        raise ValueError("give the path of the authors' code (a work tree of swyoon/Diffusion-by-MaxEntIRL) as the first argument")
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give the path of the authors' code (a work tree of swyoon/Diffusion-by-MaxEntIRL)")
    missing = [f for f in AUTHORS_FILES if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{root} does not look like the authors' code (swyoon/Diffusion-by-MaxEntIRL): missing {', '.join(missing)}")
    return root


def summarise(runs: list[dict]) -> dict:
    """Median over processes (rounds) of each process's mean seconds per iteration, per phase and in total.

    runs: child outputs with ``s_per_iter`` and ``phases`` ({phase: s per iter}).
    """
    out = {"s_per_iter": statistics.median(r["s_per_iter"] for r in runs)}
    out["phases"] = {p: statistics.median(r["phases"][p] for r in runs) for p in PHASES}
    out["rounds_s_per_iter"] = [r["s_per_iter"] for r in runs]
    return out


def paired_ratio(ours: list[dict], theirs: list[dict]) -> float:
    """Median over rounds of diffrl's seconds per iteration over theirs in the same round."""
    return statistics.median(o["s_per_iter"] / t["s_per_iter"] for o, t in zip(ours, theirs, strict=True))


# ----------------------------------------------------------------------------- child processes: one implementation each


class PhaseClock:
    """Seconds spent inside wrapped callables, per phase."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def wrap(self, phase: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        return timed


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _forward_gflops(module, x, *args) -> float:
    """Forward GFLOPs per sample (torch's FLOP counter: matmuls and convolutions)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x, *args)
    return counter.get_total_flops() / x.shape[0] / 1e9


def build_ours(name: str, value_steps: str = "sequential") -> tuple[Callable[[], None], PhaseClock, dict]:
    """diffrl's DxMI as ``diffrl.app.pipeline.train`` composes an image run (the cifar10 preset), with
    the configuration's UNet, batch and energy and ``train.dxdp.value_steps``; ``step()`` and a clock
    of its phases."""
    import torch

    from diffrl.app.config import load_config
    from diffrl.app.pipeline import _dxmi, compose
    from diffrl.app.tasks import make_task
    from diffrl.data import BatchSampler
    from diffrl.ddpm import DDPM
    from diffrl.ebm import EnergyResNet
    from diffrl.image_data import ImageData
    from diffrl.rewards import EnergyReward
    from diffrl.unet import build_unet, ho_cifar10_unet

    c = CONFIGS[name]
    (ch, h, _), batch = c["shape"], c["batch"]
    overrides = [f"train.batch_size={batch}", f"train.dxdp.value_steps={value_steps}", "data.name=benchmark", "image.features=none"]
    config = load_config("cifar10", overrides)
    task = make_task(config, load=False)
    data = torch.rand(1024, *c["shape"]) * 2 - 1
    task.data = ImageData(data, data[:16], data[:16])
    eps_model = ho_cifar10_unet() if c["unet"] == "ho_cifar10" else build_unet(h, ch, c["unet"], UNET_LAYERS)

    def reward(event_shape, cfg):
        energy = EnergyResNet(ch, width=c["energy_width"], mults=ENERGY_MULTS, blocks=ENERGY_BLOCKS)
        return EnergyReward(energy, lr=task.energy_lr, gamma=cfg.train.gamma)

    parts = compose(config, task, DDPM(eps_model), torch.device("cpu"), reward=reward)
    dxmi = _dxmi(config, parts, BatchSampler(data, batch, config.seed))
    clock, agent = PhaseClock(), dxmi.agent
    dxmi.collect = clock.wrap("sampling", dxmi.collect)
    dxmi.mdp.reward.update = clock.wrap("energy_step", dxmi.mdp.reward.update)
    agent.value_loss = clock.wrap("value_steps", agent.value_loss)
    agent.value_step = clock.wrap("value_steps", agent.value_step)
    agent.sampler_loss = clock.wrap("sampler_step", agent.sampler_loss)
    agent.sampler_step = clock.wrap("sampler_step", agent.sampler_step)
    x = data[:2]
    sizes = {
        "sampler_params": _count(parts.policy),
        "energy_params": _count(parts.reward.energy),
        "sampler_gflops_per_sample": _forward_gflops(eps_model, x, torch.full((2,), 500.0)),
        "energy_gflops_per_sample": _forward_gflops(parts.reward.energy, x),
        "energy": f"EnergyResNet(width={c['energy_width']}, mults={ENERGY_MULTS}, blocks={ENERGY_BLOCKS})",
    }
    return dxmi.step, clock, sizes


def _instantiate(spec: dict, **overrides):
    """The object a config entry with ``_target_`` names (as hydra would build it), nested targets first."""
    import importlib

    kwargs = {k: _instantiate(v) if isinstance(v, dict) and "_target_" in v else v
              for k, v in spec.items() if k != "_target_" and k not in overrides}
    kwargs.update(overrides)
    module, _, cls = spec["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def build_theirs(name: str, authors: Path) -> tuple[Callable[[], None], PhaseClock, dict]:
    """The authors' trainer as their train_cifar10.py builds it from configs/cifar10/T10.yaml (single
    process, CPU), with the configuration's UNet, batch and IGEBM width; ``step()`` runs one pass of
    their train_one_epoch loop body."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    sys.path.insert(0, str(authors))
    import models.DxMI.var_sampler as var_sampler
    from models.DxMI.trainer import append_buffer, reset_buffer

    log_cont_noise = var_sampler._log_cont_noise  # NumPy >= 2: keep the bisection in float64, as NumPy 1 did
    var_sampler._log_cont_noise = lambda t, beta_0, beta_T, T: log_cont_noise(t, np.float64(beta_0), np.float64(beta_T), T)

    c = CONFIGS[name]
    (ch, h, _), batch = c["shape"], c["batch"]
    cfg = OmegaConf.to_container(OmegaConf.load(authors / "configs" / "cifar10" / "T10.yaml"))
    net_overrides = {"ch_mult": tuple(cfg["sampler_net"]["ch_mult"])}
    if c["unet"] != "ho_cifar10":
        net_overrides = {"resolution": h, "in_channels": ch, "out_ch": ch, "ch": c["unet"][0],
                         "ch_mult": tuple(w // c["unet"][0] for w in c["unet"]), "num_res_blocks": UNET_LAYERS, "attn_resolutions": []}
    net = _instantiate(cfg["sampler_net"], **net_overrides)
    sampler = _instantiate(cfg["sampler"], net=net, sample_shape=list(c["shape"]))
    value = _instantiate(cfg["value"], net=_instantiate(cfg["value"]["net"], in_chan=ch, nh=c["igebm_nh"]))
    t = cfg["training"]
    not_beta = [p for n, p in net.named_parameters() if "log_betas" not in n]
    optimizer = torch.optim.Adam([{"params": net.log_betas, "lr": float(t["beta_lr"])}, {"params": not_beta, "lr": float(t["lr"])}])
    optimizer_v = torch.optim.Adam(value.parameters(), lr=float(t["v_lr"]))
    trainer = _instantiate(cfg["trainer"], batchsize=batch)
    trainer.set_models(f=None, v=value, sampler=sampler, optimizer=optimizer, optimizer_fstar=None, optimizer_v=optimizer_v)

    clock = PhaseClock()
    sample = clock.wrap("sampling", sampler.sample)
    update_sampler = clock.wrap("sampler_step", trainer.update_sampler)
    first_step_done: list[float] = []
    v_step = optimizer_v.step

    def timed_v_step(*args, **kwargs):
        out = v_step(*args, **kwargs)
        first_step_done.append(time.perf_counter())
        return out

    optimizer_v.step = timed_v_step

    def update_f_v(images, d_sample, state):
        """Their update_f_v: up to its first value-optimiser step is the energy step, the rest the value steps."""
        first_step_done.clear()
        start = time.perf_counter()
        out = trainer.update_f_v(images, d_sample, state)
        end = time.perf_counter()
        clock.seconds["energy_step"] += first_step_done[0] - start
        clock.seconds["value_steps"] += end - first_step_done[0]
        return out

    images = torch.rand(1024, *c["shape"])  # their loader's range [0, 1]
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        x = images[torch.randint(0, images.shape[0], (batch,), generator=generator)]
        assert (x.max().item() <= 1) and (0 <= x.min().item())  # their loop's check
        sampler.eval()
        x = 2 * x - 1
        state = reset_buffer("cpu")
        d_sample = sample(len(x), device="cpu")
        append_buffer(state, d_sample)
        update_f_v(x, d_sample, state)
        update_sampler(state, t["n_generator"], d_sample=None)

    x = torch.rand(2, *c["shape"])
    sizes = {
        "sampler_params": _count(net),
        "energy_params": _count(value),
        "sampler_gflops_per_sample": _forward_gflops(net, x, torch.full((2,), 500.0)),
        "energy_gflops_per_sample": _forward_gflops(value, x, torch.zeros(2, dtype=torch.long)),
        "energy": f"IGEBMEncoderV2(nh={c['igebm_nh']})",
    }
    return step, clock, sizes


def child(side: str, name: str, authors: Path, warmup: int, iters: int, threads: int, seed: int) -> dict:
    """Build one implementation in this process, run warm-up and timed iterations; the timings as a dict."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    build_start = time.perf_counter()
    if side == "theirs":
        step, clock, sizes = build_theirs(name, authors)
    else:
        step, clock, sizes = build_ours(name, "batched" if side == "diffrl_batched" else "sequential")
    build_s = time.perf_counter() - build_start
    for _ in range(warmup):
        step()
    clock.seconds = dict.fromkeys(PHASES, 0.0)
    wall, cpu = [], time.process_time()
    start = time.perf_counter()
    for _ in range(iters):
        s = time.perf_counter()
        step()
        wall.append(time.perf_counter() - s)
    total = time.perf_counter() - start
    phases = {p: s / iters for p, s in clock.seconds.items()}
    phases["other"] = total / iters - sum(phases.values())
    return {"side": side, "config": name, "s_per_iter": total / iters, "cpu_s_per_iter": (time.process_time() - cpu) / iters,
            "iter_s": wall, "phases": phases, "build_s": build_s, **sizes}


# ----------------------------------------------------------------------------- the parent: interleaved rounds


def _machine() -> dict:
    info = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def run_child(side: str, name: str, args: argparse.Namespace, iters: int, plan: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(args.authors), "--child", side, "--config", name,
           "--warmup", str(plan["warmup"]), "--iters", str(iters), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} process for {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("authors", nargs="?", help="path of the authors' code (a work tree of swyoon/Diffusion-by-MaxEntIRL)")
    parser.add_argument("--quick", action="store_true", help="one round of few iterations (a smoke test; numbers not for the record)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, help=f"rounds per configuration (default {FULL['rounds']}, --quick {QUICK['rounds']})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every process (default 2)")
    parser.add_argument("--with-batched", action="store_true",
                        help="also time diffrl with train.dxdp.value_steps=batched (one value step on all transitions; not the paper's)")
    parser.add_argument("--out", type=Path, help="default docs/results/speed.json (--quick: nothing written unless given)")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.authors = check_authors_path(args.authors)
    except ValueError as e:
        parser.error(str(e))
    if args.threads < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error("--threads and --rounds must be >= 1")
    if args.child:
        print(json.dumps(child(args.child, args.config, args.authors, args.warmup, args.iters, args.threads, seed=0)))
        return

    plan = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        plan["rounds"] = args.rounds
    load_before = os.getloadavg()
    start = time.time()
    results = {}
    for name in args.configs:
        sides = SIDES if args.with_batched else SIDES[:2]
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r in range(plan["rounds"]):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                out = run_child(side, name, args, plan["iters"][name], plan)
                runs[side].append(out)
                print(f"{name} round {r + 1} {side}: {out['s_per_iter']:.3f} s/iter  "
                      + "  ".join(f"{p} {s:.3f}" for p, s in out["phases"].items()), flush=True)
        sizes = ("sampler_params", "energy_params", "sampler_gflops_per_sample", "energy_gflops_per_sample", "energy")
        results[name] = {
            "setup": {**{k: list(v) if isinstance(v, tuple) else v for k, v in CONFIGS[name].items()}, "horizon": 10,
                      "iters_per_process": plan["iters"][name], "warmup": plan["warmup"], "rounds": plan["rounds"]},
            **{side: {**summarise(runs[side]), **{k: runs[side][0][k] for k in sizes}} for side in sides},
        }
        for side in sides[1:]:
            suffix = "" if side == "diffrl" else "_batched"
            results[name][f"ratio{suffix}"] = results[name][side]["s_per_iter"] / results[name]["theirs"]["s_per_iter"]
            results[name][f"ratio{suffix}_paired_median"] = paired_ratio(runs[side], runs["theirs"])
        results[name]["runs"] = runs
    import torch

    record = {
        "command": shlex.join(["python", "benchmarks/official_compare.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "threads": args.threads, "torch": torch.__version__, "machine": _machine(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "wall_s": time.time() - start,
        "target_ratio": 0.8, "results": results,
    }
    print("\n| configuration | theirs s/iter | diffrl s/iter | diffrl / theirs | paired median |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        for side, suffix in (("diffrl", ""), ("diffrl_batched", "_batched")):
            if side in r:
                label = f"{name} (value_steps=batched)" if suffix else name
                print(f"| {label} | {r['theirs']['s_per_iter']:.3f} | {r[side]['s_per_iter']:.3f} "
                      f"| {r['ratio' + suffix]:.3f} | {r['ratio' + suffix + '_paired_median']:.3f} |")
    out = args.out or (None if args.quick else REPO / "docs" / "results" / "speed.json")
    if out is not None:
        Path(out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
