"""Environments over ``diffrl.mdp.ChainMDP``: Gymnasium (eager) and TorchRL (imported on first use).

``import diffrl.envs`` registers ``diffrl/DiffusionMDP-v0`` with Gymnasium (``gymnasium.make`` for
one chain, ``gymnasium.make_vec`` for a batch; both take ``mdp=ChainMDP(...)``, default
``default_mdp()``). TorchRL is imported only when ``DiffusionMDPEnv`` or ``step_policy_module`` is
first accessed: importing torchrl sets the multiprocessing start method to spawn, a side effect
Gymnasium and Tianshou users should not get.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium

from .gym_env import DiffusionMDP, DiffusionMDPVectorEnv, default_mdp

if TYPE_CHECKING:
    from .torchrl_env import DiffusionMDPEnv, step_policy_module

__all__ = ["DiffusionMDP", "DiffusionMDPVectorEnv", "DiffusionMDPEnv", "default_mdp", "step_policy_module", "ENV_ID"]

ENV_ID = "diffrl/DiffusionMDP-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="diffrl.envs.gym_env:DiffusionMDP",
        vector_entry_point="diffrl.envs.gym_env:DiffusionMDPVectorEnv",
    )


def __getattr__(name: str) -> Any:
    if name in ("DiffusionMDPEnv", "step_policy_module"):
        from . import torchrl_env

        return getattr(torchrl_env, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
