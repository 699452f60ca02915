"""Built-in target densities against torch.distributions, and the path importance weights
(E[w] = Z) of diffrl.densities on a chain whose policy is not the reference walk."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from diffrl.densities import funnel, gmm40, importance_log_weights, scaled
from diffrl.mdp import ChainMDP, OriginStart
from diffrl.policy import GaussianStepPolicy, rollout
from diffrl.rewards import FixedReward


def test_gmm40_and_funnel_log_densities_and_samples():
    target = gmm40()
    means = target.sample(4000, torch.Generator().manual_seed(0))
    assert means.abs().max() < 46 and means.abs().max() > 30  # means on [-40, 40]^2, std 1.31
    x = 40 * torch.rand(50, 2) - 20
    # independent: the same mixture through torch.distributions, means from the seed-0 draw
    torch.manual_seed(0)
    mu = (torch.rand(40, 2) - 0.5) * 80
    std = float(nn.functional.softplus(torch.tensor(1.0)))
    mix = MixtureSameFamily(Categorical(torch.ones(40)), Independent(Normal(mu, std), 1))
    torch.testing.assert_close(target.log_prob(x), mix.log_prob(x))
    f = funnel(10)
    y = f.sample(7, torch.Generator().manual_seed(1))
    v = y[:, 0]
    expected = Normal(0.0, 3.0).log_prob(v) + Normal(0.0, torch.exp(v / 2)[:, None]).log_prob(y[:, 1:]).sum(1)
    torch.testing.assert_close(f.log_prob(y), expected)
    s = scaled(f, 4.0)
    torch.testing.assert_close(s.log_prob(y / 4.0), f.log_prob(y) + 10 * math.log(4.0))


class Linear(nn.Module):
    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gain", gain.float())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.gain[t][:, None] * x + 0.3


def test_importance_weights_estimate_the_normaliser():
    """A linear-Gaussian chain that is not the reference walk (gains 0.9, offset 0.3, the walk's
    noise); log p~ = log N(0, 0.5 I) + 1.5: logmeanexp(log w) estimates log Z = 1.5 from both starts."""
    scales, dim = torch.tensor([0.6, 0.5, 0.4]), 2
    policy = GaussianStepPolicy(Linear(torch.full((3,), 0.9)), scales * math.sqrt(2.0), (dim,))
    log_p = lambda x: Normal(0.0, math.sqrt(0.5)).log_prob(x).sum(1) + 1.5  # noqa: E731
    for start in (None, OriginStart((dim,))):
        mdp = ChainMDP(FixedReward(log_p, 1.0), (dim,), scales, 0.05, avr_decay=None, tau_entropy=0.1, start=start)
        g = torch.Generator().manual_seed(0)
        chain = rollout(policy, mdp.reset(400_000, g), 3, g)
        log_w = importance_log_weights(policy, mdp, chain, log_p)
        estimate = float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))
        assert abs(estimate - 1.5) < 0.02, estimate
        assert float(log_w.mean()) < 1.5 - 0.01  # the ELBO lies below log Z
