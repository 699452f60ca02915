"""One optimiser step as one object: zero the gradients, back-propagate into the optimiser's own
parameters, reduce the gradients (e.g. average them over processes), clip their norm, step.

Every trainable piece of diffrl (DxDP's value and sampler, a learnable reward) steps through an
``OptimizerStep``, so distributed training sets ``grad_reduce`` on each of them and nothing else
changes (``diffrl.distributed.average_gradients``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["OptimizerStep", "GradReduce", "NonFiniteError", "check_finite"]

GradReduce = Callable[[list[nn.Parameter]], None]
"""grad_reduce(params): change the ``.grad`` of ``params`` in place (they may be None) before clipping."""


class NonFiniteError(FloatingPointError):
    """A data batch, a sample, a reward or a loss is NaN or inf; no parameter was stepped with it."""


def check_finite(value: Tensor, what: str) -> None:
    """Raise NonFiniteError naming ``what`` when any element of ``value`` is NaN or inf (one host sync)."""
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{what} is not finite (NaN or inf); no parameter was updated with it")


class OptimizerStep:
    """``step(loss, name)``: one update of ``optimizer`` on ``loss``; gradient reaches only its parameters.

    A non-finite ``loss`` raises ``NonFiniteError`` (naming ``name``) before any gradient is computed.
    clip: gradient-norm clip applied after ``grad_reduce`` (so, across processes, to the averaged
    gradient), or None.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, clip: float | None = None, grad_reduce: GradReduce | None = None) -> None:
        if clip is not None and not clip > 0:
            raise ValueError(f"a gradient-norm clip must be > 0 or None, got {clip}")
        self.optimizer, self.clip, self.grad_reduce = optimizer, clip, grad_reduce
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, loss: Tensor, name: str = "loss") -> None:
        check_finite(loss, name)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.params)
        if self.grad_reduce is not None:
            self.grad_reduce(self.params)
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
