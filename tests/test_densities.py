"""Built-in target densities against torch.distributions, and the path importance weights
(E[w] = Z) of diffrl.densities on a chain whose policy is not the reference walk."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from diffrl.densities import TARGETS, GaussianStart, funnel, gmm25, gmm40, importance_log_weights, manywell, scaled
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



def test_gmm25_against_torch_distributions_and_its_samples():
    """Sendera et al.'s 25GMM: the log-density against MixtureSameFamily of full-covariance Gaussians built
    here (grid {-10, -5, 0, 5, 10}^2, covariance 0.3 I, equal weights); exact samples: every mode's share
    near 1/25 and the spread around the nearest mean 0.3 per axis."""
    import itertools

    from torch.distributions import MultivariateNormal

    target = TARGETS["gmm25"]()
    assert target.name == "gmm25" and target.dim == 2 and target.log_z == 0.0
    mu = torch.tensor(list(itertools.product([-10.0, -5.0, 0.0, 5.0, 10.0], repeat=2)))
    mix = MixtureSameFamily(Categorical(torch.full((25,), 1 / 25)), MultivariateNormal(mu, covariance_matrix=0.3 * torch.eye(2).expand(25, 2, 2)))
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([24 * torch.rand(300, 2, generator=gen) - 12, mu + 0.4 * torch.randn(25, 2, generator=gen)])
    torch.testing.assert_close(target.log_prob(x), mix.log_prob(x))
    # normalised: a Riemann sum of the density over [-14, 14]^2 is 1
    g = torch.linspace(-14, 14, 561, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g).float()
    mass = float(torch.exp(target.log_prob(grid)).double().sum()) * float(g[1] - g[0]) ** 2
    assert mass == pytest.approx(1.0, abs=1e-3)
    y = target.sample(50_000, torch.Generator().manual_seed(0))
    nearest = torch.cdist(y, mu).argmin(1)
    shares = torch.bincount(nearest, minlength=25).float() / y.shape[0]
    assert float((shares - 1 / 25).abs().max()) < 0.006, shares
    torch.testing.assert_close((y - mu[nearest]).var(0), torch.full((2,), 0.3), atol=0.01, rtol=0)
    assert torch.equal(gmm25().sample(5, torch.Generator().manual_seed(3)), target.sample(5, torch.Generator().manual_seed(3)))


class Linear(nn.Module):
    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gain", gain.float())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.gain[t][:, None] * x + 0.3


def test_importance_weights_estimate_the_normaliser():
    """A linear-Gaussian chain that is not the reference walk (gains 0.9, offset 0.3, the walk's
    noise); log p~ = log N(0, 0.5 I) + 1.5: logmeanexp(log w) estimates log Z = 1.5 from the N(0, I),
    origin and N(0, 1.7^2 I) starts."""
    scales, dim = torch.tensor([0.6, 0.5, 0.4]), 2
    policy = GaussianStepPolicy(Linear(torch.full((3,), 0.9)), scales * math.sqrt(2.0), (dim,))
    log_p = lambda x: Normal(0.0, math.sqrt(0.5)).log_prob(x).sum(1) + 1.5  # noqa: E731
    for start in (None, OriginStart((dim,)), GaussianStart((dim,), 1.7)):
        mdp = ChainMDP(FixedReward(log_p, 1.0), (dim,), scales, 0.05, avr_decay=None, tau_entropy=0.1, start=start)
        g = torch.Generator().manual_seed(0)
        chain = rollout(policy, mdp.reset(400_000, g), 3, g)
        log_w = importance_log_weights(policy, mdp, chain, log_p)
        estimate = float(torch.logsumexp(log_w, 0) - math.log(log_w.numel()))
        assert abs(estimate - 1.5) < 0.02, estimate
        assert float(log_w.mean()) < 1.5 - 0.01  # the ELBO lies below log Z


def test_manywell_normaliser_and_samples_against_quadrature():
    """log Z of one double well by scipy's adaptive quadrature (independent of the module's grid);
    the exact samples' deep-well fraction against the same quadrature."""
    from scipy.integrate import quad

    z_well = quad(lambda a: math.exp(-a**4 + 6 * a**2 + 0.5 * a), -6, 6, limit=200)[0]
    deep = quad(lambda a: math.exp(-a**4 + 6 * a**2 + 0.5 * a), 0, 6, limit=200)[0] / z_well
    target = manywell(8)
    assert target.log_z == pytest.approx(4 * (math.log(z_well) + 0.5 * math.log(2 * math.pi)), abs=1e-6)
    x = target.sample(100_000, torch.Generator().manual_seed(0))
    assert float((x[:, 0::2] > 0).float().mean()) == pytest.approx(deep, abs=0.005)
    a = torch.tensor([[0.3, -1.0, 1.7, 0.2, -1.1, 0.0, 2.0, 0.5]])
    expected = sum(-u**4 + 6 * u**2 + 0.5 * u - 0.5 * v**2 for u, v in zip(a[0, 0::2].tolist(), a[0, 1::2].tolist()))
    assert float(target.log_prob(a)) == pytest.approx(expected, rel=1e-6)


def test_sample_density_example_learns_the_gaussian_target(capsys):
    """examples/sample_density.py --quick on the built-in 2-D Gaussian: the log-normaliser estimate
    within 0.05 of 0 and SW-2 to exact samples below 0.1 (measured: -0.003 and 0.026 at T = 4)."""
    import json

    from examples.sample_density import main

    assert main(["gauss", "--quick", "--horizon", "4", "--n", "4000"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(out["log_z_estimate"]) < 0.05, out
    assert out["sw2_to_exact"] < 0.1 and out["ess_fraction"] > 0.5, out


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "densities.py"
    spec = importlib.util.spec_from_file_location("benchmark_densities", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_published_number_has_a_source_and_numeric_values():
    """benchmarks/densities.py PUBLISHED: per target and method, a source naming an arXiv id and a table,
    a boolean ``comparable``, text only in the known text fields, and every other value a finite number."""
    bench = _benchmark()
    assert set(bench.PUBLISHED) <= set(bench.SETTINGS)
    methods = 0
    for target, records in bench.PUBLISHED.items():
        for method, record in records.items():
            methods += 1
            assert isinstance(record.get("source"), str) and "arXiv:" in record["source"] and "Table" in record["source"], (target, method)
            assert isinstance(record.get("comparable"), bool), (target, method)
            numbers = {k: v for k, v in record.items() if k not in (*bench.PUBLISHED_TEXT_FIELDS, "comparable")}
            assert numbers, (target, method)
            for key, value in numbers.items():
                assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (target, method, key)
            for key in bench.PUBLISHED_TEXT_FIELDS:
                assert isinstance(record.get(key, ""), str), (target, method, key)
    assert methods >= 10


def test_published_only_rewrites_just_the_published_part(tmp_path):
    """--published-only on an existing results file: the measured parts stay byte-for-byte, published is replaced."""
    import json

    bench = _benchmark()
    measured = {"diffrl": {"log_z_error": -1.5, "w2": 3.0}, "baseline": {"log_z_error": -0.5}}
    old = {"funnel": {**measured, "published": {"stale": {"x": 1.0}}}, "meta": {"command": "x"}}
    out = tmp_path / "d.json"
    out.write_text(json.dumps(old))
    assert bench.main(["--published-only", "--out", str(out)]) == 0
    new = json.loads(out.read_text())
    assert new["funnel"]["diffrl"] == measured["diffrl"] and new["funnel"]["baseline"] == measured["baseline"]
    assert new["funnel"]["published"] == json.loads(json.dumps(bench.PUBLISHED["funnel"]))
    assert new["meta"]["command"] == "x" and "published_updated" in new["meta"]
