"""The diffusion chain as a batched TorchRL environment (B chains stepped as one tensor op).

Keys: observation "x" (B, *event_shape) float32 and "t" (B, 1) int64, the step index (int64 so it
indexes ``ChainMDP``'s per-step tensors directly, like the step policy's t); action "action" =
x_{t+1} (B, *event_shape); ("next", "reward") (B, 1) = ``ChainMDP.step_reward`` (higher is
better: minus tau_velocity times the velocity cost, minus cost(x_T) on the last step); "done" =
"terminated" (B, 1) once t reaches T.

Randomness: the env draws x_0 from its own ``generator`` (``set_seed`` seeds it; the global torch
RNG is never touched after construction). ``step_policy_module(policy, env.generator)`` draws each
step's noise from the same generator, in the order ``GaussianStepPolicy.sample`` does, so after
``env.set_seed(s)`` the rollout ``env.rollout(T, step_policy_module(policy, env.generator))``
equals ``policy.sample(B, generator=torch.Generator().manual_seed(s))`` bitwise. The same holds
for ``diffrl.agents.torchrl.probabilistic_actor(policy, generator=env.generator)``.

Speed (``benchmarks/iteration_speed.py --torchrl-only``, B = 128, D = 2, T = 5): a rollout costs
about 2.4x ``policy.sample`` (2.3x with ``break_when_any_done=False``), 1.7x the same loop with the
env's per-step rewards. The env's own code is lean (outputs built without validation, no reset
checks, the policy's int fast path); the rest is the rewards (the terminal energy) and TorchRL's
per-step and stacking work, which ``rollout``'s options barely change.
"""
from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from diffrl.mdp import ChainMDP
from diffrl.policy import GaussianStepPolicy

from ._chain import advance

__all__ = ["DiffusionMDPEnv", "StepPolicyModule", "step_policy_module", "chain_tensordict", "rollout_chain"]


class DiffusionMDPEnv(EnvBase):
    """B chains of ``mdp`` on its device, ``batch_size=[B]``; stateless: a step reads "x" and "t".

    seed: of the env's own ``generator`` (x_0 ~ N(0, I) at reset); None takes one draw of the
    global RNG at construction (so ``torch.manual_seed`` before building still reproduces runs).
    """

    def __init__(self, mdp: ChainMDP, batch_size: int, seed: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = mdp.velocity_scale_sq.device
        # _reset never returns a done chain: allow_done_after_reset skips TorchRL's per-key check of that
        super().__init__(device=device, batch_size=torch.Size([batch_size]), allow_done_after_reset=True)
        self.mdp = mdp
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
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

    def _output(self, values: dict[str, Tensor]) -> TensorDictBase:
        """A TensorDict of the env's batch size and device without per-entry validation (as TorchRL's own
        gym and brax envs build theirs): every entry here is made with the right shape, dtype and device."""
        return TensorDict._new_unsafe(values, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: TensorDictBase | None, **kwargs) -> TensorDictBase:
        """Fresh chains for the whole batch: x_0 ~ N(0, I) from ``generator``, t = 0 (TorchRL keeps the rows a partial "_reset" leaves alone)."""
        B = self.batch_size[0]
        not_done = torch.zeros((B, 1), dtype=torch.bool, device=self.device)
        return self._output({
            "x": self.mdp.reset(B, generator=self.generator, device=self.device),
            "t": torch.zeros((B, 1), dtype=torch.int64, device=self.device),
            "done": not_done,
            "terminated": not_done.clone(),
        })

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        """(x_t, t, action = x_{t+1}) -> next x, t + 1, reward (B, 1), done = terminated (B, 1)."""
        x_next, t_next, reward, terminated = advance(
            self.mdp, tensordict.get("x"), tensordict.get("t").squeeze(-1), tensordict.get("action")
        )
        done = terminated.unsqueeze(-1)
        return self._output({"x": x_next, "t": t_next.unsqueeze(-1), "reward": reward.unsqueeze(-1), "done": done, "terminated": done.clone()})

    def _set_seed(self, seed: int | None) -> None:
        """Seeds the env's own ``generator`` (x_0 at reset); the global torch RNG is left alone."""
        if seed is not None:
            self.generator.manual_seed(seed)


class StepPolicyModule(TensorDictModuleBase):
    """A TorchRL policy: reads "x" (B, *event_shape) and "t" (B, 1) long, writes "action" = x_{t+1} =
    policy(x, t, noise) with noise ~ N(0, I) from ``generator`` (None: the global RNG), without gradient.

    One ``torch.randn`` per step, drawn at the step like ``GaussianStepPolicy.sample``: give it the
    env's ``generator`` to reproduce ``policy.sample`` (module docstring). Losses recompute
    ``policy.log_prob`` or the mean from the stored data. A plain TensorDictModuleBase (no key
    dispatch) because it runs once per step of every rollout.
    """

    in_keys = ["x", "t"]
    out_keys = ["action"]

    def __init__(self, policy: GaussianStepPolicy, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.policy, self.generator = policy, generator

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x, step = tensordict.get("x"), tensordict.get("t").squeeze(-1)
        noise = torch.randn(x.shape, generator=self.generator, device=x.device)
        first = int(step[0])
        if first < self.policy.horizon and bool((step == first).all()):
            step = first  # the chains move in lockstep: the policy's int fast path (same numbers, fewer ops)
        with torch.no_grad():
            tensordict.set("action", self.policy(x, step, noise))
        return tensordict


def step_policy_module(policy: GaussianStepPolicy, generator: torch.Generator | None = None) -> StepPolicyModule:
    """``StepPolicyModule(policy, generator)``: the step policy as a TorchRL policy (pass ``env.generator``
    to reproduce ``policy.sample``)."""
    return StepPolicyModule(policy, generator)


def chain_tensordict(mdp: ChainMDP, chain: Tensor) -> TensorDictBase:
    """Chains (T + 1, B, *event_shape) as the [B, T] TensorDict ``DiffusionMDPEnv.rollout`` would have
    made of them: "x", "t" (B, T, 1), "action" = x_{t+1}, "done" = "terminated" = False, and under
    "next" x_{t+1}, t + 1, "reward" (B, T, 1) (``advance``, the env's own step) and "done" =
    "terminated" (B, T, 1) at t + 1 = T. For chains collected without TorchRL (``DxMI.collect``)."""
    T = mdp.horizon
    if chain.ndim < 2 or chain.shape[0] != T + 1 or tuple(chain.shape[2:]) != mdp.event_shape:
        raise ValueError(f"expected chains of shape (T + 1 = {T + 1}, B, *event_shape = {mdp.event_shape}), got {tuple(chain.shape)}")
    B = chain.shape[1]
    x, action = chain[:-1].movedim(0, 1), chain[1:].movedim(0, 1)
    t = torch.arange(T, device=chain.device).expand(B, T)
    x_next, t_next, reward, terminated = advance(mdp, x, t, action)
    not_done = torch.zeros((B, T, 1), dtype=torch.bool, device=chain.device)
    nxt = {"x": x_next, "t": t_next.unsqueeze(-1), "reward": reward.unsqueeze(-1), "done": terminated.unsqueeze(-1),
           "terminated": terminated.unsqueeze(-1).clone()}
    return TensorDict({"x": x, "t": t.unsqueeze(-1), "action": action, "done": not_done, "terminated": not_done.clone(),
                       "next": TensorDict(nxt, batch_size=[B, T])}, batch_size=[B, T], device=chain.device)


def rollout_chain(tensordict: TensorDictBase) -> Tensor:
    """The chains (T + 1, B, *event_shape) of a [B, T] rollout (``env.rollout`` or a ``Collector`` batch
    with ``frames_per_batch = B * T``): x_0..x_{T-1} from "x", x_T from ("next", "x"). Every row must be
    one whole chain, t = 0..T-1 in order; a ValueError otherwise."""
    if tensordict.ndim != 2:
        raise ValueError(f"expected a [B, T] rollout, got batch size {tuple(tensordict.batch_size)}")
    B, T = tensordict.batch_size
    t = tensordict.get("t").reshape(B, T)
    if not torch.equal(t, torch.arange(T, device=t.device).expand(B, T)) or not bool(tensordict.get(("next", "terminated"))[:, -1].all()):
        raise ValueError("every row of the rollout must be one whole chain, t = 0..T-1 ending terminated "
                         "(collect with frames_per_batch = B * T from a fresh reset)")
    x = tensordict.get("x")
    return torch.cat([x, tensordict.get(("next", "x"))[:, -1:]], dim=1).movedim(1, 0)
