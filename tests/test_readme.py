"""The README's two Python examples (swap the algorithm, swap the reward) run as written and learn."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from diffrl import ChainMDP, DDPM, EnergyReward, TimeMLP
from diffrl.data import BatchSampler, toy_data
from diffrl.nets import AtTime

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _policy():
    return DDPM(TimeMLP(2, 2, hidden=32, depth=2, time_dim=16)).step_policy(4, (2,), fix_last=False, last_sigma=0.05)


def test_readme_swapping_the_algorithm_runs_the_dxmi_loop() -> None:
    torch.manual_seed(0)
    policy = _policy()
    reward = EnergyReward(AtTime(TimeMLP(2, 1, hidden=32, depth=2, time_dim=16), 0), lr=1e-3)
    mdp = ChainMDP(reward, (2,), policy.sigma.detach(), tau_velocity=0.1)
    scope = {"policy": policy, "mdp": mdp, "data_batches": BatchSampler(toy_data("8gaussians", 1000, 0) / 2, 64, 0)}
    exec(_blocks()[0], scope)
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = {}
    for _ in range(3):
        metrics = scope["loop"].step()
    assert {"loss_reinforce", "loss_energy"} <= metrics.keys()
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters())), "the README agent must train the policy"


def test_readme_swapping_the_reward_moves_samples_to_the_fixed_reward() -> None:
    torch.manual_seed(0)
    policy = _policy()
    value = TimeMLP(2, 1, hidden=32, depth=2, time_dim=16)
    scope = {"policy": policy, "value": value, "torch": torch}
    exec(_blocks()[1], scope)
    mean = policy.sample(2000)[-1].mean(0)
    assert (mean - torch.tensor([2.0, 0.0])).norm() < 0.5
