"""Environments over ``diffrl.mdp.ChainMDP``: Gymnasium (eager), TorchRL and Tianshou (imported on first use).

``import diffrl.envs`` registers ``diffrl/DiffusionMDP-v0`` with Gymnasium (``gymnasium.make`` for
one chain, ``gymnasium.make_vec`` for a batch; both take ``mdp=ChainMDP(...)`` or ``run="runs/dxmi"``
(a trained run's MDP), default ``default_mdp()``, and the envs' options ``obs_mode``,
``action_bound``, ``render_mode``, ``autoreset_mode`` for the batch). The entry points are named
by string in ``diffrl.app.envs`` (reading a run is the application's job; Gymnasium imports them
on the first ``make``), so importing this package loads neither ``diffrl.app`` nor, until
``DiffusionMDPEnv`` / ``step_policy_module`` or ``DiffusionMDPTianshouEnv`` is first accessed,
TorchRL or Tianshou: importing torchrl sets the multiprocessing start method to spawn, a side
effect Gymnasium and Tianshou users should not get.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium

from .gym_env import DiffusionMDP, DiffusionMDPVectorEnv, default_mdp

if TYPE_CHECKING:
    from .tianshou_env import DiffusionMDPTianshouEnv
    from .torchrl_env import DiffusionMDPEnv, StepPolicyModule, chain_tensordict, rollout_chain, step_policy_module

__all__ = [
    "DiffusionMDP", "DiffusionMDPVectorEnv", "DiffusionMDPEnv", "DiffusionMDPTianshouEnv", "default_mdp",
    "step_policy_module", "StepPolicyModule", "chain_tensordict", "rollout_chain", "ENV_ID",
]

ENV_ID = "diffrl/DiffusionMDP-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="diffrl.app.envs:make_env",
        vector_entry_point="diffrl.app.envs:make_vector_env",
    )


def __getattr__(name: str) -> Any:
    if name in ("DiffusionMDPEnv", "step_policy_module", "StepPolicyModule", "chain_tensordict", "rollout_chain"):
        from . import torchrl_env

        return getattr(torchrl_env, name)
    if name == "DiffusionMDPTianshouEnv":
        from .tianshou_env import DiffusionMDPTianshouEnv

        return DiffusionMDPTianshouEnv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
