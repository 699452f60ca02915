"""Helpers the benchmarks rely on for honest reports: stage times that survive a resumed run, the
learning-curve plot of docs/results, the 8-Gaussian mode-shape diagnostic, the teacher chains the
2-D table was measured with, and the DDIM baseline of the digits table (``schedule="ddim"``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffrl.app import pipeline
from diffrl.app.config import load_config
from diffrl.data import toy_data
from diffrl.plots import plot_learning_curves
from diffrl.sampling import ddim_sample


def _load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _load("_timing")
sys.modules.setdefault("_timing", timing)  # the benchmarks import it as a sibling script
shape = _load("mode_shape")
toy2d = _load("toy2d")

TINY = ["pretrain.steps=30", "pretrain.num_timesteps=100", "pretrain.eval_horizon=10", "data.n_train=2000", "data.n_eval=400",
        "net.hidden=16", "net.depth=2", "net.time_dim=8", "threads=1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny 8-Gaussian teacher run (train.last_sigma at its default, 0.05)."""
    run = tmp_path_factory.mktemp("bench") / "teacher"
    pipeline.pretrain(load_config("8gaussians", TINY), run, progress=False)
    return run


def test_train_time_is_measured_once_and_reported_again_on_a_rerun(tmp_path: Path) -> None:
    calls = []
    first = timing.train_seconds(tmp_path, lambda: calls.append(1))
    again = timing.train_seconds(tmp_path, lambda: calls.append(1))
    assert calls == [1], "a recorded run must not train again"
    assert again == first >= 0.0


def test_a_finished_run_without_a_record_has_an_unknown_time_and_is_not_retrained(tmp_path: Path) -> None:
    calls = []
    assert timing.train_seconds(tmp_path, lambda: calls.append(1), finished=True) is None
    assert calls == [] and not (tmp_path / "bench_seconds.json").exists()


def test_a_failed_training_leaves_no_record(tmp_path: Path) -> None:
    def boom() -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        timing.train_seconds(tmp_path, boom)
    assert not (tmp_path / "bench_seconds.json").exists()


def test_learning_curves_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    plot_learning_curves({"a": [([0, 50, 100], [2.0, 1.5, 1.2]), ([0, 50], [2.2, 1.4])]}, path, "FD", {"teacher": 0.5})
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_mode_shape_reads_the_generating_parameters_of_8_gaussians() -> None:
    s = shape.mode_shape(toy_data("8gaussians", 40_000, 3))
    std = 0.5 / 1.414
    assert abs(s["radial_bias"]) < 0.01 and s["worst_share_error"] < 0.01
    assert abs(s["radial_std"] - std) < 0.01 and abs(s["tangential_std"] - std) < 0.01


def test_mode_shape_sees_modes_widened_along_the_circle_only() -> None:
    x = toy_data("8gaussians", 40_000, 3)
    centre = shape.EIGHT_GAUSSIANS_CENTRES[torch.cdist(x, shape.EIGHT_GAUSSIANS_CENTRES).argmin(1)]
    along = torch.stack([-centre[:, 1], centre[:, 0]], 1) / centre.norm(dim=1, keepdim=True)
    offset = x - centre
    tangential = (offset * along).sum(1, keepdim=True) * along
    s = shape.mode_shape(centre + offset + 0.25 * tangential)
    assert abs(s["radial_std"] - 0.5 / 1.414) < 0.01
    assert abs(s["tangential_std"] - 1.25 * 0.5 / 1.414) < 0.015  # a few tails cross to the next mode


def test_teacher_chains_end_with_the_recorded_last_sigma(teacher: Path) -> None:
    """A teacher run is sampled with its own chain (last sigma 1e-3, as the recorded tables were),
    not with train.last_sigma (0.05, where DxMI starts), whatever its config says."""
    assert "last_sigma: 0.05" in (teacher / "config.yaml").read_text()
    for steps, schedule in [(10, "strided"), (5, "var")]:
        row = toy2d.evaluate_teacher(teacher, steps, seed=2, schedule=schedule)
        assert row["steps"] == steps and row["n"] == 400 and row["schedule"] == schedule
        assert float(pipeline.from_run(teacher, steps=steps, schedule=schedule).policy.sigma[-1].detach()) == pytest.approx(1e-3)


def test_mode_shape_samples_a_teacher_run_whatever_which_says(teacher: Path) -> None:
    run = shape.sampler_of(str(teacher), "last", 5, "var")
    assert run.kind == "teacher" and run.policy.horizon == 5
    assert float(run.policy.sigma[-1].detach()) == pytest.approx(1e-3)


def test_mode_shape_prints_a_row_per_run(teacher: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["mode_shape.py", str(teacher), "--steps", "5", "--schedule", "var"])
    shape.main()
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 4 and rows[2].startswith("| data (an independent draw) |") and rows[3].startswith(f"| {teacher} |")


def test_ddim_schedule_of_a_teacher_run_is_deterministic_ddim_over_the_strided_steps(teacher: Path) -> None:
    run = pipeline.from_run(teacher, steps=5, schedule="ddim")
    expected = ddim_sample(run.teacher.eps_model, run.teacher.schedule(5, "strided"), 64, (2,), torch.Generator().manual_seed(3))[-1]
    got = pipeline.sample(teacher, 64, steps=5, seed=3, schedule="ddim")
    np.testing.assert_array_equal(got, run.task.to_output(expected))
    assert not np.array_equal(got, pipeline.sample(teacher, 64, steps=5, seed=3, schedule="strided"))
    scores = pipeline.evaluate(teacher, steps=5, schedule="ddim")
    assert scores["steps"] == 5 and np.isfinite(scores["sw"])
