"""Checkpoints: tensors and plain data only, written atomically, read with ``weights_only=True``."""
from __future__ import annotations

import io
import os
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import torch

__all__ = [
    "CorruptFileError",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_array",
    "save_checkpoint",
    "load_checkpoint",
]


class CorruptFileError(ValueError):
    """A file exists but is not a readable diffrl checkpoint; the message is one line naming it."""


@contextmanager
def _atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Binary file to write in place of ``path``: a temporary file beside it, fsynced then renamed
    over ``path`` on success, removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: readers see the old file or the new one, never a part."""
    with _atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_array(path: str | Path, array: Any) -> None:
    """Write ``array`` as a .npy file atomically; ``path`` must end in .npy (nothing is appended)."""
    if Path(path).suffix != ".npy":
        raise ValueError(f"{path}: an array file must end in .npy")
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    with _atomic_open(path) as f:
        torch.save(state, f)


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of ``exc``; for a weights_only refusal, the line naming what was refused."""
    text, prefix = str(exc), f"{type(exc).__name__}: "
    if text.startswith("Weights only load failed"):  # skip torch's boilerplate
        prefix = "blocked by weights_only=True: "
        marker = "WeightsUnpickler error:"
        text = text.rsplit(marker, 1)[1] if marker in text else text.partition("\n")[2]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return prefix + lines[0] if lines else prefix.rstrip(": ")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``. Raises FileNotFoundError if ``path`` is not a
    file and ``CorruptFileError`` if it is empty, truncated, not a torch file, holds objects that
    ``weights_only=True`` refuses, or its top level is not a dict. ``mmap``: map the tensors instead
    of reading them (cheap when only the structure is needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")

    def corrupt(reason: str) -> CorruptFileError:
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        return CorruptFileError(f"{path}: not a readable diffrl checkpoint ({reason})")

    with open(path, "rb") as f:  # errors opening it (permissions) are not corruption: let them through
        if os.fstat(f.fileno()).st_size == 0:
            raise corrupt("empty file")
        is_zip = f.read(4) == b"PK\x03\x04"  # the format torch.save writes
        f.seek(0)
        try:
            with warnings.catch_warnings():  # random bytes can look like an odd pickle protocol
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                source = str(path) if mmap and is_zip else f
                state = torch.load(source, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
        except Exception as exc:  # bad bytes fail in many ways: EOF, Key, Index, OS, Runtime, Unpickling...
            reason = _first_line(exc)
            if is_zip and not isinstance(exc, pickle.UnpicklingError):
                reason = f"damaged or truncated zip archive, {reason}"
            raise corrupt(reason) from exc
    if not isinstance(state, dict):
        raise corrupt(f"top level is {type(state).__name__}, not a dict")
    return state
