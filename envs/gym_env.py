"""The diffusion chain as Gymnasium environments: one chain (``DiffusionMDP``) and B chains in one
tensor op (``DiffusionMDPVectorEnv``). Torch on the mdp's device underneath, numpy at the boundary.

Observation: ``Dict({"x": Box(-inf, inf, event_shape, float32), "t": Discrete(T + 1)})``, the
sample x_t and the step index t. A Dict keeps x in its event shape (images stay (C, H, W)) and
keeps the same names as the TorchRL env; Tianshou turns it into ``obs.x`` / ``obs.t`` batches,
and ``gymnasium.wrappers.FlattenObservation`` gives a flat float64 Box (one-hot t, then x) if needed.
Action: x_{t+1}, ``Box(-inf, inf, event_shape, float32)``. Reward: ``ChainMDP.step_reward``
(higher is better: minus tau_velocity times the velocity cost, minus cost(x_T) on the last
step). ``terminated`` once t = T; never truncated. Randomness (only x_0) comes from a torch
generator per env, seeded by ``reset(seed=...)``.
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

from ._chain import advance

__all__ = ["DiffusionMDP", "DiffusionMDPVectorEnv", "default_mdp"]


def _standard_normal_log_density(x: Tensor) -> Tensor:
    """log N(x; 0, I) of (B, D) samples, (B,)."""
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def default_mdp() -> ChainMDP:
    """The env's default: 2-D chains of T = 5 steps, unit velocity scales (tau_velocity = 1, no AVR)
    and the terminal reward log N(x_T; 0, I)."""
    return ChainMDP(FixedReward(_standard_normal_log_density), (2,), torch.ones(5), tau_velocity=1.0, avr_decay=None)


def _spaces(mdp: ChainMDP) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """The single-chain observation and action spaces."""
    box = gym.spaces.Box(-np.inf, np.inf, shape=mdp.event_shape, dtype=np.float32)
    obs = gym.spaces.Dict({"x": box, "t": gym.spaces.Discrete(mdp.horizon + 1)})
    return obs, gym.spaces.Box(-np.inf, np.inf, shape=mdp.event_shape, dtype=np.float32)


def _numpy(x: Tensor) -> np.ndarray:
    """A numpy copy, so callers never alias the env's state."""
    return x.detach().cpu().numpy().copy()


class _Chains:
    """B chains' state (x (B, *event_shape), t (B,) long) with their own torch generator for x_0."""

    def __init__(self, mdp: ChainMDP, batch: int) -> None:
        self.mdp, self.batch = mdp, batch
        self.device = mdp.velocity_scale_sq.device
        self.generator = torch.Generator(device=self.device)
        self.generator.seed()
        self.x = torch.zeros((batch, *mdp.event_shape), device=self.device)
        self.t = torch.full((batch,), mdp.horizon, dtype=torch.long, device=self.device)  # stepping needs a reset

    def reset(self, seed: int | None, mask: Tensor | None = None) -> None:
        """Fresh x_0 ~ N(0, I), t = 0 for the chains in mask (B,) bool, all when None."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        x0 = self.mdp.reset(self.batch, generator=self.generator, device=self.device)
        if mask is None:
            self.x, self.t = x0, torch.zeros_like(self.t)
        else:
            self.x = torch.where(mask.view(-1, *[1] * len(self.mdp.event_shape)), x0, self.x)
            self.t = torch.where(mask, torch.zeros_like(self.t), self.t)

    def step(self, action: np.ndarray) -> tuple[Tensor, Tensor]:
        """action (B, *event_shape) -> reward (B,), terminated (B,); advances the state."""
        action_t = torch.tensor(np.asarray(action), dtype=torch.float32, device=self.device)
        self.x, self.t, reward, terminated = advance(self.mdp, self.x, self.t, action_t)
        return reward, terminated


class DiffusionMDP(gym.Env[dict[str, Any], np.ndarray]):
    """One chain of ``mdp`` (``default_mdp()`` when None): obs {"x": (*event_shape,) float32, "t": int64}."""

    def __init__(self, mdp: ChainMDP | None = None) -> None:
        self.mdp = default_mdp() if mdp is None else mdp
        self.observation_space, self.action_space = _spaces(self.mdp)
        self._chains = _Chains(self.mdp, 1)

    def _obs(self) -> dict[str, Any]:
        return {"x": _numpy(self._chains.x[0]), "t": np.int64(self._chains.t[0].item())}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """x_0 ~ N(0, I), t = 0; ``seed`` reseeds the env's torch generator."""
        super().reset(seed=seed)
        self._chains.reset(seed)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """action = x_{t+1} (*event_shape,) -> (obs, reward, terminated at t = T, truncated = False, {})."""
        action = np.asarray(action)
        if action.shape != self.mdp.event_shape:
            raise ValueError(f"action must be the next sample of shape {self.mdp.event_shape}, got {action.shape}")
        reward, terminated = self._chains.step(action[None])
        return self._obs(), float(reward[0]), bool(terminated[0]), False, {}


class DiffusionMDPVectorEnv(VectorEnv[dict[str, np.ndarray], np.ndarray, np.ndarray]):
    """``num_envs`` chains of ``mdp`` (``default_mdp()`` when None) stepped as one tensor op.

    obs {"x": (B, *event_shape) float32, "t": (B,) int64}, rewards (B,) float64, terminated (B,).
    Autoreset is DISABLED: every chain ends together at t = T, the step that ends them returns
    x_T (the samples) as the observation itself rather than in ``info["final_obs"]``, and nothing
    is reset (or drawn from the RNG) behind the caller's back. Call ``reset()``, or
    ``reset(options={"reset_mask": mask})`` for some chains (TorchRL's ``GymWrapper`` does);
    stepping a finished chain raises ValueError.
    """

    autoreset_mode = AutoresetMode.DISABLED
    metadata: dict[str, Any] = {"autoreset_mode": autoreset_mode}

    def __init__(self, mdp: ChainMDP | None = None, *, num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.mdp = default_mdp() if mdp is None else mdp
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = _spaces(self.mdp)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._chains = _Chains(self.mdp, num_envs)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"x": _numpy(self._chains.x), "t": _numpy(self._chains.t)}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """x_0 ~ N(0, I), t = 0 for all chains, or those in ``options["reset_mask"]`` (B,) bool."""
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be one int for the whole batch (one generator draws all x_0), got {seed!r}")
        super().reset(seed=seed)
        mask = None if options is None or "reset_mask" not in options else options["reset_mask"]
        if mask is not None:
            mask = torch.as_tensor(np.asarray(mask), device=self._chains.device)
            if mask.shape != (self.num_envs,) or mask.dtype != torch.bool:
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask.dtype} {tuple(mask.shape)}")
        self._chains.reset(seed, mask)
        return self._obs(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """actions = x_{t+1} (B, *event_shape) -> (obs, rewards (B,), terminated (B,), truncated (B,) False, {})."""
        reward, terminated = self._chains.step(actions)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        return self._obs(), _numpy(reward).astype(np.float64), _numpy(terminated), truncated, {}
