"""The application layer: configs and presets, the one run life cycle for every task, the command line.

    from diffrl.app import load_config, train, from_run
    train(load_config("8gaussians", ["train.teacher=runs/teacher"]), "runs/dxmi", agent=my_factory)
    run = from_run("runs/dxmi")            # teacher, policy, MDP, reward, value, data splits

It may import every layer; nothing imports it (the package namespace ``diffrl`` re-exports its
entry points lazily). Names load on first use, so the command line starts without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExperimentConfig": "config", "load_config": "config", "AgentFactory": "pipeline", "RewardFactory": "pipeline",
    "Run": "pipeline", "evaluate": "pipeline", "from_run": "pipeline", "pretrain": "pipeline", "sample": "pipeline",
    "train": "pipeline", "score": "tasks.anomaly",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffrl.app' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
