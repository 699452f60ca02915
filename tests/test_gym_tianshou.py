"""Gymnasium conventions of diffrl.envs (issue 12) and the Tianshou vector env: env_checker on every
option, costs in info against a hand computation, rendering against pixel coordinates worked out
by hand, per-chain seeds, one autoreset behaviour through every ``make_vec`` mode (Gymnasium's own
SyncVectorEnv is the reference), a trained run's MDP through ``make(run=...)``, and a stock
Tianshou Collector whose returns match a hand-computed chain."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from diffrl.envs import ENV_ID, DiffusionMDP, DiffusionMDPVectorEnv
from test_envs import SCALES, TAU, T, log_density, make_mdp  # the same small MDP as the env tests


def hand_costs(x: np.ndarray, a: np.ndarray, t: int) -> tuple[float, float]:
    """(velocity cost, terminal cost) of one step x -> a at step t, in float64 from the formulas:
    mean_d (a - x)^2 / (2 s_t^2) and, on the last step, -log N(a; 0, I)."""
    x, a = x.astype(np.float64).ravel(), a.astype(np.float64).ravel()
    velocity = np.mean((a - x) ** 2) / (2 * float(SCALES[t]) ** 2)
    terminal = 0.5 * np.sum(a**2) + 0.5 * a.size * math.log(2 * math.pi) if t == T - 1 else 0.0
    return velocity, terminal


@pytest.fixture
def strict_warnings():
    """Every warning is an error except Gymnasium's advice against unbounded / non-[-1, 1] Boxes:
    x_t is unbounded by nature (x_0 ~ N(0, I)), so the observation Boxes and, without action_bound,
    the action Box are (-inf, inf), and an action_bound of 2 is not [-1, 1]."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*Box (action|observation) space (minimum|maximum) value is .*infinity")
        warnings.filterwarnings("ignore", message=r".*recommend using a symmetric and normalized space")
        yield


# ---------------------------------------------------------------- one chain: checker, options, info


@pytest.mark.parametrize("render_mode", [None, "rgb_array"])
@pytest.mark.parametrize("action_bound", [None, 2.0])
@pytest.mark.parametrize("obs_mode", ["dict", "flat"])
def test_check_env_on_every_option(strict_warnings: None, obs_mode: str, action_bound: float | None, render_mode: str | None) -> None:
    """Through gymnasium.make, so the checker also remakes the env in every declared render mode and closes it."""
    for mdp in (make_mdp(), make_mdp((1, 3, 3))):
        env = gymnasium.make(ENV_ID, mdp=mdp, obs_mode=obs_mode, action_bound=action_bound, render_mode=render_mode)
        check_env(env.unwrapped)
        assert env.unwrapped.render_mode == render_mode


@pytest.mark.parametrize("obs_mode", ["dict", "flat"])
def test_single_env_info_rewards_and_observations_match_the_formulas(obs_mode: str) -> None:
    env = gymnasium.make(ENV_ID, mdp=make_mdp(), obs_mode=obs_mode)
    obs, info = env.reset(seed=4)
    assert info == {}
    x0 = DiffusionMDP(make_mdp()).reset(seed=4)[0]["x"]
    rng = np.random.default_rng(0)
    x = x0
    for t in range(T):
        if obs_mode == "flat":
            assert obs.shape == (3,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
            np.testing.assert_array_equal(obs, [*x, np.float32(t / T)])
        else:
            np.testing.assert_array_equal(obs["x"], x)
            assert obs["t"] == t
        a = rng.standard_normal(2).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(a)
        velocity, terminal = hand_costs(x, a, t)
        assert set(info) == {"velocity_cost", "terminal_cost"} and all(type(v) is float for v in info.values())
        assert info["velocity_cost"] == pytest.approx(velocity, rel=1e-6)
        assert info["terminal_cost"] == pytest.approx(terminal, rel=1e-6)
        assert (info["terminal_cost"] != 0) == (t == T - 1)
        assert reward == pytest.approx(-(TAU * velocity + terminal), rel=1e-6)  # costs positive-is-worse
        assert terminated == (t == T - 1) and not truncated
        x = a
    last = obs["x"] if obs_mode == "dict" else obs[:-1]
    np.testing.assert_array_equal(last, x)  # the last observation is x_T itself, at t = T
    assert (obs["t"] == T) if obs_mode == "dict" else (obs[-1] == 1.0)


@pytest.mark.parametrize("make", [lambda **kw: DiffusionMDP(make_mdp(), **kw), lambda **kw: DiffusionMDPVectorEnv(make_mdp(), num_envs=1, **kw)])
def test_action_bound_is_the_action_space_and_outside_actions_raise(make) -> None:
    env = make(action_bound=1.5)
    space = env.action_space
    assert (space.low == -1.5).all() and (space.high == 1.5).all()
    env.reset(seed=0)
    shape = space.shape
    env.step(np.full(shape, 1.5, np.float32))  # on the bound: inside
    for bad in (1.5001, np.nan):
        with pytest.raises(ValueError, match="action_bound"):
            env.step(np.full(shape, bad, np.float32))
    assert make().action_space.high.max() == np.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"obs_mode": "pixels"}, "obs_mode"),
        ({"action_bound": 0.0}, "action_bound"),
        ({"action_bound": -1.0}, "action_bound"),
        ({"action_bound": float("inf")}, "action_bound"),
        ({"action_bound": "1"}, "action_bound"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_options_are_value_errors(kwargs: dict, match: str) -> None:
    for make in (lambda: DiffusionMDP(**kwargs), lambda: DiffusionMDPVectorEnv(num_envs=2, **kwargs)):
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(ValueError, match="autoreset_mode"):
        DiffusionMDPVectorEnv(num_envs=2, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        DiffusionMDP(make_mdp((2, 3, 3)), render_mode="rgb_array")


# ---------------------------------------------------------------- rendering


def pixel(xy: tuple[float, float], size: int = 256, limit: float = 4.0) -> tuple[int, int]:
    """(row, column) of data point xy on the fixed [-limit, limit]^2 axes that fill the frame."""
    return int((limit - xy[1]) / (2 * limit) * size), int((xy[0] + limit) / (2 * limit) * size)


def is_blank(rgb: np.ndarray) -> bool:
    return bool((rgb >= 200).all())


def test_render_none_and_point_frames_on_fixed_axes() -> None:
    assert DiffusionMDP().render() is None
    vector = DiffusionMDPVectorEnv(make_mdp(), num_envs=4, render_mode="rgb_array", autoreset_mode="Disabled")
    vector.reset(seed=0)
    for target in [(2.0, 1.0), (-3.0, -2.5)]:
        vector.step(np.tile(np.float32(target), (4, 1)))
        frame = vector.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
        assert not is_blank(frame[pixel(target)]), "all chains sit at the target"
        assert is_blank(frame[pixel((-target[0], -target[1]))]), "nothing at the mirrored point"
    single = DiffusionMDP(make_mdp(), render_mode="rgb_array")
    single.reset(seed=0)
    single.step(np.float32([2.0, 2.0]))
    single.step(np.float32([-2.0, 2.0]))
    frame = single.render()
    first, second = frame[pixel((2.0, 2.0))].astype(int), frame[pixel((-2.0, 2.0))].astype(int)
    assert not is_blank(first) and second.sum() < first.sum(), "the chain so far, later steps darker"
    assert is_blank(frame[pixel((2.0, -2.0))])
    collected = gymnasium.make(ENV_ID, render_mode="rgb_array_list")  # Gymnasium reads make_env.metadata to wrap
    collected.reset(seed=0)
    collected.step(np.zeros(2, np.float32))
    assert [f.shape for f in collected.render()] == [(256, 256, 3)] * 2


def test_image_frames_are_grids_of_the_samples_mapped_to_uint8() -> None:
    env = DiffusionMDPVectorEnv(make_mdp((1, 3, 3)), num_envs=2, render_mode="rgb_array")
    env.reset(seed=0)
    images = np.linspace(-1.5, 1.5, 18, dtype=np.float32).reshape(2, 1, 3, 3)
    env.step(images)
    frame = env.render()
    u8 = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)  # float32, as the env computes
    expected = np.zeros((3 + 4, 2 * (3 + 2) + 2, 3), np.uint8)  # 2 images side by side, padding 2 (black)
    for j in range(2):
        expected[2:5, 2 + 5 * j : 5 + 5 * j] = u8[j, 0][..., None]
    np.testing.assert_array_equal(frame, expected)
    single = DiffusionMDP(make_mdp((3, 2, 2)), render_mode="rgb_array")
    x0 = single.reset(seed=1)[0]["x"]
    frame = single.render()  # the episode so far is x_0 alone: one image, no padding, (C, H, W) -> (H, W, C)
    np.testing.assert_array_equal(frame, np.round((np.clip(x0, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0))


# ---------------------------------------------------------------- batch: seeds, info, autoreset


def test_seed_lists_give_each_chain_the_single_env_draw() -> None:
    seeds = [3, 14, 15, 92]
    env = DiffusionMDPVectorEnv(make_mdp((1, 2, 2)), num_envs=4)
    singles = [DiffusionMDP(make_mdp((1, 2, 2))) for _ in seeds]
    obs, _ = env.reset(seed=seeds)
    for i, (s, single) in enumerate(zip(seeds, singles)):
        np.testing.assert_array_equal(obs["x"][i], single.reset(seed=s)[0]["x"])
    again, _ = env.reset()  # the per-chain generators go on, as each single env's does
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(again["x"][i], single.reset()[0]["x"])
    one, _ = env.reset(seed=7)  # an int: one generator draws the batch
    expected = torch.randn((4, 1, 2, 2), generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(one["x"], expected.numpy())
    for bad, match in [([1, 2, 3], "one seed per chain: 4 chains, got 3"), ("7", "seed must be")]:
        with pytest.raises(ValueError, match=match):
            env.reset(seed=bad)


def test_partial_reset_with_seeds_reseeds_only_the_masked_chains() -> None:
    env = DiffusionMDPVectorEnv(make_mdp(), num_envs=3, autoreset_mode=AutoresetMode.DISABLED)
    env.reset(seed=[0, 1, 2])
    env.step(np.ones((3, 2), np.float32))
    obs, _ = env.reset(seed=[10, 11, 12], options={"reset_mask": np.array([False, True, False])})
    np.testing.assert_array_equal(obs["t"], [1, 0, 1])
    np.testing.assert_array_equal(obs["x"][[0, 2]], np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(obs["x"][1], DiffusionMDP().reset(seed=11)[0]["x"])


def assert_same_info(a: dict, b: dict, where: str = "info") -> None:
    assert a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
    for key in a:
        if isinstance(a[key], dict):
            assert_same_info(a[key], b[key], f"{where}[{key!r}]")
        elif a[key].dtype == object:  # final_obs: one single-env observation (or None) per chain
            for u, v in zip(a[key], b[key]):
                assert (u is None) == (v is None)
                if u is not None:
                    for part in u:
                        np.testing.assert_array_equal(u[part], v[part])
        else:
            assert a[key].dtype == b[key].dtype, f"{where}[{key!r}]"
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where}[{key!r}]")


def rollout(env, seeds: list[int], disabled: bool) -> list:
    """Two episodes and then two steps more (so NEXT_STEP and SAME_STEP resets happen), fixed actions;
    DISABLED resets by hand: first chains 0 and 2, then chain 1, each with seeds."""
    rng = np.random.default_rng(0)
    out = [env.reset(seed=seeds)]
    for step in range(2 * T + 3):
        if disabled and step % T == 0 and step:
            out.append(env.reset(seed=[s + 10 for s in seeds], options={"reset_mask": np.array([True, False, True])}))
            out.append(env.reset(seed=[s + 20 for s in seeds], options={"reset_mask": np.array([False, True, False])}))
        out.append(env.step(rng.standard_normal((3, 2)).astype(np.float32)))
    return out


@pytest.mark.parametrize("mode", [None, AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_every_make_vec_mode_behaves_the_same(mode: AutoresetMode | None) -> None:
    """The batched env (vector entry point, the default of make_vec) step for step equals
    Gymnasium's SyncVectorEnv and AsyncVectorEnv over single envs: same seeds and actions, same
    observations, rewards, terminations, truncations and infos. mode None: nobody asks, the default."""
    mdp = make_mdp()
    kw = {} if mode is None else {"autoreset_mode": mode}
    vector_kw = {} if mode is None else {"vector_kwargs": {"autoreset_mode": mode}}
    envs = {
        "vector_entry_point": gymnasium.make_vec(ENV_ID, num_envs=3, mdp=mdp, **kw),
        "sync": gymnasium.make_vec(ENV_ID, num_envs=3, mdp=mdp, vectorization_mode="sync", **vector_kw),
        "async": gymnasium.make_vec(
            ENV_ID, num_envs=3, mdp=mdp, vectorization_mode="async",
            vector_kwargs={"context": "fork", **vector_kw.get("vector_kwargs", {})},  # fork: no re-import of torch
        ),
    }
    assert isinstance(envs["vector_entry_point"], DiffusionMDPVectorEnv)
    expected = mode or AutoresetMode.NEXT_STEP
    assert all(env.metadata["autoreset_mode"] is expected for env in envs.values())
    runs = {}
    for name, env in envs.items():
        runs[name] = rollout(env, [5, 6, 7], expected is AutoresetMode.DISABLED)
        env.close()
    reference = runs.pop("sync")
    for name, run in runs.items():
        assert len(run) == len(reference)
        for got, want in zip(run, reference):
            assert len(got) == len(want)
            for part, (u, v) in enumerate(zip(got, want)):
                if isinstance(u, dict) and part == len(got) - 1:
                    assert_same_info(u, v, f"{name} info")
                elif isinstance(u, dict):
                    assert u.keys() == v.keys()
                    for key in v:
                        assert u[key].dtype == v[key].dtype
                        np.testing.assert_array_equal(u[key], v[key], err_msg=f"{name} obs[{key!r}]")
                else:
                    assert u.dtype == v.dtype
                    np.testing.assert_array_equal(u, v, err_msg=name)
    steps = [r for r in reference if len(r) == 5]
    assert sum(r[2].sum() for r in steps) == 3 * 2, "two episodes of 3 chains end in the rollout"


def test_next_step_and_same_step_autoreset_semantics() -> None:
    mdp = make_mdp()
    env = DiffusionMDPVectorEnv(mdp, num_envs=2)
    singles = [DiffusionMDP(mdp) for _ in range(2)]
    env.reset(seed=[1, 2])
    for single, s in zip(singles, [1, 2]):
        single.reset(seed=s)
    for _ in range(T):
        obs, rewards, terminated, _, _ = env.step(np.full((2, 2), 0.5, np.float32))
    assert terminated.all() and (obs["t"] == T).all() and (obs["x"] == 0.5).all()  # NEXT_STEP: x_T returned itself
    obs, rewards, terminated, _, info = env.step(np.full((2, 2), 9.0, np.float32))  # action ignored
    assert (obs["t"] == 0).all() and not terminated.any() and (rewards == 0).all() and info == {}
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(obs["x"][i], single.reset()[0]["x"])
    same = DiffusionMDPVectorEnv(mdp, num_envs=2, autoreset_mode=AutoresetMode.SAME_STEP)
    same.reset(seed=0)
    for _ in range(T):
        obs, rewards, terminated, _, info = same.step(np.full((2, 2), 0.5, np.float32))
    assert terminated.all() and (obs["t"] == 0).all() and info["_final_obs"].all()
    assert all((f["x"] == 0.5).all() and f["t"] == T for f in info["final_obs"])
    _, terminal = hand_costs(np.zeros(2), np.full(2, 0.5), T - 1)
    np.testing.assert_allclose(info["final_info"]["terminal_cost"], terminal, rtol=1e-6)
    np.testing.assert_allclose(rewards, -(TAU * info["final_info"]["velocity_cost"] + terminal), rtol=1e-6)
    disabled = DiffusionMDPVectorEnv(mdp, num_envs=2, autoreset_mode=AutoresetMode.DISABLED)
    disabled.reset(seed=0)
    for _ in range(T):
        disabled.step(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="reset it before stepping"):
        disabled.step(np.zeros((2, 2), np.float32))


def test_vector_info_costs_match_the_formulas_and_flat_obs() -> None:
    env = gymnasium.make_vec(ENV_ID, num_envs=3, mdp=make_mdp(), obs_mode="flat", action_bound=3.0)
    assert env.single_observation_space.shape == (3,) and env.single_action_space.high.max() == 3.0
    obs, _ = env.reset(seed=[0, 1, 2])
    rng = np.random.default_rng(1)
    for t in range(T):
        np.testing.assert_array_equal(obs[:, -1], np.float32(t / T))
        a = rng.uniform(-3, 3, (3, 2)).astype(np.float32)
        next_obs, rewards, _, _, info = env.step(a)
        hand = np.array([hand_costs(obs[i, :2], a[i], t) for i in range(3)])
        assert info["velocity_cost"].dtype == np.float64 and info["_velocity_cost"].all() and info["_terminal_cost"].all()
        np.testing.assert_allclose(info["velocity_cost"], hand[:, 0], rtol=1e-6)
        np.testing.assert_allclose(info["terminal_cost"], hand[:, 1], rtol=1e-6)
        np.testing.assert_allclose(rewards, -(TAU * hand[:, 0] + hand[:, 1]), rtol=1e-6)
        np.testing.assert_array_equal(next_obs[:, :2], a)
        obs = next_obs


# ---------------------------------------------------------------- a trained run through gymnasium.make


def test_make_from_a_trained_run_uses_its_mdp(tmp_path: Path) -> None:
    from diffrl.app import pipeline
    from diffrl.app.config import load_config

    tiny = [
        "net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=500", "data.n_eval=100", "threads=1",
        "pretrain.steps=5", "pretrain.batch_size=32", "pretrain.eval_horizon=5", "train.loop.steps=3",
        "train.batch_size=16", "train.loop.eval_every=3", "train.loop.checkpoint_every=3", "train.loop.log_every=1",
    ]
    pipeline.pretrain(load_config("8gaussians", tiny), tmp_path / "teacher", progress=False)
    pipeline.train(load_config("8gaussians", [*tiny, f"train.teacher={tmp_path / 'teacher'}"]), tmp_path / "dxmi", progress=False)
    run = pipeline.from_run(tmp_path / "dxmi")
    env = gymnasium.make(ENV_ID, run=str(tmp_path / "dxmi"))
    mdp = env.unwrapped.mdp
    saved = run.mdp.state_dict()
    assert saved.keys() == mdp.state_dict().keys() and any("energy" in k for k in saved)
    assert all(torch.equal(v, saved[k]) for k, v in mdp.state_dict().items())
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    tau, scale_sq, energy = run.config.train.tau_velocity, run.mdp.velocity_scale_sq, run.mdp.reward.energy_network
    for t in range(T):
        a = rng.standard_normal(2).astype(np.float32)
        x = obs["x"]
        obs, reward, _, _, info = env.step(a)
        velocity = float(np.mean((a.astype(np.float64) - x) ** 2) / (2 * float(scale_sq[t])))
        with torch.no_grad():
            terminal = float(energy(torch.as_tensor(a)[None])[0]) if t == T - 1 else 0.0  # the learned E(x_T)
        assert info["velocity_cost"] == pytest.approx(velocity, rel=1e-5)
        assert info["terminal_cost"] == pytest.approx(terminal, rel=1e-5, abs=1e-7)
        assert reward == pytest.approx(-(tau * velocity + terminal), rel=1e-5, abs=1e-7)
    vector = gymnasium.make_vec(ENV_ID, num_envs=2, run=tmp_path / "dxmi", which="last")
    assert vector.mdp.horizon == T and vector.num_envs == 2
    with pytest.raises(ValueError, match="teacher run"):
        gymnasium.make(ENV_ID, run=tmp_path / "teacher")
    with pytest.raises(ValueError, match="not both"):
        gymnasium.make(ENV_ID, run=tmp_path / "dxmi", mdp=make_mdp())


def test_imports_stay_light() -> None:
    code = (
        "import sys, gymnasium, diffrl.envs\n"
        "loaded = lambda p: sorted(m for m in sys.modules if m == p or m.startswith(p + '.'))\n"
        "assert not loaded('diffrl.app') and not loaded('tianshou') and not loaded('matplotlib'), sys.modules.keys()\n"
        "env = gymnasium.make(diffrl.envs.ENV_ID)\n"
        "assert loaded('diffrl.app') == ['diffrl.app', 'diffrl.app.envs'], loaded('diffrl.app')\n"
        "env.reset(seed=0); env.step(env.action_space.sample())\n"
        "assert not loaded('matplotlib') and not loaded('tianshou')\n"
        "diffrl.envs.DiffusionMDPTianshouEnv\n"
        "assert loaded('tianshou')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- Tianshou


def shrink_policy(action_space):
    """A stock tianshou Policy acting a = x_t / 2, unbounded (no clip to [-1, 1])."""
    from tianshou.algorithm.algorithm_base import Policy
    from tianshou.data import Batch

    class Shrink(Policy):
        def forward(self, batch, state=None, **kwargs):
            return Batch(act=0.5 * batch.obs.x, state=state)

    return Shrink(action_space=action_space, action_bound_method=None)


def chain_return(x0: np.ndarray) -> float:
    """The return of the chain x_t = x_0 / 2^t, by the formulas."""
    xs = [x0.astype(np.float64) / 2**t for t in range(T + 1)]
    costs = [hand_costs(xs[t], xs[t + 1], t) for t in range(T)]
    return -sum(TAU * v + c for v, c in costs)


def test_tianshou_collector_collects_episodes_whose_returns_match_the_hand_computation() -> None:
    from tianshou.data import Collector, VectorReplayBuffer

    from diffrl.envs.tianshou_env import DiffusionMDPTianshouEnv

    env = DiffusionMDPTianshouEnv(make_mdp(), num_envs=3)
    assert env.seed(20) == [[20], [21], [22]]
    collector = Collector(shrink_policy(env.action_space[0]), env, VectorReplayBuffer(60, 3))
    collector.reset()
    stats = collector.collect(n_episode=5)  # 3 chains end together, then 2 more episodes on chains 1 and 2 only
    singles = [DiffusionMDP(make_mdp()) for _ in range(3)]
    first = [single.reset(seed=20 + i)[0]["x"] for i, single in enumerate(singles)]
    second = [singles[i].reset()[0]["x"] for i in (1, 2)]
    expected = sorted(chain_return(x0) for x0 in first + second)
    assert stats.n_collected_episodes == 5 and (stats.lens == T).all()
    np.testing.assert_allclose(sorted(stats.returns), expected, rtol=1e-5)
    batch = collector.buffer.sample(0)[0]  # every stored transition
    np.testing.assert_allclose(batch.obs_next.x, 0.5 * batch.obs.x, rtol=0)
    np.testing.assert_array_equal(batch.obs_next.t, batch.obs.t + 1)
    np.testing.assert_allclose(batch.rew, -(TAU * batch.info.velocity_cost + batch.info.terminal_cost), rtol=1e-6)


def test_tianshou_flat_random_collection_and_subset_reset_step() -> None:
    from tianshou.algorithm.algorithm_base import RandomActionPolicy
    from tianshou.data import Collector, VectorReplayBuffer

    from diffrl.envs.tianshou_env import DiffusionMDPTianshouEnv

    env = DiffusionMDPTianshouEnv(make_mdp(), num_envs=4, obs_mode="flat", action_bound=1.0)
    assert len(env) == env.env_num == 4 and env.action_space[0].high.max() == 1.0
    env.seed(3)
    collector = Collector(RandomActionPolicy(env.action_space[0]), env, VectorReplayBuffer(40, 4))
    collector.reset()
    collector.collect(n_step=8)
    batch = collector.buffer.sample(0)[0]
    assert len(batch) == 8 and (np.abs(batch.act) <= 1).all()
    for obs, act, rew, info in zip(batch.obs, batch.act, batch.rew, batch.info):
        t = int(round(obs[-1] * T))
        velocity, terminal = hand_costs(obs[:-1], act, t)
        assert rew == pytest.approx(-(TAU * velocity + terminal), rel=1e-5)
        assert info.velocity_cost == pytest.approx(velocity, rel=1e-5)
    np.testing.assert_array_equal(batch.obs_next[:, :-1], batch.act)
    # reset of a subset with seeds = reset of those chains only, each drawing the single env's x_0
    obs, info = env.reset(env_id=[1, 3], seed=[7, 8])
    assert obs.shape == (2, 3) and len(info) == 2
    np.testing.assert_array_equal(obs[:, :-1], [DiffusionMDP(make_mdp()).reset(seed=s)[0]["x"] for s in (7, 8)])
    obs, rew, terminated, truncated, info = env.step(np.zeros((2, 2), np.float32), [1, 3])
    assert [i["env_id"] for i in info] == [1, 3] and (obs[:, -1] == np.float32(1 / T)).all()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((3, 2), np.float32), [1, 3])
    for _ in range(T - 1):
        env.step(np.zeros((2, 2), np.float32), [1, 3])
    with pytest.raises(ValueError, match="reset it before stepping"):
        env.step(np.zeros((2, 2), np.float32), [1, 3])
    env.close()
    with pytest.raises(AssertionError, match="cannot be called after close"):
        env.reset()
