"""GaussianStepPolicy: log-density, sampling, reparametrised steps, fixed last sigma, DDIM means."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from diffrl.nets import TimeMLP
from diffrl.policy import DDIMMean, GaussianStepPolicy
from diffrl.schedules import ChainSchedule


SIGMA = torch.tensor([0.9, 0.5, 0.2, 0.05])
T = SIGMA.numel()


def make_policy(fix_last: bool = False, seed: int = 0) -> GaussianStepPolicy:
    torch.manual_seed(seed)
    return GaussianStepPolicy(TimeMLP(2, 2, hidden=16, depth=2, time_dim=8), SIGMA, (2,), fix_last=fix_last)


def test_log_prob_equals_torch_normal():
    policy = make_policy()
    x, x_next = torch.randn(7, 2), torch.randn(7, 2)
    t = torch.tensor([0, 1, 2, 3, 0, 1, 3])
    with torch.no_grad():
        mean = policy.mean_model(x, t)
        expected = torch.distributions.Normal(mean, SIGMA[t][:, None]).log_prob(x_next).sum(-1)
        got = policy.log_prob(x_next, x, t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_log_prob_with_integer_step_and_image_shaped_events():
    torch.manual_seed(0)
    mean_model = lambda x, t: 0.5 * x + t.float().view(-1, 1, 1, 1)  # noqa: E731
    policy = GaussianStepPolicy(mean_model, SIGMA, (1, 3, 3))
    x, x_next = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    expected = torch.distributions.Normal(0.5 * x + 2, SIGMA[2]).log_prob(x_next).flatten(1).sum(-1)
    torch.testing.assert_close(policy.log_prob(x_next, x, 2), expected, rtol=1e-5, atol=1e-5)


def test_sample_shape_and_reproducible_from_generator():
    policy = make_policy()
    a = policy.sample(5, generator=torch.Generator().manual_seed(3))
    b = policy.sample(5, generator=torch.Generator().manual_seed(3))
    c = policy.sample(5, generator=torch.Generator().manual_seed(4))
    assert a.shape == (T + 1, 5, 2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_is_the_manual_chain_drawn_in_order():
    """x_0 from the generator first, then the noise of each step right before it."""
    policy = make_policy()
    chain = policy.sample(6, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 2, generator=g)
    torch.testing.assert_close(chain[0], x)
    with torch.no_grad():
        for t in range(T):
            noise = torch.randn(6, 2, generator=g)
            x = policy.mean_model(x, torch.full((6,), t)) + SIGMA[t] * noise
            torch.testing.assert_close(chain[t + 1], x, rtol=1e-5, atol=1e-6)


def test_step_with_given_noise_is_mean_plus_sigma_noise():
    policy = make_policy()
    x, noise = torch.randn(5, 2), torch.randn(5, 2)
    t = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        expected = policy.mean_model(x, t) + SIGMA[t][:, None] * noise
        torch.testing.assert_close(policy(x, t, noise), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(policy(x, 2, noise), policy.mean_model(x, torch.full((5,), 2)) + SIGMA[2] * noise)


def test_step_is_differentiable_in_log_sigma():
    policy = make_policy()
    x, noise = torch.randn(5, 2), torch.randn(5, 2)
    policy(x, 1, noise).sum().backward()
    grad = policy.log_sigma_train.grad
    # d/d log sigma_1 of sum(mean + exp(log sigma_1) noise) = sigma_1 * sum(noise); other steps get none
    torch.testing.assert_close(grad[1], SIGMA[1] * noise.sum(), rtol=1e-5, atol=1e-6)
    assert float(grad[[0, 2, 3]].abs().sum()) == 0.0


def test_fix_last_keeps_last_sigma_out_of_training():
    policy = make_policy(fix_last=True)
    params = list(policy.parameters())
    assert not any(p is policy.log_sigma_fixed for p in params)
    assert policy.sigma_parameters()[0].numel() == T - 1
    assert not policy.log_sigma_fixed.requires_grad
    torch.testing.assert_close(policy.sigma, SIGMA)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    x = torch.randn(8, 2)
    loss = sum(policy.log_prob(torch.randn(8, 2), x, t).mean() for t in range(T))
    loss.backward()
    opt.step()
    sigma = policy.sigma.detach()
    assert float(sigma[-1]) == pytest.approx(float(SIGMA[-1]), rel=1e-6)
    assert bool((sigma[:-1] - SIGMA[:-1]).abs().min() > 1e-4)  # every other sigma moved


def test_without_fix_last_every_sigma_trains():
    policy = make_policy(fix_last=False)
    assert policy.log_sigma_fixed.numel() == 0 and policy.log_sigma_train.numel() == T
    opt = torch.optim.SGD(policy.sigma_parameters(), lr=0.1)
    policy.log_sigma.sum().backward()
    opt.step()
    torch.testing.assert_close(policy.sigma.detach(), SIGMA * torch.exp(torch.tensor(-0.1)))


class ZeroEps(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


def test_from_schedule_with_zero_eps_gives_scaled_identity_mean():
    s = ChainSchedule.var(5)
    policy = GaussianStepPolicy.from_schedule(ZeroEps(), s, (2,), last_sigma=1e-3, fix_last=True)
    levels = s.levels.numpy()
    x = torch.randn(6, 2)
    for t in range(5):
        c_x = (levels[t + 1] / levels[t]) ** 0.5
        torch.testing.assert_close(policy.mean(x, t), c_x * x, rtol=1e-5, atol=1e-6)
    sig = s.ancestral_sigmas().float()
    torch.testing.assert_close(policy.sigma[:-1], sig[:-1], rtol=1e-5, atol=1e-7)
    assert float(policy.sigma.detach()[-1]) == pytest.approx(1e-3, rel=1e-5)
    assert policy.fix_last and policy.log_sigma_train.numel() == 4


def test_ddim_mean_queries_eps_model_at_schedule_timesteps():
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, tau):
            seen["tau"] = tau.clone()
            return torch.ones_like(x)

    s = ChainSchedule.var(5)
    mean = DDIMMean(Probe(), s)
    t = torch.tensor([0, 4, 2])
    x = torch.randn(3, 2)
    out = mean(x, t)
    torch.testing.assert_close(seen["tau"], s.timesteps.float()[t])
    a, b = s.levels[t].float(), s.levels[t + 1].float()
    sig = s.ancestral_sigmas().float()[t]
    c_eps = torch.sqrt((1 - b - sig**2).clamp_min(0)) - torch.sqrt(1 - a) * torch.sqrt(b / a)
    torch.testing.assert_close(out, torch.sqrt(b / a)[:, None] * x + c_eps[:, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [[0.5, 0.0, 0.1], [0.5, -0.2], [-1.0]])
def test_non_positive_initial_sigma_raises(bad):
    with pytest.raises(ValueError):
        GaussianStepPolicy(ZeroEps(), torch.tensor(bad), (2,))


def test_non_vector_initial_sigma_raises():
    with pytest.raises(ValueError):
        GaussianStepPolicy(ZeroEps(), torch.ones(2, 2), (2,))


def test_point_value_guidance_follows_the_time_dependent_value_then_the_energy():
    """Each guided step, written out: x_{t+1} = policy(x_t, t, noise_t) - lambda sigma_t grad V(x_{t+1}, t + 1),
    with V(., T) = E: the value network for t + 1 < T and the energy at the last step."""
    from diffrl.app.config import load_config
    from diffrl.app.pipeline import compose
    from diffrl.app.tasks import make_task
    from diffrl.sampling import value_guided_sample

    torch.manual_seed(0)
    config = load_config("8gaussians", ["net.hidden=16", "net.depth=2", "net.time_dim=16", "data.n_train=100", "data.n_eval=50"])
    task = make_task(config)
    c = compose(config, task, task.load_teacher(None), torch.device("cpu"))
    m = SimpleNamespace(policy=c.policy, value=c.value, energy=c.reward.energy)
    strength, batch, horizon = 0.7, 6, m.policy.horizon
    chain = value_guided_sample(m.policy, task.cost_to_go(m.value, m.energy), batch, strength, generator=torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 2, generator=g)
    for t in range(horizon):
        with torch.no_grad():
            x_next = m.policy(x, t, torch.randn(batch, 2, generator=g))
        x_req = x_next.clone().requires_grad_(True)
        v = m.energy(x_req) if t == horizon - 1 else m.value(x_req, torch.full((batch,), t + 1))
        (grad,) = torch.autograd.grad(v.sum(), x_req)
        x = x_next - strength * m.policy.sigma[t].detach() * grad
        torch.testing.assert_close(chain[t + 1], x)
    assert all(p.grad is None for p in [*m.value.parameters(), *m.energy.parameters(), *m.policy.parameters()])
