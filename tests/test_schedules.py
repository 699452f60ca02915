"""Chain schedules (spec section 7) against hand computations in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffrl.schedules import ChainSchedule, continuous_timestep, linear_betas, var_short_betas


SPEC_ETA_10 = [1e-4, 0.011025, 0.04, 0.087025, 0.1521, 0.235225, 0.3364, 0.455625, 0.5929, 0.748225]
SPEC_ETA_4 = [1e-4, 0.0613, 0.2352, 0.5220]  # the spec rounds these to 4 decimals
SPEC_TIMESTEPS_10 = [616.73, 493.98, 394.08, 308.87, 234.86, 170.30, 114.36, 66.87, 28.29]
SPEC_SIGMAS_10 = [0.837, 0.718, 0.599, 0.485, 0.377, 0.277, 0.182, 0.0937, 0.00996]


def hand_alpha_bars() -> np.ndarray:
    """Ho et al.: betas linear 1e-4 .. 0.02 over 1000 steps, alpha_bar_i = prod_{j<=i} (1 - beta_j)."""
    betas = np.array([1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)], dtype=np.float64)
    return np.cumprod(1.0 - betas), betas


def hand_var_eta(horizon: int) -> np.ndarray:
    """eta_i = beta_0 (1 + i k)^2 with k at its upper bound 0.95 / sqrt(beta_0) / T (the target is out of reach)."""
    beta0 = 1e-4
    k = 0.95 / math.sqrt(beta0) / horizon
    return np.array([beta0 * (1 + i * k) ** 2 for i in range(horizon)])


def test_var_short_betas_T10_equal_spec_list():
    eta = var_short_betas(10, linear_betas())
    assert eta.dtype == torch.float64
    np.testing.assert_allclose(eta.numpy(), SPEC_ETA_10, rtol=0, atol=1e-6)
    np.testing.assert_allclose(eta.numpy(), hand_var_eta(10), rtol=0, atol=1e-12)


def test_var_short_betas_T4_equal_spec_list_and_exact_formula():
    eta = var_short_betas(4, linear_betas())
    np.testing.assert_allclose(eta.numpy(), hand_var_eta(4), rtol=0, atol=1e-6)
    np.testing.assert_allclose(eta.numpy(), SPEC_ETA_4, rtol=0, atol=1e-4)  # spec's 4-decimal rounding


@pytest.mark.parametrize("horizon", [4, 10])
def test_var_target_is_out_of_reach(horizon):
    """The bisection cannot reach alpha_bar_1000: the final level stays above it, so k ends at the bound."""
    abar, _ = hand_alpha_bars()
    assert np.prod(1 - hand_var_eta(horizon)) > abar[-1]


def test_var_chain_timesteps_T10_equal_spec():
    s = ChainSchedule.var(10)
    assert s.timesteps.dtype == torch.float64
    np.testing.assert_allclose(s.timesteps[:-1].numpy(), SPEC_TIMESTEPS_10, rtol=0, atol=0.01)
    assert 0.0 <= float(s.timesteps[-1]) < 1e-3


def test_var_chain_levels_are_reversed_cumulative_products():
    s = ChainSchedule.var(10)
    gbar = np.cumprod(1 - hand_var_eta(10))
    np.testing.assert_allclose(s.levels.numpy(), np.concatenate([gbar[::-1], [1.0]]), rtol=1e-12, atol=0)


def test_var_chain_timesteps_invert_a_linear_interpolation_of_alpha_bar():
    """An independent inversion: the log alpha_bar of integer steps, interpolated linearly, hits the level
    at the returned (fractional) timestep up to the interpolation's curvature error."""
    abar, _ = hand_alpha_bars()
    s = ChainSchedule.var(10)
    for level, tau in zip(s.levels[:-1].numpy(), s.timesteps.numpy()):
        interp = np.interp(tau, np.arange(1000), np.log(abar))
        assert abs(interp - math.log(level)) < 1e-4


def test_var_ancestral_sigmas_T10_equal_spec():
    sig = ChainSchedule.var(10).ancestral_sigmas()
    np.testing.assert_allclose(sig[:-1].numpy(), SPEC_SIGMAS_10, rtol=0, atol=1e-3)
    assert float(sig[-1]) == 0.0


def test_var_ancestral_sigmas_equal_hand_formula():
    gbar = np.cumprod(1 - hand_var_eta(10))[::-1]
    levels = np.concatenate([gbar, [1.0]])
    hand = [math.sqrt((1 - b) / (1 - a) * (1 - a / b)) for a, b in zip(levels[:-1], levels[1:])]
    np.testing.assert_allclose(ChainSchedule.var(10).ancestral_sigmas().numpy(), hand, rtol=1e-9, atol=1e-12)


def test_continuous_timestep_at_integer_levels_returns_the_integer():
    abar, _ = hand_alpha_bars()
    idx = np.array([0, 1, 2, 5, 17, 100, 250, 500, 616, 900, 998, 999])
    t = continuous_timestep(torch.tensor(abar[idx]))
    np.testing.assert_allclose(t.numpy(), idx.astype(np.float64), rtol=0, atol=1e-6)


def test_continuous_timestep_is_monotone_between_integers():
    abar, _ = hand_alpha_bars()
    mid = np.sqrt(abar[10] * abar[11])  # a level strictly between steps 10 and 11
    t = float(continuous_timestep(torch.tensor([mid]))[0])
    assert 10.0 < t < 11.0


def test_strided_full_chain_levels_are_the_teacher_alpha_bars():
    abar, _ = hand_alpha_bars()
    torch_abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    s = ChainSchedule.strided(1000)
    assert torch.equal(s.levels[:-1], torch_abar.flip(0))  # exact, noise to data
    assert float(s.levels[-1]) == 1.0
    np.testing.assert_allclose(s.levels[:-1].numpy(), abar[::-1], rtol=1e-12, atol=0)
    assert torch.equal(s.timesteps, torch.arange(999, -1, -1, dtype=torch.float64))


def test_strided_full_chain_ddim_step_is_the_ddpm_ancestral_posterior():
    """Ho et al. eq. 7: mean = coef0 * x0_hat + coef_t * x_t with x0_hat = (x_t - sqrt(1-abar_i) eps) / sqrt(abar_i),
    coef0 = sqrt(abar_{i-1}) beta_i / (1 - abar_i), coef_t = sqrt(alpha_i) (1 - abar_{i-1}) / (1 - abar_i),
    variance beta_tilde_i = (1 - abar_{i-1}) / (1 - abar_i) beta_i (abar_{-1} = 1, so beta_tilde_0 = 0)."""
    abar, betas = hand_alpha_bars()
    c_x, c_eps, sigma = ChainSchedule.strided(1000).ddim_coefficients(eta=1.0)
    hand_cx, hand_ceps, hand_var = [], [], []
    for t in range(1000):
        i = 999 - t
        a, a_prev, alpha = abar[i], (abar[i - 1] if i > 0 else 1.0), 1.0 - betas[i]
        coef0 = math.sqrt(a_prev) * betas[i] / (1 - a)
        coef_t = math.sqrt(alpha) * (1 - a_prev) / (1 - a)
        hand_cx.append(coef0 / math.sqrt(a) + coef_t)
        hand_ceps.append(-coef0 * math.sqrt(1 - a) / math.sqrt(a))
        hand_var.append((1 - a_prev) / (1 - a) * betas[i])
    np.testing.assert_allclose(c_x.numpy(), hand_cx, rtol=1e-9)
    np.testing.assert_allclose(c_eps.numpy(), hand_ceps, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose((sigma**2).numpy(), hand_var, rtol=1e-9, atol=1e-15)
    assert float(sigma[-1]) == 0.0


def test_ddim_eta_zero_is_deterministic_and_scales_sigma():
    s = ChainSchedule.var(10)
    _, _, sigma0 = s.ddim_coefficients(eta=0.0)
    _, _, sigma_half = s.ddim_coefficients(eta=0.5)
    assert float(sigma0.abs().max()) == 0.0
    np.testing.assert_allclose(sigma_half.numpy(), 0.5 * s.ancestral_sigmas().numpy(), rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_horizon_raises(bad):
    with pytest.raises(ValueError):
        var_short_betas(bad, linear_betas())
    with pytest.raises(ValueError):
        ChainSchedule.var(bad)
    with pytest.raises(ValueError):
        ChainSchedule.strided(bad)


def test_strided_horizon_longer_than_teacher_raises():
    with pytest.raises(ValueError):
        ChainSchedule.strided(1001)


def test_strided_trailing_timesteps_T10_by_hand():
    assert ChainSchedule.strided(10).timesteps.tolist() == [999.0 - 100 * k for k in range(10)]


def test_strided_every_horizon_gives_that_many_decreasing_steps():
    """Regression: in floating point arange(1000, 0, -1000 / T) has T + 1 elements for 62 values of T
    (61, 103, 121, ...); the extra one became step -1 and the chain failed its own level check."""
    for horizon in list(range(1, 130)) + [201, 206, 217, 223, 333, 999, 1000]:
        steps = ChainSchedule.strided(horizon).timesteps
        assert steps.numel() == horizon, horizon
        assert float(steps[0]) == 999.0 and float(steps[-1]) >= 0.0, horizon
        assert bool((steps[1:] < steps[:-1]).all()), horizon
