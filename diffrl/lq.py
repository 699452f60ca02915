"""The linear-quadratic chain: a ChainMDP whose max-entropy optimum is known in closed form.

With a Gaussian terminal reward ``log N(x_T; 0, v I)`` (``envs.gym_env.default_mdp`` has v = 1)
and x_0 ~ N(0, I), the objective DxDP maximises (spec section 2, per-dimension costs),

    J = E[ -sum_t tau_velocity v_t - cost(x_T) ] + tau_entropy sum_t log sigma_t,
    v_t = |x_{t+1} - x_t|^2 / (2 s_t^2 D),   cost(x) = |x|^2 / (2 v) + (D / 2) log(2 pi v),

is linear-quadratic: the cost-to-go is W_t(x) = a_t |x|^2 / 2 + c_t, and the best Gaussian step
policy is linear, x_{t+1} = k_t x_t + sigma_t eps, with (w_t = tau_velocity / (s_t^2 D), a_T = 1 / v)

    k_t = w_t / (w_t + a_{t+1}),   a_t = w_t a_{t+1} / (w_t + a_{t+1}),
    sigma_t^2 = tau_entropy / (D (w_t + a_{t+1})),
    c_t = c_{t+1} + tau_entropy / 2 - tau_entropy log sigma_t,   c_T = (D / 2) log(2 pi v),
    J* = -(a_0 D / 2 + c_0).

A benchmark with a known answer for any agent: the gap ``J* - J(policy)`` is how far it is from optimal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GaussianChainOptimum", "gaussian_chain_optimum"]


@dataclass(frozen=True)
class GaussianChainOptimum:
    """The optimal linear-Gaussian chain: gains k (T,), step sigmas (T,), the objective J* (higher is
    better) and the per-dimension variance of its samples x_T."""

    gain: Tensor
    sigma: Tensor
    objective: float
    final_variance: float


def gaussian_chain_optimum(
    velocity_scale_sq: Tensor, dim: int, tau_velocity: float, tau_entropy: float, target_variance: float = 1.0
) -> GaussianChainOptimum:
    """The closed-form optimum (module docstring) for s_t^2 = ``velocity_scale_sq`` (T,), D = ``dim``.

    Computed in float64. tau_entropy = 0 gives the deterministic optimum (sigma_t = 0, no entropy term).
    """
    s2 = torch.as_tensor(velocity_scale_sq, dtype=torch.float64)
    if s2.ndim != 1 or not bool((s2 > 0).all()):
        raise ValueError("velocity_scale_sq must be a 1-D tensor of positive s_t^2, one per step")
    if dim < 1 or tau_velocity <= 0 or tau_entropy < 0 or target_variance <= 0:
        raise ValueError("need dim >= 1, tau_velocity > 0, tau_entropy >= 0 and target_variance > 0")
    horizon = s2.numel()
    gain, sigma = torch.empty(horizon, dtype=torch.float64), torch.empty(horizon, dtype=torch.float64)
    a, c = 1.0 / target_variance, 0.5 * dim * math.log(2 * math.pi * target_variance)
    for t in reversed(range(horizon)):
        w = tau_velocity / (float(s2[t]) * dim)
        gain[t] = w / (w + a)
        sigma[t] = math.sqrt(tau_entropy / (dim * (w + a)))
        if tau_entropy > 0:
            c += tau_entropy / 2 - tau_entropy * math.log(sigma[t])
        a = w * a / (w + a)
    variance = 1.0
    for t in range(horizon):
        variance = float(gain[t]) ** 2 * variance + float(sigma[t]) ** 2
    return GaussianChainOptimum(gain, sigma, -(a * dim / 2 + c), variance)
