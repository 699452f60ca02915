"""The diffusion chain as Gymnasium environments: one chain (``DiffusionMDP``) and B chains in one
tensor op (``DiffusionMDPVectorEnv``). Torch on the mdp's device underneath, numpy at the boundary.

Observation (``obs_mode``): "dict" (default) ``Dict({"x": Box(-inf, inf, event_shape, float32),
"t": Discrete(T + 1)})``, the sample x_t and the step index t, the same names as the TorchRL env,
images staying (C, H, W); or "flat", a float32 Box (D + 1,): x flattened, then t / T. Action:
x_{t+1}, ``Box(-b, b, event_shape, float32)`` with b = ``action_bound`` (default inf); an action
outside raises ValueError, the env never clips (a clip would change the transition).

Signs, once for every env here: the costs are positive-is-worse and the reward is their negative,

    reward_t = -(tau_velocity * velocity_cost_t + terminal_cost_t)      (``ChainMDP.step_reward``)

velocity_cost_t = mean_d (x_{t+1} - x_t)^2 / (2 s_t^2); terminal_cost_t = cost(x_T) = -reward(x_T)
on the last step, 0 before. ``info`` carries both costs of the step (``ChainMDP.step_terms``).
``terminated`` once t = T; never truncated. Randomness (only x_0) comes from torch generators,
seeded by ``reset(seed=...)`` (see ``envs/_batch.py``: an int or, on the vector env, one seed per chain).
"""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from diffrl.mdp import ChainMDP
from diffrl.rewards import FixedReward

from . import _render
from ._batch import Chains, Seed, check_seed, row, spaces

__all__ = ["DiffusionMDP", "DiffusionMDPVectorEnv", "default_mdp"]

COST_KEYS = ("velocity_cost", "terminal_cost")


def _standard_normal_log_density(x: Tensor) -> Tensor:
    """log N(x; 0, I) of (B, D) samples, (B,)."""
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def default_mdp() -> ChainMDP:
    """The env's default: 2-D chains of T = 5 steps, unit velocity scales (tau_velocity = 1, no AVR)
    and the terminal reward log N(x_T; 0, I)."""
    return ChainMDP(FixedReward(_standard_normal_log_density), (2,), torch.ones(5), tau_velocity=1.0, avr_decay=None)


class DiffusionMDP(gym.Env[Any, np.ndarray]):
    """One chain of ``mdp`` (``default_mdp()`` when None); obs_mode / action_bound as in the module
    docstring. ``render_mode="rgb_array"``: ``render()`` draws the chain's states so far this episode
    (points: x_0..x_t joined on fixed axes; images: a grid of x_0..x_t), (256, 256, 3) uint8 for points."""

    metadata: dict[str, Any] = {"render_modes": _render.RENDER_MODES, "render_fps": _render.RENDER_FPS}

    def __init__(
        self,
        mdp: ChainMDP | None = None,
        *,
        obs_mode: str = "dict",
        action_bound: float | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.mdp = default_mdp() if mdp is None else mdp
        _render.check_render_mode(render_mode, self.mdp.event_shape)
        self.render_mode = render_mode
        self.observation_space, self.action_space = spaces(self.mdp, obs_mode, action_bound)
        self._chains = Chains(self.mdp, 1, obs_mode, action_bound)
        self._episode: list[Tensor] = []  # x_0..x_t of this episode, for render()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """x_0 = ``mdp.reset`` (N(0, I) by default), t = 0; ``seed`` (an int) reseeds the env's torch generator."""
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        super().reset(seed=seed)
        self._chains.reset(seed)
        self._episode = [self._chains.x[0].clone()]
        return row(self._chains.observe(), 0), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, float]]:
        """action = x_{t+1} (*event_shape,) -> (obs, reward, terminated at t = T, truncated = False,
        {"velocity_cost": v_t, "terminal_cost": cost(x_T) or 0}), reward = -(tau_velocity v_t + terminal_cost)."""
        action = np.asarray(action)
        if action.shape != self.mdp.event_shape:
            raise ValueError(f"action must be the next sample of shape {self.mdp.event_shape}, got {action.shape}")
        reward, terminated, terms = self._chains.step(action[None])
        self._episode.append(self._chains.x[0].clone())
        info = {key: float(terms[key][0]) for key in COST_KEYS}
        return row(self._chains.observe(), 0), float(reward[0]), bool(terminated[0]), False, info

    def render(self) -> np.ndarray | None:
        """The episode so far as an (H, W, 3) uint8 array; None when render_mode is None."""
        if self.render_mode is None:
            return None
        if not self._episode:
            raise gym.error.ResetNeeded("call reset() before render(): the frame draws this episode's states")
        return _render.frame(torch.stack(self._episode), trajectory=True)


class DiffusionMDPVectorEnv(VectorEnv[Any, np.ndarray, np.ndarray]):
    """``num_envs`` chains of ``mdp`` (``default_mdp()`` when None) stepped as one tensor op.

    obs batched as the single env's (dict: {"x": (B, *event_shape) float32, "t": (B,) int64}; flat:
    (B, D + 1) float32), rewards (B,) float64, terminated (B,), truncated (B,) always False. info:
    Gymnasium's vector convention, "velocity_cost" / "terminal_cost" (B,) float64 with the masks
    "_velocity_cost" / "_terminal_cost" (True for the chains that stepped), exactly what
    ``SyncVectorEnv`` makes of the single envs' infos (with SAME_STEP a finished chain's costs sit in
    ``info["final_info"]`` next to ``info["final_obs"]``).

    ``autoreset_mode`` (default NEXT_STEP, the same through every ``gymnasium.make_vec`` mode):
      NEXT_STEP  the step after a chain's last step resets it (x_0, reward 0, not terminated) and
                 ignores its action;
      SAME_STEP  the last step returns the fresh x_0 and puts x_T in ``info["final_obs"]``;
      DISABLED   nothing resets behind the caller's back: the last step returns x_T itself and stepping
                 a finished chain raises ValueError; call ``reset()`` or
                 ``reset(options={"reset_mask": mask})`` (TorchRL's ``GymWrapper`` does).
    Why NEXT_STEP: ``make_vec(..., vectorization_mode="sync" | "async")`` builds a Sync/AsyncVectorEnv
    whose default is NEXT_STEP, and gymnasium 1.4 gives no way to change that default from the
    registration (spec kwargs "vector_kwargs" override the caller's and make the default mode, the
    vector entry point, refuse to build). So NEXT_STEP is the one default all modes can share.
    TorchRL's ``GymWrapper`` accepts only SAME_STEP and DISABLED: pass ``autoreset_mode=`` here
    (``make_vec(ENV_ID, autoreset_mode=AutoresetMode.DISABLED)``, or ``vector_kwargs={"autoreset_mode": ...}``
    in the sync / async modes), or use the native ``DiffusionMDPEnv``.

    ``reset(seed=s)``: an int seeds one generator for the batch; a list [s_0, ..., s_{B-1}] gives chain
    i the x_0 of ``DiffusionMDP().reset(seed=s_i)`` (and of ``make_vec(..., vectorization_mode="sync")``
    reset with the same list). ``render_mode="rgb_array"``: one frame of all chains' current x
    (a scatter for points, a grid for images), not a tuple of frames per chain.
    """

    def __init__(
        self,
        mdp: ChainMDP | None = None,
        *,
        num_envs: int,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        obs_mode: str = "dict",
        action_bound: float | None = None,
        render_mode: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(
                f"autoreset_mode must be one of {[m.value for m in AutoresetMode]}, got {autoreset_mode!r}"
            ) from None
        self.mdp = default_mdp() if mdp is None else mdp
        _render.check_render_mode(render_mode, self.mdp.event_shape)
        self.render_mode = render_mode
        self.metadata = {**DiffusionMDP.metadata, "autoreset_mode": self.autoreset_mode}
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = spaces(self.mdp, obs_mode, action_bound)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._chains = Chains(self.mdp, num_envs, obs_mode, action_bound)
        self._needs_reset = np.zeros(num_envs, dtype=np.bool_)  # NEXT_STEP: chains that ended on the last step

    def reset(self, *, seed: Seed = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Fresh x_0 (``mdp.reset``), t = 0 for all chains, or those in ``options["reset_mask"]`` (B,) bool;
        seed: None, an int, or a list of B seeds (with a mask, only the masked chains' are used)."""
        check_seed(seed, self.num_envs)
        super().reset(seed=seed if isinstance(seed, (int, np.integer)) else None)
        mask = None if options is None or "reset_mask" not in options else np.asarray(options["reset_mask"])
        if mask is None:
            self._chains.reset(seed)
            self._needs_reset[:] = False
        else:
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask.dtype} {mask.shape}")
            ids = np.flatnonzero(mask)
            per_chain = seed if seed is None or isinstance(seed, (int, np.integer)) else [seed[i] for i in ids]
            self._chains.reset(per_chain, self._chains.index(ids))
            self._needs_reset[mask] = False
        return self._chains.observe(), {}

    def step(self, actions: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """actions = x_{t+1} (B, *event_shape) -> (obs, rewards (B,), terminated (B,), truncated (B,), info);
        rewards = -(tau_velocity velocity_cost + terminal_cost), as in the class docstring."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, *self.mdp.event_shape):
            raise ValueError(
                f"action must be the next sample x_(t+1) of shape {(self.num_envs, *self.mdp.event_shape)} "
                f"(num_envs, *event_shape), got {actions.shape}"
            )
        stepped = ~self._needs_reset
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        costs = {key: np.zeros(self.num_envs, dtype=np.float64) for key in COST_KEYS}
        if self._needs_reset.any():
            self._chains.reset(None, self._chains.index(np.flatnonzero(self._needs_reset)))
        if stepped.any():
            index = None if stepped.all() else self._chains.index(np.flatnonzero(stepped))
            reward, done, terms = self._chains.step(actions[stepped], index)
            rewards[stepped], terminated[stepped] = reward.cpu().numpy(), done.cpu().numpy()
            for key in COST_KEYS:
                costs[key][stepped] = terms[key].cpu().numpy()
        info: dict[str, Any] = {}
        if self.autoreset_mode == AutoresetMode.SAME_STEP and terminated.any():
            ended = np.flatnonzero(terminated)
            obs = self._chains.observe()
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in ended:
                final_obs[i] = row(obs, i)
            info = {"final_obs": final_obs, "_final_obs": terminated.copy(),
                    "final_info": _masked(costs, terminated), "_final_info": terminated.copy()}
            self._chains.reset(None, self._chains.index(ended))
            stepped = stepped & ~terminated
        info.update(_masked(costs, stepped) if stepped.any() else {})
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._needs_reset = terminated.copy()
        return self._chains.observe(), rewards, terminated, np.zeros(self.num_envs, dtype=np.bool_), info

    def render(self) -> np.ndarray | None:
        """All chains' current x as one (H, W, 3) uint8 array; None when render_mode is None."""
        if self.render_mode is None:
            return None
        return _render.frame(self._chains.x)


def _masked(costs: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """{key: values where mask else 0, "_key": mask}: Gymnasium's vector info for the chains in mask."""
    out: dict[str, np.ndarray] = {}
    for key, values in costs.items():
        out[key], out[f"_{key}"] = np.where(mask, values, 0.0), mask.copy()
    return out
