"""The four CLI jobs as subprocesses, exact resume, the non-finite-loss stop and every bad input's message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffrl.app import pipeline
from diffrl.app.cli import main
from diffrl.app.config import load_config
from diffrl.dxmi import DxMI
from diffrl.run import RunDir

TINY = [
    "net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=2000", "data.n_eval=400",
    "pretrain.steps=300", "pretrain.batch_size=128", "pretrain.eval_horizon=10",
    "train.loop.steps=40", "train.batch_size=32", "train.loop.eval_every=20", "train.loop.checkpoint_every=20", "train.loop.log_every=10",
    "threads=1",
]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "diffrl.app.cli", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    pipeline.pretrain(load_config("8gaussians", TINY), out, progress=False)
    return out


def test_cli_jobs_end_to_end(tmp_path: Path, teacher: Path) -> None:
    dxmi = tmp_path / "dxmi"
    r = cli("train", "--preset", "8gaussians", "--teacher", str(teacher), "--out", str(dxmi), "--no-progress", *TINY)
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "checkpoint.pt", "model.pt", "metrics.jsonl", "samples.npy", "samples.png", "value_energy.png"):
        assert (dxmi / name).is_file(), name
    assert list((dxmi / "tb").iterdir()), "no TensorBoard events"
    steps = [json.loads(line)["step"] for line in (dxmi / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 0 and max(steps) == 40

    r = cli("sample", str(teacher), "--n", "300", "--out", str(tmp_path / "s.npy"))  # all 1000 teacher steps
    assert r.returncode == 0, r.stderr
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (300, 2) and np.isfinite(samples).all()
    assert 1.0 < np.abs(samples).mean() < 4.0, "samples must come back in the data's units, not normalised ones"

    r = cli("evaluate", str(dxmi))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["steps"] == 5 and {"sw", "mmd", "auc"} <= report.keys()
    assert 0.0 <= report["auc"] <= 1.0 and report["sw"] > 0
    r = cli("evaluate", str(dxmi), "--which", "last")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout).keys() == report.keys()
    r = cli("evaluate", str(dxmi), "--guidance", "0.5", "--split", "val")
    assert r.returncode == 0, r.stderr
    guided = json.loads(r.stdout)
    assert (guided["guidance"], guided["split"], report["guidance"], report["split"]) == (0.5, "val", 0.0, "test")
    assert guided["sw"] != report["sw"] and guided["auc"] != report["auc"]  # other samples, other reference points

    for which in ("best", "last"):
        r = cli("sample", str(dxmi), "--n", "200", "--which", which, "--out", str(tmp_path / f"{which}.npy"))
        assert r.returncode == 0, r.stderr
    selected_final = RunDir(dxmi).load_model()["step"] == 40
    assert np.array_equal(np.load(tmp_path / "best.npy"), np.load(tmp_path / "last.npy")) == selected_final


def _final_state(run: Path) -> dict:
    """The raw policy's parameters and those of any EMA copies at the end of training, one flat dict."""
    trainer = RunDir(run).load_checkpoint()["trainer"]
    emas = {f"{name}.{key}": value for name in ("ema_policy", "ema_energy") for key, value in trainer.get(name, {}).items()}
    return {**trainer["agent"]["policy"], **emas}


@pytest.mark.parametrize("options", [[], ["train.lr_decay=cosine"], ["train.ema_decay=0.9", "train.energy_ema_decay=0.9"]])
def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path: Path, teacher: Path, monkeypatch, options: list[str]) -> None:
    config = load_config("8gaussians", [*TINY, f"train.teacher={teacher}", *options])
    pipeline.train(config, tmp_path / "whole", progress=False)
    trainer = RunDir(tmp_path / "whole").load_checkpoint()["trainer"]
    final_rates = [g["lr"] for o in (trainer["agent"]["policy_optimizer"], trainer["reward"]["optimizer"]) for g in o["param_groups"]]
    if config.train.lr_decay == "cosine":
        assert max(final_rates) < 1e-12, "cosine decay must end at a zero learning rate"
    else:
        assert min(final_rates) > 0

    original_step, calls = DxMI.step, {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 31:
            raise KeyboardInterrupt("killed")
        return original_step(self)

    monkeypatch.setattr(DxMI, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train(config, tmp_path / "killed", progress=False)
    assert RunDir(tmp_path / "killed").load_checkpoint()["step"] == 20
    monkeypatch.setattr(DxMI, "step", original_step)
    pipeline.train(config, tmp_path / "killed", resume=True, progress=False)

    whole, resumed = _final_state(tmp_path / "whole"), _final_state(tmp_path / "killed")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)
    assert pipeline.evaluate(tmp_path / "killed") == {**pipeline.evaluate(tmp_path / "whole"), "run": str(tmp_path / "killed")}
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]


def test_non_finite_loss_stops_with_its_name_and_step_and_keeps_the_checkpoint(tmp_path: Path, teacher: Path, monkeypatch) -> None:
    original_step, calls = DxMI.step, {"n": 0}

    def poisoned_step(self):
        calls["n"] += 1
        metrics = original_step(self)
        if calls["n"] == 27:
            metrics["loss_value"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(DxMI, "step", poisoned_step)
    config = load_config("8gaussians", [*TINY, f"train.teacher={teacher}"])
    with pytest.raises(FloatingPointError, match=r"loss_value became non-finite at step 27"):
        pipeline.train(config, tmp_path / "nan", progress=False)
    assert RunDir(tmp_path / "nan").load_checkpoint()["step"] == 20


def _error(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    return capsys.readouterr().err


def test_bad_inputs_fail_before_training_with_clear_messages(tmp_path: Path, teacher: Path, capsys) -> None:
    out = str(tmp_path / "r")
    nan = np.random.default_rng(0).normal(size=(100, 2))
    nan[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "cube.npy", np.zeros((10, 2, 2)))
    np.save(tmp_path / "three.npy", np.random.default_rng(0).normal(size=(500, 3)))

    assert "rows hold NaN or inf (first rows: [7])" in _error(capsys, "train", "--out", out, "--data", str(tmp_path / "nan.npy"))
    assert "expected an array of shape (N, D)" in _error(capsys, "train", "--out", out, "--data", str(tmp_path / "cube.npy"))
    assert "data file not found" in _error(capsys, "train", "--out", out, "--data", str(tmp_path / "nope.npy"))
    assert "trained on D = 2" in _error(capsys, "train", "--out", out, "--teacher", str(teacher), "--data", str(tmp_path / "three.npy"), *TINY)
    assert "unknown preset 'nine-gaussians'" in _error(capsys, "train", "--preset", "nine-gaussians", "--out", out)
    assert "train.horizon (T) must be >= 1, got 0" in _error(capsys, "train", "--out", out, "train.horizon=0")
    assert "tau_entropy must be >= 0, got -0.1" in _error(capsys, "train", "--out", out, "train.tau_entropy=-0.1")
    assert "net.energy_activation must be one of silu, relu, got 'tanh'" in _error(capsys, "train", "--out", out, "net.energy_activation=tanh")
    assert "train.lr_decay must be none or cosine, got 'linear'" in _error(capsys, "train", "--out", out, "train.lr_decay=linear")
    assert "train.energy_ema_decay must be in [0, 1) or null, got 1.0" in _error(capsys, "train", "--out", out, "train.energy_ema_decay=1.0")
    assert "no run folder at" in _error(capsys, "train", "--out", out, "--teacher", str(tmp_path / "missing"))
    assert "no run folder at" in _error(capsys, "evaluate", str(tmp_path / "missing"))
    assert "value guidance needs a DxMI run with one" in _error(capsys, "evaluate", str(teacher), "--guidance", "0.3")
    assert "--guidance must be a finite number >= 0, got -1" in _error(capsys, "sample", str(teacher), "--guidance", "-1")
    assert "nothing to resume" in _error(capsys, "train", "--out", str(tmp_path / "missing"), "--resume")
    assert "bad configuration" in _error(capsys, "train", "--out", out, "train.no_such_key=1")
    assert not Path(out).exists(), "a failed start must not leave a run folder behind"


def test_old_config_layouts_load_with_their_keys_moved(tmp_path: Path) -> None:
    """A 0.1 flat layout and a 0.2 one with tau_entropy in the agent sections load as today's: the run's
    own agent's tau_entropy becomes train.tau_entropy, the inert copies of the other sections are
    dropped; on the command line an old key is a one-line error naming the new one."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("task: points\ndata:\n  name: 8gaussians\ntrain:\n  tau_entropy: 0.3\n  lr_sampler: 2.0e-5\n  steps: 7\n")
    config = load_config(str(flat))
    assert (config.train.tau_entropy, config.train.dxdp.lr_sampler, config.train.loop.steps) == (0.3, 2e-5, 7)
    sections = tmp_path / "sections.yaml"
    sections.write_text("task: points\ntrain:\n  agent: ppo\n  dxdp:\n    tau_entropy: 0.5\n  reinforce:\n    tau_entropy: 0.6\n"
                        "  ppo:\n    tau_entropy: 0.05\n    epochs: 2\n")
    config = load_config(str(sections))
    assert (config.train.tau_entropy, config.train.ppo.epochs) == (0.05, 2)
    for key, new in (("train.dxdp.tau_entropy", "train.tau_entropy"), ("train.ppo.tau_entropy", "train.tau_entropy"),
                     ("train.steps", "train.loop.steps")):
        with pytest.raises(ValueError, match=f"{key} is now {new}"):
            load_config("8gaussians", [f"{key}=1"])
