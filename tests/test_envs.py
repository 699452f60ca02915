"""diffrl.envs: API conformance (TorchRL check_env_specs, Gymnasium check_env), rewards against an
independent hand computation, exact reproduction of GaussianStepPolicy.sample, bad input."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from tensordict import LazyStackedTensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.envs.utils import check_env_specs

from diffrl.envs import ENV_ID, DiffusionMDP, DiffusionMDPEnv, DiffusionMDPVectorEnv, chain_tensordict, rollout_chain, step_policy_module
from diffrl.mdp import ChainMDP, TeacherAnchor
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy
from diffrl.rewards import FixedReward
from diffrl.schedules import ChainSchedule

T = 5
SCALES = torch.tensor([0.5, 0.8, 1.0, 1.3, 2.0])  # s_t
TAU = 0.3


def log_density(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) over the flattened event, (B,)."""
    x = x.flatten(1)
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def make_mdp(event_shape: tuple[int, ...] = (2,)) -> ChainMDP:
    return ChainMDP(FixedReward(log_density), event_shape, SCALES, tau_velocity=TAU, avr_decay=None)


def make_policy() -> GaussianStepPolicy:
    torch.manual_seed(0)
    return GaussianStepPolicy.from_schedule(
        TimeMLP(2, 2, hidden=32, depth=2, time_scale=1.0), ChainSchedule.var(T), event_shape=(2,)
    )


def hand_return(chain: torch.Tensor) -> torch.Tensor:
    """-(TAU * sum_t mean_d (x_{t+1} - x_t)^2 / (2 s_t^2) + cost(x_T)) for a chain (T + 1, B, D), (B,)."""
    velocity = sum(((chain[t + 1] - chain[t]) ** 2).mean(1) / (2 * SCALES[t] ** 2) for t in range(T))
    x_final = chain[-1]
    cost = 0.5 * (x_final**2).sum(1) + 0.5 * x_final.shape[1] * math.log(2 * math.pi)  # -log N(x_T; 0, I)
    return -(TAU * velocity + cost)


@pytest.fixture
def strict_gym_warnings():
    """Every warning is an error except Gymnasium's advice against unbounded / non-[-1, 1] Boxes:
    x_t and x_{t+1} are unbounded by nature, so the env's Boxes are (-inf, inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*Box (action|observation) space (minimum|maximum) value is .*infinity")
        warnings.filterwarnings("ignore", message=r".*recommend using a symmetric and normalized space")
        yield


# ---------------------------------------------------------------- TorchRL


@pytest.mark.parametrize("break_when_any_done", [True, False])
def test_torchrl_env_passes_check_env_specs(break_when_any_done: bool) -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=3)
    check_env_specs(env, break_when_any_done=break_when_any_done)
    check_env_specs(env, seed=1, break_when_any_done=break_when_any_done)
    td = env.rollout(T)
    assert env.full_observation_spec.is_in(td["next"][:, -1].select("x", "t"))
    assert td["next", "t"][:, -1].eq(T).all() and td["next", "terminated"][:, -1].all()
    assert not td["next", "done"][:, :-1].any()


def test_torchrl_rollout_reproduces_policy_sample() -> None:
    """x_0 and every step's noise come from the env's own generator, in policy.sample's order."""
    policy = make_policy()
    env = DiffusionMDPEnv(make_mdp(), batch_size=6)
    env.set_seed(123)
    td = env.rollout(T, step_policy_module(policy, env.generator))
    chain = policy.sample(6, generator=torch.Generator().manual_seed(123))  # (T + 1, B, 2)
    assert td.batch_size == (6, T)
    torch.testing.assert_close(td["x"].transpose(0, 1), chain[:-1], rtol=0, atol=0)
    torch.testing.assert_close(td["action"].transpose(0, 1), chain[1:], rtol=0, atol=0)
    torch.testing.assert_close(td["next", "x"][:, -1], chain[-1], rtol=0, atol=0)
    # seeding the env seeds the policy's noise too when the module shares its generator
    env.set_seed(7)
    td_seeded = env.rollout(T, step_policy_module(policy, env.generator))
    torch.testing.assert_close(td_seeded["next", "x"][:, -1], policy.sample(6, generator=torch.Generator().manual_seed(7))[-1], rtol=0, atol=0)


def test_torchrl_episode_return_matches_hand_formula() -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=4)
    torch.manual_seed(5)
    td = env.rollout(T)  # random actions from the spec
    chain = torch.cat([td["x"][:, :1], td["next", "x"]], dim=1).transpose(0, 1)  # (T + 1, B, 2)
    torch.testing.assert_close(td["next", "reward"].sum((1, 2)), hand_return(chain))


def test_torchrl_wrong_action_shape_is_a_value_error() -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=3)
    td = env.reset()
    td["action"] = torch.zeros(3, 2, 1)
    with pytest.raises(ValueError, match="action must be the next sample"):
        env.step(td)


def test_torchrl_rollout_wrong_action_shape_is_a_value_error() -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=3)
    shrink = TensorDictModule(lambda x: x[:, :1], in_keys=["x"], out_keys=["action"])
    with pytest.raises(ValueError, match="action must be the next sample"):
        env.rollout(T, shrink)


# ---------------------------------------------------------------- TorchRL: the short route of rollout against EnvBase.rollout


def assert_same_rollout(a: TensorDictBase, b: TensorDictBase, strides: bool = True) -> None:
    """Same class, batch size, names (also under "next"), device and keys in the same order; every leaf the
    same dtype, shape, strides (unless not ``strides``), requires_grad and values, bitwise. A lazy stack is
    compared step by step."""
    assert type(a) is type(b)
    if isinstance(a, LazyStackedTensorDict):
        assert a.stack_dim == b.stack_dim and len(a.tensordicts) == len(b.tensordicts)
        for u, v in zip(a.tensordicts, b.tensordicts):
            assert_same_rollout(u, v, strides)
        return
    assert a.batch_size == b.batch_size and a.names == b.names and a.device == b.device
    assert list(a.keys(True, True)) == list(b.keys(True, True))
    if "next" in b.keys():
        assert a["next"].names == b["next"].names
    for key in b.keys(True, True):
        u, v = a.get(key), b.get(key)
        assert (u.dtype, u.shape, u.requires_grad) == (v.dtype, v.shape, v.requires_grad), key
        assert not strides or u.stride() == v.stride(), key
        assert torch.equal(u, v), key


def counting_steps(env: DiffusionMDPEnv) -> list[int]:
    """Counts the env's ``_step`` calls (EnvBase.rollout makes one per step; the short route none)."""
    calls: list[int] = []
    step = env._step
    env._step = lambda td: calls.append(1) or step(td)  # an instance attribute: the class's _step is unchanged
    return calls


def both_rollouts(env: DiffusionMDPEnv, seed: int, max_steps: int, make_policy, **kwargs) -> tuple[TensorDictBase, TensorDictBase, int, int]:
    """(env.rollout, EnvBase.rollout, _step calls of the first, of the second), each from ``env.set_seed(seed)``,
    ``torch.manual_seed(seed)`` and a fresh ``make_policy(env)``; asserts that both leave the env's generator in one state."""
    calls = counting_steps(env)
    out = []
    for rollout in (env.rollout, lambda *args, **kw: EnvBase.rollout(env, *args, **kw)):
        env.set_seed(seed)
        torch.manual_seed(seed)
        before = len(calls)
        out.append((rollout(max_steps, make_policy(env), **kwargs), len(calls) - before, env.generator.get_state()))
    (a, calls_a, state_a), (b, calls_b, state_b) = out
    assert torch.equal(state_a, state_b), "the two rollouts drew different amounts from the env's generator"
    return a, b, calls_a, calls_b


class NoisyLinear(nn.Module):
    """A generic policy with parameters (its action has gradient): action = lin(x) + (t + 1) noise / 10, noise
    from ``generator``, and a second output t / T."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.lin, self.generator = nn.Linear(2, 2), generator

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x.shape, generator=self.generator)
        return self.lin(x) + (t + 1) * noise / 10, t.float() / T


def step_module(env: DiffusionMDPEnv):
    return step_policy_module(make_policy(), env.generator)


@pytest.mark.parametrize(("max_steps", "kwargs"), [
    (T, {}),
    (T + 2, {}),
    (2, {}),
    (1, {}),
    (T, {"break_when_any_done": False}),
    (3, {"break_when_any_done": False, "return_contiguous": True}),
    (T, {"return_contiguous": None, "break_when_all_done": False}),
    (T, {"trust_policy": True, "auto_reset": True, "tensordict": None, "set_truncated": False}),
])
def test_torchrl_rollout_equals_envbase_rollout(max_steps: int, kwargs: dict) -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=6)
    a, b, calls_a, calls_b = both_rollouts(env, 4, max_steps, step_module, **kwargs)
    assert calls_a == 0 and calls_b == min(max_steps, T), "the short route was not taken"
    assert_same_rollout(a, b)
    assert a.batch_size == (6, min(max_steps, T)) and a.names == [None, "time"]


@pytest.mark.parametrize("policy", ["tensordict_module", "callable", "random", "hooked_step_module", "image_events"])
def test_torchrl_rollout_with_other_policies_equals_envbase_rollout(policy: str) -> None:
    """Generic TensorDict policies take the short route too: a TensorDictModule with parameters and an extra
    output (carried to the next step's input as step_mdp does), a plain callable (wrapped by TorchRL), no
    policy (random actions from the spec, the global RNG), a StepPolicyModule with a forward hook (called
    through its forward), 1x2x2 images."""
    hook_calls: list[int] = []
    mdp = make_mdp((1, 2, 2) if policy == "image_events" else (2,))

    def make(env: DiffusionMDPEnv):
        if policy == "tensordict_module":
            return TensorDictModule(NoisyLinear(env.generator), in_keys=["x", "t"], out_keys=["action", "t_fraction"])
        if policy in ("callable", "image_events"):
            return lambda x, t: 0.5 * x + t.reshape(-1, *[1] * (x.ndim - 1))
        if policy == "hooked_step_module":
            module = step_module(env)
            module.register_forward_hook(lambda *args: hook_calls.append(1))
            return module
        return None

    env = DiffusionMDPEnv(mdp, batch_size=4)
    a, b, calls_a, _ = both_rollouts(env, 7, T, make)
    assert calls_a == 0
    assert_same_rollout(a, b)
    if policy == "tensordict_module":
        assert a["action"].requires_grad and list(a.keys()) == ["x", "t", "done", "terminated", "action", "t_fraction", "next"]
    if policy == "hooked_step_module":
        assert len(hook_calls) == 2 * T


class LateKeyPolicy(TensorDictModuleBase):
    """action = x / 2; from step 1 on also ("memory", "h") = its previous value + 1 (zeros at first): the
    policy's entries differ between steps, and a nested entry is carried from step to step."""

    in_keys = ["x", "t"]
    out_keys = ["action", ("memory", "h")]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("action", tensordict.get("x") / 2)
        if int(tensordict.get("t")[0]) > 0:
            h = tensordict.get(("memory", "h"), None)
            tensordict.set(("memory", "h"), torch.zeros(tensordict.shape[0], 3) if h is None else h + 1)
        return tensordict


def test_torchrl_rollout_with_step_dependent_keys_stacks_as_envbase_rollout() -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=3)
    a, b, calls_a, _ = both_rollouts(env, 0, T, lambda env: LateKeyPolicy())
    assert calls_a == 0 and isinstance(a, LazyStackedTensorDict)
    assert_same_rollout(a, b)
    assert [float(td["memory", "h"][0, 0]) for td in a.tensordicts[1:]] == list(range(T - 1))
    for rollout in (env.rollout, lambda *args, **kw: EnvBase.rollout(env, *args, **kw)):
        with pytest.raises(RuntimeError, match="exclusive"):
            rollout(T, LateKeyPolicy(), return_contiguous=True)


@pytest.mark.parametrize(("max_steps", "kwargs"), [
    (T, {"callback": lambda env, td: None}),
    (T + 3, {"break_when_any_done": False}),
    (T, {"break_when_all_done": True}),
    (T, {"auto_reset": False, "tensordict": "reset"}),
])
def test_torchrl_rollout_options_off_the_short_route_are_envbase_rollout(max_steps: int, kwargs: dict) -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=3)
    if kwargs.get("tensordict") == "reset":
        env.set_seed(9)
        start = env.reset()
        kwargs = {**kwargs, "tensordict": start}
    else:
        start = None
    calls = counting_steps(env)
    env.set_seed(5)
    a = env.rollout(max_steps, step_module(env), **{**kwargs, **({"tensordict": start.clone()} if start is not None else {})})
    assert len(calls) == max_steps, "EnvBase.rollout was not called"
    env.set_seed(5)
    b = EnvBase.rollout(env, max_steps, step_module(env), **{**kwargs, **({"tensordict": start.clone()} if start is not None else {})})
    assert_same_rollout(a, b)


def test_torchrl_rollout_with_a_teacher_anchor_equals_envbase_rollout() -> None:
    """The anchor's running cost runs a network, whose last bits can depend on the batch's size: the
    rewards still equal EnvBase.rollout's bitwise, and chain_tensordict's."""
    torch.manual_seed(0)
    teacher = GaussianStepPolicy(TimeMLP(2, 2, hidden=16, depth=3, time_dim=16), torch.linspace(0.6, 0.2, T), (2,))
    mdp = ChainMDP(FixedReward(log_density), (2,), SCALES, tau_velocity=TAU, avr_decay=None, anchor=TeacherAnchor(teacher), tau_anchor=0.1)
    env = DiffusionMDPEnv(mdp, batch_size=7)
    a, b, calls_a, _ = both_rollouts(env, 1, T, step_module)
    assert calls_a == 0
    assert_same_rollout(a, b)
    assert_same_rollout(chain_tensordict(mdp, rollout_chain(a)), a, strides=False)


def test_torchrl_rollout_and_chain_tensordict_evaluate_the_terminal_cost_once() -> None:
    """The terminal reward model sees B samples once per rollout (not once per step and chain), and
    chain_tensordict rebuilds the rollout from its chains: same keys, order, names and values."""
    rows: list[int] = []
    mdp = ChainMDP(FixedReward(lambda x: rows.append(x.shape[0]) or log_density(x)), (2,), SCALES, tau_velocity=TAU, avr_decay=None)
    env = DiffusionMDPEnv(mdp, batch_size=6, seed=2)
    td = env.rollout(T, step_module(env))
    assert rows == [6]
    rebuilt = chain_tensordict(mdp, rollout_chain(td))
    assert rows == [6, 6]
    assert_same_rollout(rebuilt, td, strides=False)


def test_torchrl_rollout_refuses_a_policy_that_replaces_the_observation() -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=3)
    rewrite = TensorDictModule(lambda x: (x.clone(), x / 2), in_keys=["x"], out_keys=["x", "action"])
    with pytest.raises(RuntimeError, match="replaced 'x'"):
        env.rollout(T, rewrite)
    assert EnvBase.rollout(env, T, rewrite).batch_size == (3, T)


# ---------------------------------------------------------------- Gymnasium, one chain


def test_gym_env_passes_check_env(strict_gym_warnings: None) -> None:
    check_env(gymnasium.make(ENV_ID).unwrapped)  # with a spec: render and close checks run too
    check_env(DiffusionMDP(make_mdp((1, 3, 3))), skip_render_check=True)


def test_gym_make_default_and_custom_mdp() -> None:
    env = gymnasium.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    assert obs["x"].shape == (2,) and obs["x"].dtype == np.float32 and obs["t"] == 0
    for t in range(5):
        obs, reward, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        assert isinstance(reward, float) and obs["t"] == t + 1 and terminated == (t == 4) and not truncated
    mdp = make_mdp()
    assert gymnasium.make(ENV_ID, mdp=mdp).unwrapped.mdp is mdp


def test_gym_episode_return_matches_hand_formula() -> None:
    env = DiffusionMDP(make_mdp())
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    xs, total, terminated = [obs["x"]], 0.0, False
    while not terminated:
        obs, reward, terminated, _, _ = env.step(rng.standard_normal(2).astype(np.float32))
        xs.append(obs["x"])
        total += reward
    chain = torch.as_tensor(np.stack(xs))[:, None]  # (T + 1, 1, 2)
    assert len(xs) == T + 1
    assert total == pytest.approx(float(hand_return(chain)[0]), rel=1e-5)


def test_gym_wrong_action_shape_is_a_value_error() -> None:
    env = DiffusionMDP(make_mdp())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be the next sample of shape \(2,\)"):
        env.step(np.zeros(3, np.float32))


# ---------------------------------------------------------------- Gymnasium, batched


def test_vector_env_rewards_are_mdp_step_rewards() -> None:
    mdp = make_mdp()
    env = gymnasium.make_vec(ENV_ID, num_envs=4, mdp=mdp, autoreset_mode=AutoresetMode.DISABLED)
    assert isinstance(env, DiffusionMDPVectorEnv)
    assert env.metadata["autoreset_mode"] is AutoresetMode.DISABLED is env.autoreset_mode
    obs, _ = env.reset(seed=0)
    assert obs["x"].shape == (4, 2) and (obs["t"] == 0).all()
    rng = np.random.default_rng(1)
    for t in range(T):
        actions = rng.standard_normal((4, 2)).astype(np.float32)
        x = torch.as_tensor(obs["x"])
        obs, rewards, terminated, truncated, _ = env.step(actions)
        expected = mdp.step_reward(x, torch.as_tensor(actions), torch.full((4,), t))
        torch.testing.assert_close(torch.as_tensor(rewards, dtype=torch.float32), expected, rtol=0, atol=0)
        np.testing.assert_array_equal(obs["x"], actions)
        assert (obs["t"] == t + 1).all() and (terminated == (t == T - 1)).all() and not truncated.any()
    with pytest.raises(ValueError, match="reset it before stepping"):
        env.step(np.zeros((4, 2), np.float32))


def test_vector_env_partial_reset_and_seeding() -> None:
    env = DiffusionMDPVectorEnv(make_mdp(), num_envs=3)
    first, _ = env.reset(seed=11)
    env.step(np.ones((3, 2), np.float32))
    obs, _ = env.reset(options={"reset_mask": np.array([True, False, True])})
    np.testing.assert_array_equal(obs["t"], [0, 1, 0])
    np.testing.assert_array_equal(obs["x"][1], [1.0, 1.0])
    again, _ = env.reset(seed=11)
    np.testing.assert_array_equal(again["x"], first["x"])
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([True, False])})


def test_vector_env_wrong_action_shape_is_a_value_error() -> None:
    env = DiffusionMDPVectorEnv(make_mdp(), num_envs=3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be the next sample"):
        env.step(np.zeros((2, 2), np.float32))


# ---------------------------------------------------------------- imports


def test_import_envs_is_light_and_core_does_not_import_envs() -> None:
    code = (
        "import sys, diffrl.mdp, diffrl.policy, diffrl.rewards, diffrl.nets, diffrl.schedules\n"
        "assert 'diffrl.envs' not in sys.modules and 'gymnasium' not in sys.modules\n"
        "import diffrl.envs\n"
        "assert 'torchrl' not in sys.modules, 'diffrl.envs imported torchrl eagerly'\n"
        "diffrl.envs.DiffusionMDPEnv\n"
        "assert 'torchrl' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
