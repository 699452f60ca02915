"""TorchRL side: the env's local seeding, the actor and value operator against the policy and hand
computations, GAE and SAC on rollouts, DxDP's LossModules against the plain-tensor fast path,
SoftUpdate, set_keys, the chain <-> rollout conversions, the TorchRL PPO agent, and the examples."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs
from torchrl.modules import ValueOperator
from torchrl.objectives import SACLoss, SoftUpdate
from torchrl.objectives.value import GAE

from diffrl.agent import Agent
from diffrl.app.config import load_config
from diffrl.agents.losses import SamplerLoss, ValueTDLoss, time_cost
from diffrl.agents.torchrl import (
    DxDPSamplerLoss, DxDPValueLoss, TorchRLPPO, TorchRLPPOConfig, probabilistic_actor, torchrl_ppo, value_operator,
)
from diffrl.dxmi import DxMI
from diffrl.envs.torchrl_env import DiffusionMDPEnv, chain_tensordict, rollout_chain, step_policy_module
from diffrl.mdp import ChainMDP, TeacherAnchor
from diffrl.nets import TimeMLP
from diffrl.policy import GaussianStepPolicy
from diffrl.rewards import FixedReward

REPO = Path(__file__).resolve().parent.parent
T, D, B = 3, 2, 8
SCALES = torch.tensor([0.8, 0.5, 0.3])  # s_t
SIGMA = torch.tensor([0.7, 0.4, 0.1])
TAU_V, TAU_E = 0.3, 0.2
CENTRE = torch.tensor([0.5, -0.25])


def cost(x: torch.Tensor) -> torch.Tensor:
    """E(x) = |x - CENTRE|^2 / 2 over the last dim."""
    return 0.5 * (x - CENTRE).pow(2).sum(-1)


def make_mdp(event_shape: tuple[int, ...] = (D,)) -> ChainMDP:
    reward = FixedReward(lambda x: -cost(x.flatten(1)[:, :D]))
    return ChainMDP(reward, event_shape, SCALES, tau_velocity=TAU_V, avr_decay=None, tau_entropy=TAU_E)


def make_policy(seed: int = 1) -> GaussianStepPolicy:
    torch.manual_seed(seed)
    return GaussianStepPolicy(TimeMLP(D, D, hidden=16, depth=2, time_dim=8), SIGMA, (D,))


def make_value(seed: int = 0) -> TimeMLP:
    torch.manual_seed(seed)
    return TimeMLP(D, 1, hidden=16, depth=2, time_dim=8)


def rollout(policy: GaussianStepPolicy, mdp: ChainMDP, seed: int = 0, batch: int = B) -> TensorDict:
    env = DiffusionMDPEnv(mdp, batch, seed=seed)
    return env.rollout(T, step_policy_module(policy, env.generator))


# ---------------------------------------------------------------- the env and its seeding


def test_env_specs_and_seeding_are_local() -> None:
    env = DiffusionMDPEnv(make_mdp(), batch_size=4, seed=0)
    policy = make_policy()
    global_state = torch.get_rng_state()
    check_env_specs(env, seed=3)
    env.set_seed(11)
    first = env.rollout(T, step_policy_module(policy, env.generator))
    env.set_seed(11)
    again = env.rollout(T, step_policy_module(policy, env.generator))
    assert torch.equal(torch.get_rng_state(), global_state), "seeding, resets and rollouts moved the global RNG"
    assert torch.equal(first["next", "x"], again["next", "x"]) and torch.equal(first["x"], again["x"])
    env.set_seed(12)
    assert not torch.allclose(env.rollout(T, step_policy_module(policy, env.generator))["x"], first["x"])
    torch.manual_seed(5)  # unseeded envs take their seed from one global draw each at construction
    a, b = DiffusionMDPEnv(make_mdp(), 4).reset()["x"], DiffusionMDPEnv(make_mdp(), 4).reset()["x"]
    assert not torch.equal(a, b)
    torch.manual_seed(5)
    assert torch.equal(DiffusionMDPEnv(make_mdp(), 4).reset()["x"], a)
    check_env_specs(DiffusionMDPEnv(make_mdp((1, 2, 2)), batch_size=3, seed=0))


def test_step_policy_module_with_unequal_steps_equals_the_policy() -> None:
    """Rows at different t (after a partial reset) take the policy's tensor-t path: same step as policy(x, t, noise)."""
    policy = make_policy()
    x, t = torch.randn(5, D), torch.tensor([[0], [2], [1], [0], [2]])
    g = torch.Generator().manual_seed(3)
    td = step_policy_module(policy, g)(TensorDict(x=x, t=t, batch_size=[5]))
    noise = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(td["action"], policy(x, t.squeeze(-1), noise), rtol=0, atol=0)


def test_chain_tensordict_is_the_rollout_and_rollout_chain_inverts_it() -> None:
    policy, mdp = make_policy(), make_mdp()
    td = rollout(policy, mdp, seed=4)
    chain = rollout_chain(td)
    torch.testing.assert_close(chain, policy.sample(B, generator=torch.Generator().manual_seed(4)), rtol=0, atol=0)
    rebuilt = chain_tensordict(mdp, chain)
    assert set(rebuilt.keys(True, True)) == set(td.keys(True, True))
    for key in td.keys(True, True):
        torch.testing.assert_close(rebuilt[key], td[key], rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
    with pytest.raises(ValueError, match="whole chain"):
        rollout_chain(torch.cat([td[:, 1:], td[:, :1]], dim=1))


# ---------------------------------------------------------------- actor and value operator


def test_actor_log_prob_is_the_policy_log_prob_at_every_step_and_batch_shape() -> None:
    policy, mdp = make_policy(), make_mdp()
    actor = probabilistic_actor(policy)
    td = rollout(policy, mdp)  # [B, T]
    out = actor(td.select("x", "t").clone())
    assert actor.log_prob_keys == ["action_log_prob"] and out["action_log_prob"].shape == (B, T)
    assert out["action_log_prob"].requires_grad
    torch.testing.assert_close(out["action_log_prob"], policy.log_prob(out["action"], td["x"], td["t"]), rtol=1e-5, atol=1e-5)
    # the density by hand: N(mean, sigma_t^2 I) over D dims
    with torch.no_grad():
        mean = policy.mean(td["x"], td["t"])
        sigma = SIGMA[td["t"].squeeze(-1)]
        z = (out["action"] - mean) / sigma[..., None]
        hand = -0.5 * z.pow(2).sum(-1) - D * sigma.log() - 0.5 * D * math.log(2 * math.pi)
    torch.testing.assert_close(out["action_log_prob"].detach(), hand, rtol=1e-5, atol=1e-4)
    # the next-states, terminal (t = T) in the last column: centred on x with the last sigma, finite
    nxt = actor(td["next"].select("x", "t").clone())
    assert torch.isfinite(nxt["action_log_prob"]).all() and bool(td["next", "t"][:, -1].eq(T).all())
    torch.testing.assert_close(nxt["loc"][:, -1], td["next", "x"][:, -1], rtol=0, atol=0)
    torch.testing.assert_close(nxt["scale"][:, -1], SIGMA[-1].expand(B, D))


def test_actor_with_the_env_generator_reproduces_policy_sample() -> None:
    policy, mdp = make_policy(), make_mdp()
    env = DiffusionMDPEnv(mdp, B, seed=9)
    with torch.no_grad():
        td = env.rollout(T, probabilistic_actor(policy, generator=env.generator))
    torch.testing.assert_close(rollout_chain(td), policy.sample(B, generator=torch.Generator().manual_seed(9)), rtol=0, atol=0)


def test_value_operator_is_the_soft_value_on_any_batch_shape() -> None:
    mdp, value = make_mdp(), make_value()
    op = value_operator(value, mdp)
    x, t = torch.randn(4, T + 1, D), torch.arange(T + 1).expand(4, T + 1)[..., None]
    out = op(TensorDict(x=x, t=t, batch_size=[4, T + 1]))["state_value"]
    assert out.shape == (4, T + 1, 1)
    with torch.no_grad():
        for s in range(T + 1):
            expected = cost(x[:, s]) if s == T else value(x[:, s], torch.full((4,), s))
            torch.testing.assert_close(out[:, s, 0], expected, rtol=1e-6, atol=1e-6)
    assert [p for p in op.parameters()] == [p for p in value.parameters()]  # the MDP's reward is not the operator's


def test_gae_on_a_rollout_is_the_monte_carlo_advantage_at_lambda_one() -> None:
    """gamma = lambda = 1 and the chain terminates at T: advantage_t = sum_{k >= t} r_k - V(x_t, t)."""
    policy, mdp, value = make_policy(), make_mdp(), make_value()
    td = rollout(policy, mdp)
    out = GAE(gamma=1.0, lmbda=1.0, value_network=value_operator(value, mdp))(td.clone())  # default: vmapped value calls
    to_go = td["next", "reward"].squeeze(-1).flip(1).cumsum(1).flip(1)
    with torch.no_grad():
        v = torch.stack([value(td["x"][:, s], torch.full((B,), s)) for s in range(T)], 1)
    torch.testing.assert_close(out["advantage"].squeeze(-1), to_go - v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["value_target"].squeeze(-1), to_go, rtol=1e-5, atol=1e-5)


def test_sac_loss_on_rollouts_with_terminal_next_states_is_finite() -> None:
    """Stock SACLoss samples the actor at the terminal next-states (t = T): every term finite, and the
    actor's loss has gradient on the policy."""
    policy, mdp = make_policy(), make_mdp()
    torch.manual_seed(0)
    q_net = TimeMLP(2 * D, 1, hidden=16, depth=2, time_dim=8)
    qvalue = ValueOperator(lambda x, t, a: q_net(torch.cat([x, a], -1).flatten(0, -2), t.flatten()).reshape(t.shape),
                           in_keys=["x", "t", "action"])
    qvalue.q_net = q_net  # register its parameters
    loss = SACLoss(probabilistic_actor(policy), qvalue, num_qvalue_nets=2, target_entropy=-float(D))
    SoftUpdate(loss, tau=0.01)  # its target Q-networks have an updater
    td = rollout(policy, mdp).reshape(-1)
    assert bool(td["next", "t"].eq(T).any())
    out = loss(td)
    for key in ("loss_actor", "loss_qvalue", "loss_alpha"):
        assert torch.isfinite(out[key]), key
    grads = torch.autograd.grad(out["loss_actor"], [policy.log_sigma_train])
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0


# ---------------------------------------------------------------- DxDP's LossModules against the fast path


def test_value_loss_module_equals_the_fast_path_bitwise() -> None:
    """Same data, same functions: the loss and the value's gradient are bitwise those of ValueTDLoss at every
    step of DxDP's sweep (the dense value operator evaluates the same rows and picks by torch.where), for
    running costs and for a time cost."""
    policy, mdp, value = make_policy(), make_mdp(), make_value()
    td = rollout(policy, mdp)
    params = list(value.parameters())
    for fixed in (None, time_cost("sigmoid", T)):
        module = DxDPValueLoss(value_operator(value, mdp), probabilistic_actor(policy), mdp, fixed_time_cost=fixed)
        fast = ValueTDLoss(value, mdp, fixed_time_cost=fixed)
        for s in reversed(range(T)):
            out = module(td[:, s])
            ref = fast(td["x"][:, s], td["action"][:, s], torch.full((B,), s), policy.log_sigma.detach())
            assert torch.equal(out["loss_value"], ref["loss_value"])
            for g, h in zip(torch.autograd.grad(out["loss_value"], params), torch.autograd.grad(ref["loss_value"], params)):
                assert torch.equal(g, h)
        whole = module(td)["loss_value"]  # [B, T] at once: the mean of the per-step losses
        torch.testing.assert_close(whole, torch.stack([module(td[:, s])["loss_value"] for s in range(T)]).mean())


def _both_sampler_losses(policy, value, mdp):
    """TorchRL's DxDPSamplerLoss and the fast SamplerLoss on the same rollout's states and the same
    noise: (states, its output, its gradients w.r.t. the policy's then the value's parameters, the
    fast output, the fast gradients w.r.t. the policy's)."""
    states = rollout(policy, mdp).reshape(-1).select("x", "t")
    module = DxDPSamplerLoss(probabilistic_actor(policy), value_operator(value, mdp), mdp)
    params = list(policy.parameters())
    torch.manual_seed(5)
    out = module(states)
    grads = torch.autograd.grad(out["loss_sampler"], params + list(value.parameters()), allow_unused=True)
    torch.manual_seed(5)
    ref = SamplerLoss(policy, value, mdp)(states["x"], states["t"].squeeze(-1))
    return states, out, grads, ref, torch.autograd.grad(ref["loss_sampler"], params)


def test_sampler_loss_module_equals_the_fast_path() -> None:
    """Same states and noise: loss and policy gradients of SamplerLoss to 1e-6 (in practice bitwise; the dense
    value operator evaluates V on all states where the fast path indexes the non-terminal ones, which may
    round differently). Gradient reaches every policy parameter and none reaches the value's."""
    policy, mdp, value = make_policy(), make_mdp(), make_value()
    states, out, grads, ref, ref_grads = _both_sampler_losses(policy, value, mdp)
    n = len(ref_grads)
    torch.testing.assert_close(out["loss_sampler"], ref["loss_sampler"], rtol=1e-6, atol=1e-7)
    for g, h in zip(grads, ref_grads):
        torch.testing.assert_close(g, h, rtol=1e-6, atol=1e-7)
        assert g.abs().sum() > 0
    assert all(g is None for g in grads[n:])
    # the named terms add up to the loss
    torch.testing.assert_close(out["cost_to_go"] + out["velocity_cost"] - out["entropy_bonus"], out["loss_sampler"].detach())
    torch.testing.assert_close(out["entropy_bonus"], TAU_E * SIGMA.log()[states["t"].squeeze(-1)].mean())


def test_sampler_loss_module_with_an_anchor_takes_its_expected_cost_like_the_fast_path() -> None:
    """With a teacher anchor both sampler losses score the anchor in expectation over the step's noise
    (``TeacherAnchor.expected``), so loss and policy gradients agree as they do without one."""
    policy, value = make_policy(), make_value()
    plain = make_mdp()
    mdp = ChainMDP(plain.reward, (D,), SCALES, tau_velocity=TAU_V, avr_decay=None, tau_entropy=TAU_E,
                   anchor=TeacherAnchor(make_policy(seed=2)), tau_anchor=0.3)
    _, out, grads, ref, ref_grads = _both_sampler_losses(policy, value, mdp)
    torch.testing.assert_close(out["loss_sampler"], ref["loss_sampler"], rtol=1e-6, atol=1e-7)
    for g, h in zip(grads, ref_grads):
        torch.testing.assert_close(g, h, rtol=1e-6, atol=1e-7)


def test_set_keys_renames_what_the_losses_read() -> None:
    policy, mdp, value = make_policy(), make_mdp(), make_value()
    td = rollout(policy, mdp)[:, 1]
    module = DxDPValueLoss(value_operator(value, mdp), probabilistic_actor(policy), mdp)
    expected = module(td)["loss_value"]
    module.set_keys(action="x_next")
    with pytest.raises(KeyError):
        module(td)
    renamed = td.clone(False)
    renamed.rename_key_("action", "x_next")
    assert torch.equal(module(renamed)["loss_value"], expected)
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        module.set_keys(reward="r")


def test_soft_update_moves_the_target_value_by_its_rate() -> None:
    policy, mdp, value = make_policy(), make_mdp(), make_value()
    module = DxDPValueLoss(value_operator(value, mdp), probabilistic_actor(policy), mdp, delay_value=True)
    updater = SoftUpdate(module, tau=0.25)
    before = module.target_value_network_params.clone()
    with torch.no_grad():
        for p in value.parameters():
            p.add_(torch.randn_like(p))
    updater.step()
    source, target = module.value_network_params, module.target_value_network_params
    for key in target.keys(True, True):
        torch.testing.assert_close(target[key], before[key] + 0.25 * (source[key] - before[key]), rtol=1e-6, atol=1e-7)
        assert not torch.equal(target[key], source[key])
    # the target scores x_{t+1}: the TD target with the target copy, by hand
    td = rollout(policy, mdp)[:, 0]
    lagged = make_value()
    lagged.load_state_dict({k: target[tuple(("module.value." + k).split("."))] for k in lagged.state_dict()})
    hand = ValueTDLoss(value, mdp, target_value=lagged).td_target(td["x"], td["action"], td["t"].squeeze(-1), policy.log_sigma.detach())
    torch.testing.assert_close(module(td)["td_target"], hand.mean())


# ---------------------------------------------------------------- TorchRL PPO as a DxMI agent


def test_torchrl_ppo_objective_and_entropy_scale() -> None:
    """"return" is J per chain (step rewards + tau_entropy sum_t log sigma_t, by hand); the entropy bonus
    is tau_entropy / D times the analytic entropy, D (log sigma_t + log(2 pi e) / 2), averaged over steps."""
    policy, mdp = make_policy(), make_mdp()
    agent = TorchRLPPO(policy, mdp, make_value(), TorchRLPPOConfig(epochs=1))
    assert isinstance(agent, Agent)
    chain = policy.sample(B, generator=torch.Generator().manual_seed(0))
    steps = torch.arange(T)[:, None].expand(T, B)
    j = (mdp.step_reward(chain[:-1], chain[1:], steps).sum(0) + TAU_E * SIGMA.log().sum()).mean()
    entropy = (D * (SIGMA.log() + 0.5 * math.log(2 * math.pi * math.e))).mean()
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = agent.update(chain)
    torch.testing.assert_close(metrics["return"], j, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["loss_entropy"], -TAU_E / D * entropy, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, p) for a, p in zip(before, policy.parameters()))


def test_torchrl_ppo_factory_reads_train_ppo_and_trains_in_the_dxmi_loop() -> None:
    policy, mdp = make_policy(), make_mdp()
    config = load_config("8gaussians", ["net.hidden=16", "net.depth=2", "net.time_dim=8", "train.ppo.lr_sampler=3e-4", "train.ppo.epochs=2",
                                         "train.ppo.clip=0.1"])
    agent = torchrl_ppo(policy, mdp, config)
    assert (agent.config.lr_sampler, agent.config.epochs, agent.config.clip_epsilon) == (3e-4, 2, 0.1)
    config.train.agent_options = {"epochs": 3}
    assert torchrl_ppo(policy, mdp, config).config.epochs == 3
    config.train.agent_options = {"epoch": 3}
    with pytest.raises(ValueError, match="train.agent_options: TorchRLPPOConfig has no option epoch; it has"):
        torchrl_ppo(policy, mdp, config)
    config.train.agent_options = {}
    assert agent.policy_optimizer.param_groups[0]["lr"] == 3e-4
    dxmi = DxMI(agent, mdp, batch_size=16)
    for _ in range(2):
        metrics = dxmi.step()
    assert all(torch.isfinite(v) for v in metrics.values())
    agent.load_training_state(agent.training_state())
    with pytest.raises(ValueError, match="points"):
        torchrl_ppo(policy, make_mdp((1, 2, 1)), config)


# ---------------------------------------------------------------- examples


def run_example(name: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, f"examples/{name}.py", "--quick"], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_torchrl_dxdp_example_improves_sw() -> None:
    report = run_example("torchrl_dxdp")
    assert report["sw_after"] < 0.9 * report["sw_before"], report


@pytest.mark.slow
def test_torchrl_ppo_example_improves_the_objective() -> None:
    report = run_example("torchrl_ppo")
    assert report["objective_after"] > report["objective_before"], report
