"""The diffusion chain as a Tianshou vector env: ``num_envs`` chains stepped as one tensor op.

A stock ``tianshou.data.Collector`` drives it like any ``BaseVectorEnv`` (``len``, ``reset(env_id)``,
``step(action, id)``, ``seed``, ``close``), but there are no workers and no per-env Python objects:
the chains are one batch in ``envs/_batch.py``. Observations, actions, rewards and their signs are
the Gymnasium envs' (``envs/gym_env.py``); in obs_mode "dict" an observation batch is a
``tianshou.data.Batch(x=(n, *event_shape), t=(n,))``, which is what Tianshou makes of a Dict space.
Importing this module imports Tianshou; ``import diffrl.envs`` does not.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tianshou.data import Batch
from tianshou.env import BaseVectorEnv

from diffrl.mdp import ChainMDP

from ._batch import Chains, Seed, check_seed, spaces
from .gym_env import COST_KEYS, default_mdp

__all__ = ["DiffusionMDPTianshouEnv"]


class DiffusionMDPTianshouEnv(BaseVectorEnv):
    """``num_envs`` chains of ``mdp`` (``default_mdp()`` when None) for Tianshou's collectors.

    ``step(action (n, *event_shape), id (n,))`` advances the chains ``id`` (all when None) and
    returns (obs, rew (n,) float64, terminated (n,), truncated (n,) False, info (n,) object array of
    {"velocity_cost", "terminal_cost", "env_id"}); rew = -(tau_velocity velocity_cost + terminal_cost).
    A chain that reached t = T must be reset (``reset(env_id=...)``, as the Collector does) before
    it steps again, else ValueError. Seeds: ``seed(s)`` follows Tianshou, an int s means the chain
    seeds [s, s + 1, ...], a list one seed per chain; the next reset of chain i then draws the x_0 of
    ``DiffusionMDP().reset(seed=s_i)``; it also seeds the action space (``collect(random=True)``)
    with the first seed. ``reset(env_id, seed=...)`` follows the Gymnasium vector env: an int seeds
    one generator for the chains reset, a list gives one seed per id.
    """

    # BaseVectorEnv.__init__ builds one worker per env; here there are none, so it is not called
    # (as Tianshou's own VectorEnvWrapper does) and the attributes its methods read are set here.
    def __init__(
        self,
        mdp: ChainMDP | None = None,
        *,
        num_envs: int,
        obs_mode: str = "dict",
        action_bound: float | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.mdp = default_mdp() if mdp is None else mdp
        observation_space, action_space = spaces(self.mdp, obs_mode, action_bound)
        self._chains = Chains(self.mdp, num_envs, obs_mode, action_bound)
        self._env_attrs = {
            "observation_space": observation_space,
            "action_space": action_space,
            "metadata": {"render_modes": []},
            "spec": None,
        }
        self.env_num = self.wait_num = num_envs
        self.timeout = None
        self.is_async = False
        self.waiting_id: list[int] = []
        self.ready_id = list(range(num_envs))
        self.is_closed = False

    def get_env_attr(self, key: str, id: int | list[int] | np.ndarray | None = None) -> list[Any]:
        """The single-env attribute ``key`` (observation_space, action_space, metadata, spec) once per id."""
        self._assert_is_not_closed()
        if key not in self._env_attrs:
            raise AttributeError(f"{type(self).__name__} has no per-env attribute {key!r}; its chains share {sorted(self._env_attrs)}")
        return [self._env_attrs[key]] * len(self._wrap_id(id))

    def set_env_attr(self, key: str, value: Any, id: int | list[int] | np.ndarray | None = None) -> None:
        """Not supported: the chains are one batch without per-env objects; change ``self.mdp`` instead."""
        raise NotImplementedError(f"{type(self).__name__} has no per-env objects to set {key!r} on; its chains share one mdp")

    def reset(self, env_id: int | list[int] | np.ndarray | None = None, seed: Seed = None) -> tuple[Any, np.ndarray]:
        """Fresh x_0 (``mdp.reset``), t = 0 for the chains env_id (all when None) -> (obs (n, ...), info (n,) of {})."""
        self._assert_is_not_closed()
        index = self._chains.index(env_id)
        self._chains.reset(seed, index)
        n = self.env_num if index is None else len(index)
        return self._observe(index), np.array([{} for _ in range(n)], dtype=object)

    def step(self, action: Any, id: int | list[int] | np.ndarray | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """action = x_{t+1} (n, *event_shape) for the chains id (all when None); see the class docstring."""
        self._assert_is_not_closed()
        if action is None:
            raise ValueError("action must not be None: this env is synchronous")
        index = self._chains.index(id)
        action = np.asarray(action)
        n = self.env_num if index is None else len(index)
        if action.shape != (n, *self.mdp.event_shape):
            raise ValueError(
                f"action must be the next sample x_(t+1) of shape {(n, *self.mdp.event_shape)} "
                f"(number of ids, *event_shape), got {action.shape}"
            )
        reward, terminated, terms = self._chains.step(action, index)
        ids = range(self.env_num) if index is None else index.tolist()
        costs = {key: terms[key].cpu().numpy().astype(np.float64) for key in COST_KEYS}
        info = np.array([{**{key: float(costs[key][j]) for key in COST_KEYS}, "env_id": i} for j, i in enumerate(ids)], dtype=object)
        terminated = terminated.cpu().numpy()
        return self._observe(index), reward.cpu().numpy().astype(np.float64), terminated, np.zeros_like(terminated), info

    def seed(self, seed: int | list[int] | None = None) -> list[list[int] | None]:
        """Per-chain seeds (an int s: [s, s + 1, ...]; None: fresh random ones) for the next resets;
        returns [[s_i]] per chain, as Tianshou's vector envs do."""
        self._assert_is_not_closed()
        seeds = [int(s) for s in np.random.SeedSequence().generate_state(self.env_num)] if seed is None else seed
        if isinstance(seeds, (int, np.integer)):
            seeds = [int(seeds) + i for i in range(self.env_num)]
        check_seed(list(seeds), self.env_num)
        self._chains.seed(list(seeds))
        self._env_attrs["action_space"].seed(seeds[0])
        return [[s] for s in seeds]

    def render(self, **kwargs: Any) -> list[Any]:
        """Not supported here: render with ``DiffusionMDPVectorEnv(render_mode="rgb_array")``."""
        raise NotImplementedError("DiffusionMDPTianshouEnv does not render; DiffusionMDPVectorEnv(render_mode='rgb_array') does")

    def close(self) -> None:
        """Mark closed (no workers or files to release); later calls raise as Tianshou's envs do."""
        self._assert_is_not_closed()
        self.is_closed = True

    def _observe(self, index: Any) -> Any:
        obs = self._chains.observe(index)
        return Batch(obs) if isinstance(obs, dict) else obs
