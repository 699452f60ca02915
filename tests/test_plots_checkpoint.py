"""Checkpoint loading of bad files (one clear error), atomic writes, save_array, and plot figures."""
from __future__ import annotations

import io
import os
import pickle

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from diffrl.checkpoint import (  # noqa: E402
    CorruptFileError,
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    save_array,
    save_checkpoint,
)
from diffrl.plots import plot_heatmaps, plot_samples  # noqa: E402


# ------------------------------------------------------------------ checkpoint: bad files


class _Custom:
    pass


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def _good_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"weights": torch.randn(64, 32), "step": 7, "eval": {"sw2": 0.5}}, buf)
    return buf.getvalue()


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


BAD_FILES = {
    "empty": lambda: b"",
    "truncated": lambda: _good_bytes()[: len(_good_bytes()) // 2],
    "truncated_early": lambda: _good_bytes()[:100],
    "random_bytes": lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": lambda: b"hello, I am not a checkpoint\n",
    "os_system_pickle": lambda: pickle.dumps(_Evil(), protocol=2),
    "os_system_pickle_p4": lambda: pickle.dumps(_Evil(), protocol=4),
    "custom_class": lambda: _torch_bytes({"x": _Custom()}),
    "top_level_list": lambda: _torch_bytes([torch.ones(2), 3]),
    "top_level_tensor": lambda: _torch_bytes(torch.ones(3)),
}


def _assert_one_line_naming(exc: BaseException, path) -> None:
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message
    assert len(message) < len(str(path)) + 200, message


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_load_checkpoint_bad_file_raises_corrupt_file_error(tmp_path, kind, capfd):
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(BAD_FILES[kind]())
    with pytest.raises(CorruptFileError) as info:
        load_checkpoint(path)
    _assert_one_line_naming(info.value, path)
    assert "not a readable diffrl checkpoint" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert "should-never-run" not in capfd.readouterr().out


def test_load_checkpoint_reasons_are_specific(tmp_path):
    cases = {
        "empty": "empty file",
        "truncated": "truncated",
        "os_system_pickle": r"weights_only.*system",
        "custom_class": r"weights_only.*_Custom",
        "top_level_list": "top level is list",
    }
    for kind, words in cases.items():
        path = tmp_path / f"{kind}.pt"
        path.write_bytes(BAD_FILES[kind]())
        with pytest.raises(CorruptFileError, match=words):
            load_checkpoint(path)


def test_load_checkpoint_fuzzed_files_all_raise_corrupt_file_error(tmp_path):
    good = _good_bytes()
    rng = np.random.default_rng(1)
    blobs = [good[:n] for n in range(1, len(good), 211)]
    blobs += [rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes() for _ in range(100)]
    path = tmp_path / "fuzz.pt"
    for blob in blobs:
        path.write_bytes(blob)
        with pytest.raises(CorruptFileError) as info:
            load_checkpoint(path)
        _assert_one_line_naming(info.value, path)


def test_load_checkpoint_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(path)
    _assert_one_line_naming(info.value, path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)  # a directory is not a checkpoint file either


def test_good_checkpoint_round_trips(tmp_path):
    state = {"weights": torch.randn(5, 3), "step": 11, "nested": {"a": [1, 2.5, "x"]}}
    path = tmp_path / "ckpt.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"], state["weights"])
    assert loaded["step"] == 11 and loaded["nested"] == state["nested"]


# ------------------------------------------------------------------ atomic writes


def test_atomic_writes_replace_content_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first\n")
    assert path.read_text() == "first\n"
    atomic_write_text(path, "second, with ünïcode\n")
    assert path.read_text(encoding="utf-8") == "second, with ünïcode\n"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01\x02")
    atomic_write_bytes(tmp_path / "blob.bin", b"\x03")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x03"
    save_checkpoint({"a": torch.ones(2)}, tmp_path / "c.pt")
    save_checkpoint({"a": torch.zeros(2)}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["a"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "c.pt", "out.txt"]


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"a": torch.ones(2)}, path)
    with pytest.raises(Exception):
        save_checkpoint({"bad": lambda: None}, path)  # torch.save cannot pickle a lambda
    assert torch.equal(load_checkpoint(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# ------------------------------------------------------------------ save_array


def test_save_array_round_trips(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / "samples.npy"
    save_array(path, array)
    np.testing.assert_array_equal(np.load(path), array)
    save_array(path, torch.ones(2, 2))  # tensors too, replacing the old content
    np.testing.assert_array_equal(np.load(path), np.ones((2, 2), dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npy"]


@pytest.mark.parametrize("name", ["foo.txt", "foo", "foo.npz"])
def test_save_array_refuses_other_suffixes(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.npy"):
        save_array(tmp_path / name, np.zeros(3))
    assert list(tmp_path.iterdir()) == []  # nothing written, no silent .npy appended


# ------------------------------------------------------------------ plots


def _colorbar_axes(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_heatmaps_have_labelled_axes_colorbar_per_panel_and_title(tmp_path):
    panels = {
        "V(x, 0)": lambda x: x.pow(2).sum(-1),
        "V(x, 1)": lambda x: x[:, 0],
        "E(x)": lambda x: -x[:, 1],
    }
    path = tmp_path / "value_energy.png"
    fig = plot_heatmaps(panels, 2.0, path, resolution=16, title="values and energy")
    assert path.is_file() and path.stat().st_size > 0
    colorbars = _colorbar_axes(fig)
    images = [ax for ax in fig.axes if ax not in colorbars]
    assert len(images) == 3 and len(colorbars) == 3
    assert [cb.get_ylabel() for cb in colorbars] == list(panels)
    for ax, name in zip(images, panels):
        assert ax.get_title() == name
        assert "x_1" in ax.get_xlabel() and "x_2" in ax.get_ylabel()
    assert fig._suptitle is not None and fig._suptitle.get_text() == "values and energy"


def test_heatmaps_old_call_still_works(tmp_path):
    fig = plot_heatmaps({"E(x)": lambda x: x.sum(-1)}, 1.0, tmp_path / "e.png", 8)
    assert (tmp_path / "e.png").is_file()
    assert len(_colorbar_axes(fig)) == 1
    assert fig._suptitle is None


def test_samples_plot_has_axis_labels_and_title(tmp_path):
    path = tmp_path / "samples.png"
    fig = plot_samples(torch.randn(50, 2), torch.randn(80, 2), path, title="8-step samples")
    assert path.is_file()
    (ax,) = fig.axes
    assert "x_1" in ax.get_xlabel() and "x_2" in ax.get_ylabel()
    assert ax.get_title() == "8-step samples"
