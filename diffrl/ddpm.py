"""DDPM teachers: epsilon prediction on a 1000-step linear-beta chain (Ho et al.)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .policy import GaussianStepPolicy
from .schedules import ChainSchedule, alpha_bars, linear_betas

__all__ = ["DDPM"]


class DDPM(nn.Module):
    """A teacher: eps_model(x_s (B, ...), s (B,) float) -> predicted noise (B, ...), s in [0, N-1].

    x_s = sqrt(alpha_bar_s) x + sqrt(1 - alpha_bar_s) eps; the loss is mean (eps_model(x_s, s) - eps)^2.
    """

    def __init__(self, eps_model: nn.Module, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        self.eps_model = eps_model
        self.register_buffer("betas", linear_betas(num_steps, beta_start, beta_end))
        self.register_buffer("alpha_bar", alpha_bars(self.betas).float())

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoising loss on clean data x (B, ...), a scalar."""
        s = torch.randint(0, self.num_steps, (x.shape[0],), device=x.device, generator=generator)
        eps = torch.randn(x.shape, device=x.device, generator=generator)
        a = self.alpha_bar[s].view(-1, *([1] * (x.ndim - 1)))
        return (self.eps_model(a.sqrt() * x + (1 - a).sqrt() * eps, s.float()) - eps).pow(2).mean()

    def schedule(self, horizon: int, kind: str = "var") -> ChainSchedule:
        """A T-step chain over this teacher's levels: "var" (FastDPM quadratic) or "strided"."""
        if kind == "var":
            return ChainSchedule.var(horizon, self.betas)
        if kind == "strided":
            return ChainSchedule.strided(horizon, self.betas)
        raise ValueError(f"unknown chain schedule {kind!r}; expected var or strided")

    def step_policy(
        self, horizon: int, event_shape: tuple[int, ...], kind: str = "var", last_sigma: float = 1e-3, fix_last: bool = True
    ) -> GaussianStepPolicy:
        """A T-step sampler around this teacher's eps model (shared, not copied: deep-copy the
        teacher first to fine-tune it). With kind="strided" and T = N it is the teacher's own chain."""
        return GaussianStepPolicy.from_schedule(
            self.eps_model, self.schedule(horizon, kind), event_shape, last_sigma=last_sigma, fix_last=fix_last
        )
