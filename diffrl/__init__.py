"""diffrl: the denoising chain of a diffusion model as a reinforcement-learning problem.

Core (framework-free torch): schedules, step policies, the chain MDP, reward models, the DxMI
loop. ``diffrl.envs`` has Gymnasium and TorchRL environments; ``diffrl.agents`` has DxDP;
``diffrl.app`` runs whole experiments (``train``, ``from_run``, the ``diffrl`` command line).

Names are imported on first use (PEP 562), so ``import diffrl`` and ``diffrl --help`` are fast;
the core modules themselves never import ``diffrl.app``, ``diffrl.agents`` or ``diffrl.envs``.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Normalizer": "data", "toy_data": "data", "DDPM": "ddpm", "DxMI": "dxmi", "ChainMDP": "mdp",
    "energy_auc": "metrics", "mmd_rbf": "metrics", "sliced_wasserstein": "metrics", "AtTime": "nets", "TimeMLP": "nets",
    "DDIMMean": "policy", "GaussianStepPolicy": "policy", "rollout": "policy", "EnergyReward": "rewards",
    "FixedReward": "rewards", "RewardModel": "rewards", "WeightedReward": "rewards", "ClassifierReward": "rewards",
    "OriginStart": "mdp", "TeacherAnchor": "mdp", "guided_sample": "sampling", "DenoisedCost": "sampling", "ResidualMean": "nets", "ChainSchedule": "schedules",
    "OptimizerStep": "optim", "load_config": "app.config", "train": "app.pipeline", "pretrain": "app.pipeline",
    "from_run": "app.pipeline", "Run": "app.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffrl' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
