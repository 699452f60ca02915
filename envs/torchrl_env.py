"""The diffusion chain as a batched TorchRL environment (B chains stepped as one tensor op).

Keys: observation "x" (B, *event_shape) float32 and "t" (B, 1) int64, the step index (int64 so it
indexes ``ChainMDP``'s per-step tensors directly, like the step policy's t); action "action" =
x_{t+1} (B, *event_shape); ("next", "reward") (B, 1) = ``ChainMDP.step_reward`` (higher is
better: minus tau_velocity times the velocity cost, minus cost(x_T) on the last step); "done" =
"terminated" (B, 1) once t reaches T. All randomness comes from the global torch RNG.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from diffrl.mdp import ChainMDP
from diffrl.policy import GaussianStepPolicy

from ._chain import advance

__all__ = ["DiffusionMDPEnv", "step_policy_module"]


class DiffusionMDPEnv(EnvBase):
    """B chains of ``mdp`` on its device, ``batch_size=[B]``; stateless: a step reads "x" and "t".

    Reset draws x_0 ~ N(0, I) through ``mdp.reset`` from the global RNG (``set_seed(s)`` is
    ``torch.manual_seed(s)``), exactly as ``GaussianStepPolicy.sample`` does, so a rollout with
    ``step_policy_module(policy)`` reproduces ``policy.sample(B)`` under the same seed.
    """

    def __init__(self, mdp: ChainMDP, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = mdp.velocity_scale_sq.device
        super().__init__(device=device, batch_size=torch.Size([batch_size]))
        self.mdp = mdp
        B, event, T = batch_size, mdp.event_shape, mdp.horizon
        self.observation_spec = Composite(
            x=Unbounded(shape=(B, *event), dtype=torch.float32, device=device),
            t=Bounded(low=0, high=T, shape=(B, 1), dtype=torch.int64, device=device),
            shape=(B,),
        )
        self.action_spec = Unbounded(shape=(B, *event), dtype=torch.float32, device=device)
        self.reward_spec = Unbounded(shape=(B, 1), dtype=torch.float32, device=device)
        self.done_spec = Composite(
            done=Categorical(2, shape=(B, 1), dtype=torch.bool, device=device),
            terminated=Categorical(2, shape=(B, 1), dtype=torch.bool, device=device),
            shape=(B,),
        )

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        """Fresh chains for the whole batch: x_0 ~ N(0, I), t = 0 (TorchRL keeps the rows a partial "_reset" leaves alone)."""
        B = self.batch_size[0]
        not_done = torch.zeros((B, 1), dtype=torch.bool, device=self.device)
        return TensorDict(
            x=self.mdp.reset(B, device=self.device),
            t=torch.zeros((B, 1), dtype=torch.int64, device=self.device),
            done=not_done,
            terminated=not_done.clone(),
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        """(x_t, t, action = x_{t+1}) -> next x, t + 1, reward (B, 1), done = terminated (B, 1)."""
        x_next, t_next, reward, terminated = advance(
            self.mdp, tensordict["x"], tensordict["t"].squeeze(-1), tensordict["action"]
        )
        return TensorDict(
            x=x_next,
            t=t_next.unsqueeze(-1),
            reward=reward.unsqueeze(-1),
            done=terminated.unsqueeze(-1),
            terminated=terminated.unsqueeze(-1),
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        """Seeds the global torch RNG, the only source of randomness here (and of the step policy's noise)."""
        if seed is not None:
            torch.manual_seed(seed)


class _StepActor(nn.Module):
    """(x (B, *event_shape), t (B, 1) long) -> x_{t+1} = policy(x, t) with fresh global-RNG noise, no grad."""

    def __init__(self, policy: GaussianStepPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return self.policy(x, t.squeeze(-1))


def step_policy_module(policy: GaussianStepPolicy) -> TensorDictModule:
    """A TorchRL policy reading "x", "t" and writing "action" = x_{t+1} ~ policy(. | x_t, t).

    The noise is one ``torch.randn`` per step, drawn at the step like ``GaussianStepPolicy.sample``;
    actions carry no gradient (losses recompute ``policy.log_prob`` or the mean from the stored data).
    """
    return TensorDictModule(_StepActor(policy), in_keys=["x", "t"], out_keys=["action"])
