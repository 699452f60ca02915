"""examples/cifar_dxmi.py (issue 4) in its smoke sizes: the script as a subprocess, a 2-process gloo
torchrun run, exact resume, the offline FID path with a user Inception weights file, and the clear
errors before training. About a minute in all on a 2-core CPU."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


cifar = _load("cifar_dxmi", ROOT / "examples" / "cifar_dxmi.py")


def _script(*args: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
    return subprocess.run([*launcher, str(ROOT / "examples" / "cifar_dxmi.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


def _smoke_args(tmp: Path, out: str, *more: str) -> list[str]:
    return ["--smoke", "--no-progress", "--out", str(tmp / out), "--data-dir", str(tmp / "data"), *more]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One 4-step smoke run of the script as a subprocess (evaluations at steps 0, 2 and 4)."""
    tmp = tmp_path_factory.mktemp("cifar")
    done = _script(*_smoke_args(tmp, "run", "--final-fid50k"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run"


def test_smoke_run_writes_a_complete_run_folder(smoke_run: Path) -> None:
    from diffrl.image_experiment import restore
    from diffrl.run import RunDir

    for name in ("config.yaml", "args.json", "checkpoint.pt", "model.pt", "metrics.jsonl", "fid_history.json",
                 "final.json", "samples.png"):
        assert (smoke_run / name).is_file(), name
    assert list((smoke_run / "tb").glob("events.out.tfevents.*"))  # a second file holds the final FID (writer reopened)
    assert sorted(p.name for p in (smoke_run / "grids").iterdir()) == [f"step_000000{i}.png" for i in (0, 2, 4)]
    history = json.loads((smoke_run / "fid_history.json").read_text())
    assert [h["step"] for h in history] == [0, 2, 4] and all("fid64" in h for h in history)  # named by sample count
    final = json.loads((smoke_run / "final.json").read_text())
    assert final["step"] == 4 and final["best_fid64"] == min(h["fid64"] for h in history)
    assert math.isfinite(final["fid96"])  # --final-fid50k at smoke size: --final-samples 96 of the best model
    assert list((smoke_run.parent / "data" / "fid_stats").glob("*_smoke-features-v1_n96.pt"))  # cached reference stats
    state = torch.load(smoke_run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and len(state["trainer"]["rng"]) == 1
    models = restore(RunDir.open(smoke_run))  # model.pt is the library's DxMI layout
    assert models.policy.horizon == 10 and float(models.policy.sigma[-1].detach()) == pytest.approx(1e-3)
    assert cifar.fid_name(10_000) == "fid10k" and cifar.fid_name(50_000) == "fid50k"


def test_resume_continues_the_step_count_and_the_fid_history_exactly(smoke_run: Path, tmp_path: Path) -> None:
    data = smoke_run.parent / "data"
    resumed = tmp_path / "resumed"
    shutil.copytree(smoke_run, resumed)
    cache = next((data / "fid_stats").iterdir())
    cached_at = cache.stat().st_mtime_ns
    common = ["--smoke", "--no-progress", "--data-dir", str(data), "--steps", "6"]
    cifar.main([*common, "--out", str(resumed), "--resume", "--dump-params", str(tmp_path / "resumed_dump")])
    cifar.main([*common, "--out", str(tmp_path / "straight"), "--dump-params", str(tmp_path / "straight_dump")])

    history = json.loads((resumed / "fid_history.json").read_text())
    assert [h["step"] for h in history] == [0, 2, 4, 6]
    assert torch.load(resumed / "checkpoint.pt", weights_only=True)["step"] == 6
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_energy" in r] == [1, 2, 3, 4, 5, 6]  # no repeated or lost steps
    assert [r["step"] for r in records if "eval/fid64" in r] == [0, 2, 4, 6]
    assert cache.stat().st_mtime_ns == cached_at  # the reference statistics were read, not recomputed
    a, b = (torch.load(tmp_path / f"{d}_dump" / "rank0.pt") for d in ("resumed", "straight"))
    assert a["step"] == b["step"] == 6
    assert torch.equal(a["flat"], b["flat"]), "4 steps + resume + 2 steps must equal 6 uninterrupted steps"
    assert json.loads((resumed / "fid_history.json").read_text()) == json.loads((tmp_path / "straight" / "fid_history.json").read_text())


def test_two_gloo_processes_end_with_identical_parameters_and_only_rank0_writes(tmp_path: Path) -> None:
    done = _script(*_smoke_args(tmp_path, "ddp", "--guidance", "0.1", "--dump-params", str(tmp_path / "dump")), torchrun=2)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "dump" / f"rank{r}.pt") for r in (0, 1))
    assert r0["step"] == r1["step"] == 4
    assert torch.equal(r0["flat"], r1["flat"]), "gradients (sampler, sigma, value) and AVR must be synchronised"
    run = tmp_path / "ddp"
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 2, 3, 4, 4]  # one writer: every record once
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["world_size"] == 2 and len(state["trainer"]["rng"]) == 2
    assert not torch.equal(state["trainer"]["rng"][0]["cpu"], state["trainer"]["rng"][1]["cpu"])  # per-rank seeds
    assert json.loads((run / "final.json").read_text())["guidance"] == 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ddp", "dump"]


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """A user weights file with torch-fidelity's Inception architecture and random values (~91 MB)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("weights") / "inception_random.pt"
    with mock.patch.object(fe, "load_state_dict_from_url", return_value=None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        module = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(module.state_dict(), path)
    return path


def test_offline_fid_uses_the_given_inception_weights_file(inception_weights: Path) -> None:
    args, _ = cifar.parse_args(["--fid-weights", str(inception_weights)])
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("must not download")):
        metric, tag = cifar.build_fid(args)
    assert tag.startswith("inception-") and tag != "inception-2015-12-05-6726825d"  # the cache key names the file
    g = torch.Generator().manual_seed(0)
    metric.update(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g), real=True)
    metric.update(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=g), real=False)
    assert torch.isfinite(metric.compute())


def test_wrong_shape_fid_weights_stop_the_script_before_training(inception_weights: Path, tmp_path: Path) -> None:
    state = torch.load(inception_weights, weights_only=True)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # torchvision's classifier size
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    done = _script(*_smoke_args(tmp_path, "run", "--fid-weights", str(wrong)))
    assert done.returncode == 2
    assert "does not fit torch-fidelity's Inception" in done.stderr and "fc.weight" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_missing_inputs_are_clear_errors_before_training(tmp_path: Path) -> None:
    base = ["--no-progress", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")]
    cases = {
        "teacher": (["--teacher", str(tmp_path / "no_teacher")], "teacher"),
        "data": (["--smoke", "--data", str(tmp_path / "no_images")], "no_images"),
        "fid weights": (["--smoke", "--fid-weights", str(tmp_path / "no.pt")], "no such file"),
        "amp on cpu": (["--smoke", "--amp", "bf16"], "needs a CUDA device"),
        "resume nothing": (["--smoke", "--resume"], "no run to continue"),
    }
    for what, (flags, message) in cases.items():
        with pytest.raises(cifar.SetupError, match=message):
            cifar.main([*base, *flags])
        assert not (tmp_path / "run").exists(), what


def test_the_gpu_benchmark_refuses_a_machine_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    bench = _load("cifar_gpu", ROOT / "benchmarks" / "cifar_gpu.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--iters", "1"])
    assert exit_info.value.code == 2


def test_the_gradient_hook_clips_before_the_step_in_one_process() -> None:
    """One process: no all-reduce, and the sampler's clip (moved out of DxDP) acts before Adam steps."""
    w = torch.nn.Parameter(torch.zeros(4))
    sgd = torch.optim.SGD([w], lr=1.0)
    cifar.average_gradients_before_step(sgd, cifar.Dist(0, 1, torch.device("cpu")), clip=0.1)
    w.grad = torch.full((4,), 10.0)
    sgd.step()
    assert float(w.detach().norm()) == pytest.approx(0.1, rel=1e-4)
