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

Speed (``benchmarks/env_speed.py``, docs/results/env_speed.json; B = 128, D = 2, T = 5, the DxMI
run's policy and energy reward, one thread on a loaded 2-core machine): ``env.rollout`` costs about
1.5x ``policy.sample`` (1.49 to 1.57x across runs), which computes no rewards: the plain loop plus
the MDP's rewards alone costs 1.4 to 1.46x in the same runs, TorchRL's own ``EnvBase.rollout`` on
this env 2.2 to 2.5x. ``rollout`` takes a short route for whole chains from a reset (its
docstring): no per-step env TensorDicts, ``StepPolicyModule`` called directly, the rewards after
the loop.
"""
from __future__ import annotations

import torch
from tensordict import LazyStackedTensorDict, TensorDict, TensorDictBase, is_tensor_collection
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import _make_compatible_policy

from diffrl.mdp import ChainMDP
from diffrl.policy import GaussianStepPolicy

from ._chain import advance, next_state

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
        x_next, t_next, reward, terminated, _ = advance(
            self.mdp, tensordict.get("x"), tensordict.get("t").squeeze(-1), tensordict.get("action")
        )
        done = terminated.unsqueeze(-1)
        return self._output({"x": x_next, "t": t_next.unsqueeze(-1), "reward": reward.unsqueeze(-1), "done": done, "terminated": done.clone()})

    def rollout(self, max_steps: int, policy=None, callback=None, **kwargs) -> TensorDictBase:
        """``EnvBase.rollout``: same arguments, same result (keys in the same order, shapes, dtypes,
        strides, names, values bitwise for the same seed and policy), by a shorter route for whole chains.

        The short route: ``auto_reset`` without ``tensordict``; no ``callback``, ``actions``, ``out``,
        ``storing_device``, ``set_state``, ``set_truncated`` or ``auto_cast_to_device``; either
        ``break_when_any_done`` (the default: the rollout ends at t = T) or at most T steps. Other calls
        go to ``EnvBase.rollout``. After the full reset all chains move in lockstep, so every step's t
        and done flags are known without looking. The policy runs once per step on the TensorDict
        ``EnvBase.rollout`` would give it (its other outputs carried over as ``step_mdp`` does); a
        ``StepPolicyModule`` without hooks is called as its forward acts on rows at one step
        (``StepPolicyModule.act``), without the TensorDict. The env's side of a step is ``next_state``;
        the rewards (``ChainMDP.step_reward``, the calls ``_step`` makes) come after the loop, and one
        TensorDict is built from the stacked steps. A policy that replaces "x" or "t" or writes "next"
        entries is a RuntimeError here (``EnvBase.rollout(env, ...)`` takes it).
        """
        steps = self._short_route_steps(max_steps, callback, kwargs)
        if steps is None:
            return super().rollout(max_steps, policy, callback, **kwargs)
        if policy is None:
            policy = self.rand_action
        else:
            policy = _make_compatible_policy(policy, self.observation_spec, env=self, fast_wrap=True,
                                             trust_policy=kwargs.get("trust_policy", False))
        td = self._reset(None)  # = reset() here: a full reset has no done flags to check or complete
        not_done = {key: td.get(key) for key in ("done", "terminated")}  # every step's input flags
        xs, roots = [td.get("x")], []
        if type(policy) is StepPolicyModule and not _has_forward_hooks(policy):  # what its forward does, without the TensorDict
            steps_t = torch.arange(steps, device=self.device).view(-1, 1, 1).expand(-1, self.batch_size[0], 1)  # only stacked and read
            with torch.no_grad():
                for i, t in enumerate(steps_t.unbind(0)):
                    roots.append({"x": xs[-1], "t": t, **not_done, "action": policy.act(xs[-1], i)})
                    xs.append(next_state(xs[-1], roots[-1]["action"]))
            return self._stack_steps(roots, xs, kwargs.get("return_contiguous", False))
        dropped = {key for key, sub in self._step_mdp.exclude_from_root.items() if sub is None}  # next, done and reward keys
        t = td.get("t")
        for i in range(steps):
            td.update(policy(td))
            roots.append(dict(td.items()))
            if roots[-1].get("x") is not xs[-1] or roots[-1].get("t") is not t or "next" in roots[-1]:
                raise RuntimeError("the policy replaced 'x' or 't' or wrote a 'next' entry: call EnvBase.rollout(env, ...) for it")
            xs.append(next_state(xs[-1], roots[-1]["action"]))
            if i < steps - 1:  # the next input as step_mdp makes it: the root's other entries, next x, t, flags
                t = t + 1
                carried = {k: v.copy() if is_tensor_collection(v) else v for k, v in roots[-1].items() if k not in dropped}
                td = self._output({**carried, "x": xs[-1], "t": t, **not_done})
        return self._stack_steps(roots, xs, kwargs.get("return_contiguous", False))

    def _stack_steps(self, roots: list[dict[str, Tensor]], xs: list[Tensor], contiguous: bool | None) -> TensorDictBase:
        """The [B, n] rollout TensorDict of n lockstep steps from t = 0: roots (n) holds each step's root
        entries (x, t, flags, action, the policy's others), xs the states x_0..x_n (B, *event_shape)."""
        n = len(roots)
        size = torch.Size([self.batch_size[0], n])
        dense = all(r.keys() == roots[0].keys() and all(isinstance(v, Tensor) for v in r.values()) for r in roots)
        stacked = {key: torch.stack([r[key] for r in roots], 1) for key in roots[0]} if dense else {}
        x = stacked["x"] if dense else torch.stack(xs[:-1], 1)
        t = stacked["t"] if dense else torch.stack([r["t"] for r in roots], 1)
        x_next, t_next = torch.stack(xs[1:], 1), t + 1
        done = t_next == self.mdp.horizon
        reward = _step_rewards(self.mdp, xs, [r["t"].squeeze(-1) for r in roots])
        nxt = {"x": x_next, "t": t_next, "reward": reward.unsqueeze(-1), "done": done, "terminated": done.clone()}
        if dense:
            stacked["next"] = TensorDict._new_unsafe(nxt, batch_size=size, device=self.device, names=[None, "time"])
            return TensorDict._new_unsafe(stacked, batch_size=size, device=self.device, names=[None, "time"])
        # the policy's entries differ between steps: stack per-step TensorDicts as EnvBase.rollout does
        tds = [self._output({**r, "next": self._output({k: v[:, i].contiguous() for k, v in nxt.items()})}) for i, r in enumerate(roots)]
        if contiguous is None:
            contiguous = not self._has_dynamic_specs
        out = torch.stack(tds, 1) if contiguous else LazyStackedTensorDict.maybe_dense_stack(tds, 1)
        return out.refine_names(..., "time")

    def _short_route_steps(self, max_steps: int, callback, kwargs: dict) -> int | None:
        """The number of steps ``rollout`` takes by its short route, or None when it is ``EnvBase.rollout``'s."""
        if callback is not None or not isinstance(max_steps, int) or max_steps < 1 or kwargs.get("break_when_all_done"):
            return None
        if any(key not in _SHORT_ROUTE_OPTIONS or (key in _SHORT_ROUTE_DEFAULTS and value is not _SHORT_ROUTE_DEFAULTS[key])
               for key, value in kwargs.items()):
            return None
        if self.run_type_checks or self._post_step_mdp_hooks is not None:
            return None
        if type(self)._step is not DiffusionMDPEnv._step or type(self)._reset is not DiffusionMDPEnv._reset:
            return None
        break_when_any_done = kwargs.get("break_when_any_done")
        if break_when_any_done is None or break_when_any_done:
            return min(max_steps, self.mdp.horizon)
        return max_steps if max_steps <= self.mdp.horizon else None  # longer: EnvBase.rollout resets chains midway

    def _set_seed(self, seed: int | None) -> None:
        """Seeds the env's own ``generator`` (x_0 at reset); the global torch RNG is left alone."""
        if seed is not None:
            self.generator.manual_seed(seed)


_SHORT_ROUTE_DEFAULTS = {"auto_reset": True, "auto_cast_to_device": False, "tensordict": None, "actions": None, "out": None,
                         "storing_device": None, "set_state": None, "set_truncated": False}
"""``EnvBase.rollout``'s options the short route takes only at these values (their defaults)."""
_SHORT_ROUTE_OPTIONS = {*_SHORT_ROUTE_DEFAULTS, "break_when_any_done", "break_when_all_done", "return_contiguous", "trust_policy"}


def _has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward (pre-)hooks, its own or global ones, besides ``forward``."""
    return bool(module._forward_hooks or module._forward_pre_hooks or _global_forward_hooks or _global_forward_pre_hooks)


def _step_rewards(mdp: ChainMDP, states: list[Tensor], steps: list[Tensor]) -> Tensor:
    """``mdp.step_reward`` of n steps, (B, n): states x_0..x_n (B, *event_shape) and steps (n) the t (B,) long
    of x_0..x_{n-1}. One call per step, the call ``_step`` makes, so the rewards are bitwise the env's step's
    (a batched call can round differently: a network in the costs, an anchor's, or a reduction split across
    threads depends on the batch's size)."""
    with torch.no_grad():
        return torch.stack([mdp.step_reward(x, x_next, t) for x, x_next, t in zip(states[:-1], states[1:], steps)], 1)


class StepPolicyModule(TensorDictModuleBase):
    """A TorchRL policy: reads "x" (B, *event_shape) and "t" (B, 1) long, writes "action" = x_{t+1} =
    policy(x, t, noise) with noise ~ N(0, I) from ``generator`` (None: the global RNG), without gradient.

    One ``torch.randn`` per step, drawn at the step like ``GaussianStepPolicy.sample``: give it the
    env's ``generator`` to reproduce ``policy.sample`` (module docstring). Losses recompute
    ``policy.log_prob`` or the mean from the stored data. A plain TensorDictModuleBase (no key
    dispatch) because it runs once per step of every rollout; ``DiffusionMDPEnv.rollout`` calls
    ``act`` directly.
    """

    in_keys = ["x", "t"]
    out_keys = ["action"]

    def __init__(self, policy: GaussianStepPolicy, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.policy, self.generator = policy, generator

    def act(self, x: Tensor, t: int | Tensor) -> Tensor:
        """x_{t+1} (B, *event_shape) from x (B, *event_shape): one noise draw, then the policy. t: one int
        for all rows (the policy's int fast path) or (B, 1) long. Callers hold ``torch.no_grad()`` (forward
        and ``DiffusionMDPEnv.rollout`` do), as ``GaussianStepPolicy.sample`` holds it over its loop."""
        noise = torch.randn(x.shape, generator=self.generator, device=x.device)
        return self.policy(x, t, noise)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        x, t = tensordict.get("x"), tensordict.get("t")
        low, high = t.aminmax()
        step = int(low)
        if step != int(high) or step >= self.policy.horizon:
            step = t  # rows at different steps (or all at t = T): the policy's tensor path
        with torch.no_grad():  # same numbers either way; the int path takes fewer ops
            tensordict.set("action", self.act(x, step))
        return tensordict


def step_policy_module(policy: GaussianStepPolicy, generator: torch.Generator | None = None) -> StepPolicyModule:
    """``StepPolicyModule(policy, generator)``: the step policy as a TorchRL policy (pass ``env.generator``
    to reproduce ``policy.sample``)."""
    return StepPolicyModule(policy, generator)


def chain_tensordict(mdp: ChainMDP, chain: Tensor) -> TensorDictBase:
    """Chains (T + 1, B, *event_shape) as the [B, T] TensorDict ``DiffusionMDPEnv.rollout`` would have
    made of them (same keys in the same order, names, values): "x", "t" (B, T, 1), "done" = "terminated"
    = False, "action" = x_{t+1}, and under "next" x_{t+1}, t + 1, "reward" (B, T, 1)
    (``ChainMDP.step_reward`` per step, as the env's step calls it) and "done" = "terminated"
    (B, T, 1) at t + 1 = T. "x", "action" and ("next", "x") are views of ``chain``. For chains
    collected without TorchRL (``DxMI.collect``)."""
    T = mdp.horizon
    if chain.ndim < 2 or chain.shape[0] != T + 1 or tuple(chain.shape[2:]) != mdp.event_shape:
        raise ValueError(f"expected chains of shape (T + 1 = {T + 1}, B, *event_shape = {mdp.event_shape}), got {tuple(chain.shape)}")
    B, size = chain.shape[1], torch.Size([chain.shape[1], T])
    x, action = chain[:-1].movedim(0, 1), chain[1:].movedim(0, 1)
    x_next = next_state(x, action)
    t = torch.arange(T, device=chain.device).repeat(B, 1)
    done = (t + 1 == T).unsqueeze(-1)
    not_done = torch.zeros((B, T, 1), dtype=torch.bool, device=chain.device)
    reward = _step_rewards(mdp, list(chain), list(t.T))
    nxt = {"x": x_next, "t": (t + 1).unsqueeze(-1), "reward": reward.unsqueeze(-1), "done": done, "terminated": done.clone()}
    return TensorDict._new_unsafe({
        "x": x, "t": t.unsqueeze(-1), "done": not_done, "terminated": not_done.clone(), "action": action,
        "next": TensorDict._new_unsafe(nxt, batch_size=size, device=chain.device, names=[None, "time"]),
    }, batch_size=size, device=chain.device, names=[None, "time"])


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
