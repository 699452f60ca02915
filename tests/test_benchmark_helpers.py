"""Helpers the benchmarks rely on for honest reports: stage times that survive a resumed run, and
the learning-curve plot of docs/results."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from diffrl.plots import plot_learning_curves

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_timing.py"
_spec = importlib.util.spec_from_file_location("bench_timing", _PATH)
timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timing)


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
