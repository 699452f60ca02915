"""The entry points of ``diffrl/DiffusionMDP-v0``: the envs over a given MDP, the default one, or
the MDP of a trained run folder.

    gymnasium.make("diffrl/DiffusionMDP-v0", run="runs/dxmi")            # the run's learned energy as reward
    gymnasium.make_vec("diffrl/DiffusionMDP-v0", num_envs=64, run="runs/dxmi", which="last")

They live in the application layer because reading a run needs ``diffrl.app.pipeline``, which
``diffrl.envs`` may not import; ``diffrl.envs`` registers them by name (module:function), and
Gymnasium imports this module on the first ``make``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from diffrl.envs import DiffusionMDP, DiffusionMDPVectorEnv
from diffrl.mdp import ChainMDP

__all__ = ["make_env", "make_vector_env", "run_mdp"]


def run_mdp(run: str | Path, which: str = "best") -> ChainMDP:
    """The trained MDP of a DxMI run folder (``from_run(run, which).mdp``): its velocity scales and
    its reward, the learned energy (reward = -E(x_T)), on the CPU."""
    from .pipeline import from_run  # the pipeline (tasks, data, nets) loads only when a run is asked for

    built = from_run(run, which)
    if built.mdp is None:
        raise ValueError(f"{built.path} is a {built.kind} run: it has no MDP (no learned energy); give a DxMI run")
    return built.mdp


def _mdp(mdp: ChainMDP | None, run: str | Path | None, which: str) -> ChainMDP | None:
    if mdp is not None and run is not None:
        raise ValueError("give mdp= or run=, not both")
    return run_mdp(run, which) if run is not None else mdp


def make_env(mdp: ChainMDP | None = None, run: str | Path | None = None, which: str = "best", **kwargs: Any) -> DiffusionMDP:
    """One chain of ``mdp``, of the run folder ``run`` (``which`` = "best" or "last"), or of
    ``default_mdp()``; kwargs (obs_mode, action_bound, render_mode) go to ``DiffusionMDP``."""
    return DiffusionMDP(_mdp(mdp, run, which), **kwargs)


make_env.metadata = DiffusionMDP.metadata  # type: ignore[attr-defined]  # gymnasium.make reads the render modes here


def make_vector_env(
    mdp: ChainMDP | None = None, run: str | Path | None = None, which: str = "best", *, num_envs: int, **kwargs: Any
) -> DiffusionMDPVectorEnv:
    """``num_envs`` chains, the MDP chosen as in ``make_env``; kwargs (autoreset_mode, obs_mode,
    action_bound, render_mode) go to ``DiffusionMDPVectorEnv``."""
    return DiffusionMDPVectorEnv(_mdp(mdp, run, which), num_envs=num_envs, **kwargs)
