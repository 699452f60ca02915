"""A training loop for anything with ``step()``: logging, evaluation with model selection,
atomic checkpoints, exact resume and a stop on non-finite losses."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .run import RunDir

__all__ = ["Trainable", "LoopConfig", "NonFiniteLossError", "fit"]


class Trainable(Protocol):
    def step(self) -> dict[str, Tensor]: ...

    def training_state(self) -> dict[str, Any]: ...

    def load_training_state(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; the run folder keeps its last good checkpoint."""


@dataclass
class LoopConfig:
    steps: int
    log_every: int = 100
    eval_every: int = 500
    checkpoint_every: int = 500
    select_metric: str | None = None
    """Metric of ``evaluate`` that picks model.pt (lower is better); None keeps the last model."""


def fit(
    trainer: Trainable,
    run: RunDir,
    config: LoopConfig,
    evaluate: Callable[[], dict[str, float]] | None = None,
    model_state: Callable[[], dict[str, Any]] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``trainer.step()`` up to ``config.steps``; returns {"step", "best", "last_eval"}.

    With ``resume`` the loop restores the trainer, the global torch RNG, the step counter and the
    best score from ``run.checkpoint_path``, so a resumed run ends exactly as an uninterrupted one.
    ``model_state()`` gives what model.pt holds; it is saved at the best evaluation.
    """
    if config.steps < 0:
        raise ValueError(f"steps must be >= 0, got {config.steps}")
    step, best, last_eval = 0, math.inf, {}
    if resume:
        state = run.load_checkpoint()
        trainer.load_training_state(state["trainer"])
        torch.set_rng_state(state["torch_rng"])
        step, best, last_eval = state["step"], state["best"], state["last_eval"]
        run.truncate_metrics(step)

    def save() -> None:
        run.save_checkpoint(
            {"trainer": trainer.training_state(), "torch_rng": torch.get_rng_state(), "step": step, "best": best, "last_eval": last_eval}
        )

    def evaluate_and_select() -> None:
        nonlocal best, last_eval
        last_eval = evaluate()
        run.log(step, {f"eval/{k}": v for k, v in last_eval.items()})
        score = last_eval[config.select_metric] if config.select_metric else -step
        if model_state is not None and score <= best:
            best = score
            run.save_model({**model_state(), "step": step, "eval": last_eval})

    if evaluate is not None and step == 0:
        evaluate_and_select()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, dynamic_ncols=True)
    try:
        while step < config.steps:
            metrics = trainer.step()
            step += 1
            losses = {k: v for k, v in metrics.items() if k.startswith("loss")}
            bad = [k for k, v in losses.items() if not bool(torch.isfinite(v))]
            if bad:
                raise NonFiniteLossError(
                    f"{', '.join(bad)} became non-finite at step {step}; training stopped, "
                    f"the last good checkpoint stays at {run.checkpoint_path}"
                )
            if step % config.log_every == 0 or step == config.steps:
                scalars = {k: float(v) for k, v in metrics.items()}
                run.log(step, scalars)
                bar.set_postfix({k: f"{v:.3g}" for k, v in scalars.items() if k.startswith("loss")}, refresh=False)
            if evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
                evaluate_and_select()
            elif model_state is not None and evaluate is None and step == config.steps:
                run.save_model({**model_state(), "step": step, "eval": {}})
            if step % config.checkpoint_every == 0 or step == config.steps:
                save()
            bar.update(1)
    finally:
        bar.close()
        run.close()
    return {"step": step, "best": best, "last_eval": last_eval}
