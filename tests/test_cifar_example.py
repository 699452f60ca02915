"""examples/cifar_dxmi.py (issue 4) at its --smoke size, the code path of the paper's CIFAR-10 run
(configs/cifar10.yaml) with a tiny teacher, 16x16 images and a small FID feature network: the script
as a subprocess, exact resume, a 2-process gloo torchrun run, clear errors before any run folder,
and `diffrl sample` / `diffrl evaluate` on its run folder. About a minute on a 2-core CPU."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cifar = _load("cifar_dxmi", ROOT / "examples" / "cifar_dxmi.py")


def _script(*args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    return subprocess.run([*launcher, str(ROOT / "examples" / "cifar_dxmi.py"), *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=180)


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock timings (perf/*), which no two runs share."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def _assert_same(a, b, where: str = "") -> None:
    """Nested checkpoint contents equal, tensors bitwise."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One 4-step smoke run of the script as a subprocess (evaluations at steps 0, 2 and 4), then fid96."""
    tmp = tmp_path_factory.mktemp("cifar")
    done = _script("--smoke", "--no-progress", "--out", tmp / "run", "--data-dir", tmp / "data", "--final-fid50k")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run"


def test_smoke_run_writes_a_complete_run_folder_with_the_cifar10_preset(smoke_run: Path) -> None:
    from diffrl.app import from_run, load_config
    from diffrl.app.config import from_yaml

    for name in ("config.yaml", "checkpoint.pt", "model.pt", "metrics.jsonl", "final.json", "samples.png"):
        assert (smoke_run / name).is_file(), name
    assert list((smoke_run / "tb").glob("events.out.tfevents.*")) and len(list((smoke_run / "grids").iterdir())) == 3
    records = _records(smoke_run)
    assert [r["step"] for r in records if "eval/fid64" in r] == [0, 2, 4]  # FID named by its sample count
    assert [r["step"] for r in records if "loss_energy" in r] == [1, 2, 3, 4]
    final = json.loads((smoke_run / "final.json").read_text())
    assert final["step"] == 4 and final["best"]["fid64"] == min(r["eval/fid64"] for r in records if "eval/fid64" in r)
    assert final["final"]["n"] == 96 and math.isfinite(final["final"]["fid96"])  # --final-fid50k at smoke size
    assert list((smoke_run.parent / "data" / "fid_stats").glob("*_smoke-features-v1_n*.pt"))  # cached reference stats
    # the paper's row, changed only in sizes by --smoke
    saved, preset = from_yaml((smoke_run / "config.yaml").read_text()), load_config("cifar10")
    assert saved.train.dxdp == preset.train.dxdp and saved.train.horizon == 10 and saved.train.shared_optimizer
    assert (saved.image.features, saved.train.batch_size, saved.image.ebm_width, saved.train.loop.steps) == ("small", 8, 8, 4)
    run = from_run(smoke_run)
    assert run.policy.horizon == 10 and float(run.policy.sigma[-1].detach()) == pytest.approx(1e-3)


def test_a_resumed_partial_run_equals_the_whole_run_bitwise(smoke_run: Path, tmp_path: Path) -> None:
    data = smoke_run.parent / "data"
    cache = next((data / "fid_stats").iterdir())
    cached_at = cache.stat().st_mtime_ns
    common = ["--smoke", "--no-progress", "--data-dir", str(data), "--out", str(tmp_path / "run")]
    cifar.main([*common, "train.loop.steps=2"])  # stopped after its step-2 checkpoint
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    cifar.main([*common, "--resume", "train.loop.steps=4"])
    whole, resumed = (torch.load(run / "checkpoint.pt", weights_only=True) for run in (smoke_run, tmp_path / "run"))
    _assert_same(resumed, whole, "checkpoint.pt")
    _assert_same(torch.load(tmp_path / "run" / "model.pt", weights_only=True), torch.load(smoke_run / "model.pt", weights_only=True), "model.pt")
    assert _records(tmp_path / "run") == _records(smoke_run)  # no repeated or lost steps, the same numbers
    assert cache.stat().st_mtime_ns == cached_at  # the reference statistics were read, not recomputed


def test_two_gloo_processes_end_with_identical_parameters_and_only_rank0_writes(tmp_path: Path) -> None:
    done = _script("--smoke", "--no-progress", "--out", tmp_path / "ddp", "--data-dir", tmp_path / "data", "--final-fid50k",
                   "--final-samples", "16", "--guidance", "0.1", "--dump-params", tmp_path / "dump", torchrun=2)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "dump" / f"rank{r}.pt") for r in (0, 1))
    assert r0.numel() > 10_000 and torch.equal(r0, r1), "gradients (sampler, sigma, value = energy) and AVR must be averaged"
    run = tmp_path / "ddp"
    assert [r["step"] for r in _records(run)] == [0, 1, 2, 2, 3, 4, 4]  # one writer: every record once
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    state = torch.load(run / "checkpoint.pt", weights_only=True)["trainer"]
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0]["cpu"], state["rank_rng"][1]["cpu"])  # per-rank seeds
    final = json.loads((run / "final.json").read_text())["final"]
    assert final["guidance"] == 0.1 and final["n"] == 16 and math.isfinite(final["fid16"])  # FID split over the ranks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ddp", "dump"]


def test_missing_inputs_are_clear_errors_before_any_run_folder(smoke_run: Path, tmp_path: Path) -> None:
    data, out = smoke_run.parent / "data", tmp_path / "run"
    done = _script("--smoke", "--out", out, "--data-dir", data, "--fid-weights", tmp_path / "no.pt")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"cifar_dxmi.py: error: --fid-weights {tmp_path / 'no.pt'}: no such file"
    base = ["--smoke", "--no-progress", "--out", str(out), "--data-dir", str(data)]
    cases = [
        (["--teacher", str(tmp_path / "no_teacher")], FileNotFoundError, re.escape(f"teacher folder not found: {tmp_path / 'no_teacher'}") + "$"),
        (["--data", str(tmp_path / "no_images")], FileNotFoundError, "no_images"),
        (["--amp", "bf16"], ValueError, "needs a CUDA device"),
        (["--resume"], FileNotFoundError, "nothing to resume"),
        (["train.dxdp.lr_sampler=-1"], ValueError, "lr_sampler"),
    ]
    for flags, error, message in cases:
        with pytest.raises(error, match=message):
            cifar.main([*base, *flags])
        assert not out.exists(), flags


def test_diffrl_sample_and_evaluate_route_the_run_to_the_image_task(smoke_run: Path, tmp_path: Path, capsys) -> None:
    from diffrl.app.cli import main as cli

    assert cli(["sample", str(smoke_run), "--n", "4", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.dtype == np.uint8 and samples.shape == (4, 16, 16, 3) and (tmp_path / "s.png").is_file()
    capsys.readouterr()
    assert cli(["evaluate", str(smoke_run), "--n", "8", "--guidance", "0.1"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["kind"] == "dxmi" and scores["steps"] == 10 and math.isfinite(scores["fid8"])  # image.features=small


def test_the_gpu_benchmark_refuses_a_machine_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    bench = _load("cifar_gpu", ROOT / "benchmarks" / "cifar_gpu.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--iters", "1"])
    assert exit_info.value.code == 2
