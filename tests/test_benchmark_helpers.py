"""Helpers the benchmarks rely on for honest reports: stage times that survive a resumed run, the
learning-curve plot of docs/results, and the 8-Gaussian mode-shape diagnostic."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffrl.data import toy_data
from diffrl.plots import plot_learning_curves


def _load(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


timing = _load("_timing")
shape = _load("mode_shape")


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
