"""B chains' torch state behind the numpy envs (Gymnasium single and vector, Tianshou): spaces,
options, seeding, stepping a subset of chains as one tensor op, observations.

Options shared by those envs:
  obs_mode "dict": ``{"x": (*event_shape,) float32, "t": int64 step index}``;
           "flat": one float32 vector (D + 1,): x flattened, then t / T in [0, 1] (for stock
           algorithms that take a Box).
  action_bound None: actions unbounded, ``Box(-inf, inf)``; a float b: ``Box(-b, b)``, and an
           action outside it (or NaN) raises ValueError. The env never clips: a clip would change the
           transition x_(t+1) = a_t (and the velocity cost) behind the agent's back; clip on the agent's
           side (Tianshou policies do by default) or wrap with ``gymnasium.wrappers.ClipAction``.
Seeds: an int seeds one generator that draws the x_0 of every chain reset (one draw); a list
gives each chain its own generator, so chain i draws exactly the x_0 of ``DiffusionMDP().reset(seed=s_i)``
(one draw per chain reset: the price of that reproducibility). The chains keep that mode until
the next int seed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from diffrl.mdp import ChainMDP

from ._chain import advance

OBS_MODES = ("dict", "flat")
Seed = int | Sequence[int | None] | None


def check_options(obs_mode: str, action_bound: float | None) -> None:
    """ValueError on an unknown obs_mode or an action_bound that is not a finite number > 0."""
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
    if action_bound is not None and not (
        isinstance(action_bound, (int, float, np.integer, np.floating))
        and not isinstance(action_bound, bool)
        and math.isfinite(action_bound)
        and action_bound > 0
    ):
        raise ValueError(f"action_bound must be None or a finite number > 0, got {action_bound!r}")


def check_seed(seed: Any, n: int) -> None:
    """ValueError unless seed is None, an int, or a list of n ints (or None)."""
    if seed is None or _is_int(seed):
        return
    if not isinstance(seed, Sequence) or isinstance(seed, str) or not all(s is None or _is_int(s) for s in seed):
        raise ValueError(f"seed must be None, an int or a list of ints (one per chain), got {seed!r}")
    if len(seed) != n:
        raise ValueError(f"a list of seeds needs one seed per chain: {n} chains, got {len(seed)} seeds")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def spaces(mdp: ChainMDP, obs_mode: str, action_bound: float | None) -> tuple[gym.Space, gym.spaces.Box]:
    """The single-chain observation and action spaces (see the module docstring); ValueError on bad options."""
    check_options(obs_mode, action_bound)
    if obs_mode == "dict":
        x = gym.spaces.Box(-np.inf, np.inf, shape=mdp.event_shape, dtype=np.float32)
        observation: gym.Space = gym.spaces.Dict({"x": x, "t": gym.spaces.Discrete(mdp.horizon + 1)})
    else:
        low = np.full(mdp.dim + 1, -np.inf, np.float32)
        high = np.full(mdp.dim + 1, np.inf, np.float32)
        low[-1], high[-1] = 0.0, 1.0
        observation = gym.spaces.Box(low, high, dtype=np.float32)
    bound = np.inf if action_bound is None else float(action_bound)
    return observation, gym.spaces.Box(-bound, bound, shape=mdp.event_shape, dtype=np.float32)


def _numpy(x: Tensor) -> np.ndarray:
    """A numpy copy, so callers never alias the env's state."""
    return x.detach().cpu().numpy().copy()


class Chains:
    """B chains of ``mdp`` (x (B, *event_shape), t (B,) long) on its device, with their generators."""

    def __init__(self, mdp: ChainMDP, batch: int, obs_mode: str = "dict", action_bound: float | None = None) -> None:
        """obs_mode and action_bound as checked by ``spaces``."""
        self.mdp, self.batch, self.obs_mode = mdp, batch, obs_mode
        self.action_bound = None if action_bound is None else np.float32(action_bound)
        self.device = mdp.velocity_scale_sq.device
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()
        self.per_chain: list[torch.Generator] | None = None
        """One generator per chain after a list of seeds, else None (one generator for the batch)."""
        self.x = torch.zeros((batch, *mdp.event_shape), device=self.device)
        self.t = torch.full((batch,), mdp.horizon, dtype=torch.long, device=self.device)  # stepping needs a reset

    def index(self, ids: Any) -> Tensor | None:
        """Chain ids (None: all; an int, a list or an int array) as a long tensor on the device."""
        if ids is None:
            return None
        index = torch.as_tensor(np.atleast_1d(np.asarray(ids)), device=self.device)
        if index.ndim != 1 or index.dtype not in (torch.int32, torch.int64) or not bool(
            ((index >= 0) & (index < self.batch)).all()
        ):
            raise ValueError(f"chain ids must be ints in [0, {self.batch}), got {ids!r}")
        return index.long()

    def seed(self, seed: Seed, index: Tensor | None = None) -> None:
        """Seed without drawing: an int seeds the batch's one generator; a list has one seed (or None:
        not reseeded) per chain in index (all when None) for the per-chain generators."""
        check_seed(seed, self.batch if index is None else len(index))
        if seed is None:
            return
        if _is_int(seed):
            self.per_chain = None
            self.generator.manual_seed(int(seed))
            return
        if self.per_chain is None:
            self.per_chain = [torch.Generator(device=self.device) for _ in range(self.batch)]
            for generator in self.per_chain:
                generator.seed()
        for i, s in zip(range(self.batch) if index is None else index.tolist(), seed):
            if s is not None:
                self.per_chain[i].manual_seed(int(s))

    def reset(self, seed: Seed, index: Tensor | None = None) -> None:
        """Fresh x_0 = ``mdp.reset`` (N(0, I) by default), t = 0 for the chains in index (all when None), after ``seed(seed, index)``."""
        self.seed(seed, index)
        if index is not None and len(index) == 0:
            return
        if self.per_chain is None:
            x0 = self.mdp.reset(self.batch if index is None else len(index), generator=self.generator, device=self.device)
        else:
            ids = range(self.batch) if index is None else index.tolist()
            x0 = torch.cat([self.mdp.reset(1, generator=self.per_chain[i], device=self.device) for i in ids])
        if index is None:
            self.x, self.t = x0, torch.zeros_like(self.t)
        else:
            self.x[index], self.t[index] = x0, 0

    def step(self, action: Any, index: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Advance the chains in index (all when None) by action = x_(t+1) (n, *event_shape).

        Returns reward (n,) = ``mdp.step_reward``, terminated (n,) bool and ``mdp.step_terms``
        (costs, higher is worse: "velocity_cost", "terminal_cost", each (n,)). ValueError on a wrong
        shape, an action outside action_bound, or a chain already at t = T.
        """
        action = np.asarray(action, dtype=np.float32)
        if self.action_bound is not None and not bool((np.abs(action) <= self.action_bound).all()):
            raise ValueError(
                f"actions must lie in [-{self.action_bound}, {self.action_bound}] (action_bound; the env does not clip), "
                f"got max |a| = {np.max(np.abs(action))}"
            )
        x, t = (self.x, self.t) if index is None else (self.x[index], self.t[index])
        x_next, t_next, reward, terminated, terms = advance(self.mdp, x, t, torch.tensor(action, device=self.device))
        if index is None:
            self.x, self.t = x_next, t_next
        else:
            self.x[index], self.t[index] = x_next, t_next
        return reward, terminated, terms

    def observe(self, index: Tensor | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """The observations of the chains in index (all when None), batched: obs_mode "dict":
        {"x": (n, *event_shape) float32, "t": (n,) int64}; "flat": (n, D + 1) float32."""
        x, t = (self.x, self.t) if index is None else (self.x[index], self.t[index])
        if self.obs_mode == "dict":
            return {"x": _numpy(x.float()), "t": _numpy(t)}
        return _numpy(torch.cat([x.flatten(1).float(), (t.float() / self.mdp.horizon)[:, None]], 1))


def row(obs: dict[str, np.ndarray] | np.ndarray, i: int) -> dict[str, Any] | np.ndarray:
    """Chain i's observation out of a batched one, as the single env returns it."""
    if isinstance(obs, dict):
        return {"x": obs["x"][i].copy(), "t": np.int64(obs["t"][i])}
    return obs[i].copy()
