"""A training loop for anything with ``step()``: logging, evaluation with model selection,
atomic checkpoints, exact resume and a stop on non-finite losses.

Progress: a tqdm bar on a terminal; when stderr is a file or a pipe, one line per logging
interval instead (a bar redrawn into a log file is thousands of lines).
"""
from __future__ import annotations

import math
import sys
import time
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
    steps: int = 1000
    """Training iterations (a resumed run may raise it to train further)."""
    log_every: int = 100
    """Iterations between logged losses (metrics.jsonl, TensorBoard, progress lines)."""
    eval_every: int = 500
    """Iterations between evaluations (model selection on the validation split)."""
    checkpoint_every: int = 500
    """Iterations between checkpoints (what --resume continues from)."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"loop.steps must be >= 0, got {self.steps}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"loop.{name} must be >= 1, got {getattr(self, name)}")


def fit(
    trainer: Trainable,
    run: RunDir,
    config: LoopConfig,
    evaluate: Callable[[], dict[str, float]] | None = None,
    model_state: Callable[[], dict[str, Any]] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    select_metric: str | None = None,
) -> dict[str, Any]:
    """Run ``trainer.step()`` up to ``config.steps``; returns {"step", "best", "last_eval"}.

    With ``resume`` the loop restores the trainer, the global torch RNG, the step counter and the
    best score from ``run.checkpoint_path``, so a resumed run ends exactly as an uninterrupted one.
    ``model_state()`` gives what model.pt holds; it is saved at the best evaluation of
    ``select_metric`` (lower is better; None keeps the last model). ``progress``: True a bar,
    False nothing, None a bar on a terminal and one line per logging interval otherwise.
    """
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
        score = last_eval[select_metric] if select_metric else -step
        if model_state is not None and score <= best:
            best = score
            run.save_model({**model_state(), "step": step, "eval": last_eval})

    if evaluate is not None and step == 0:
        evaluate_and_select()
    terminal = sys.stderr.isatty() if progress is None else progress
    lines = progress is None and not terminal
    bar = tqdm(total=config.steps, initial=step, disable=not terminal, dynamic_ncols=True)
    started, start_step = time.perf_counter(), step
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
                losses = {k: f"{v:.3g}" for k, v in scalars.items() if k.startswith("loss")}
                bar.set_postfix(losses, refresh=False)
                if lines:
                    rate = (step - start_step) / max(time.perf_counter() - started, 1e-9)
                    print(f"step {step}/{config.steps} " + " ".join(f"{k} {v}" for k, v in losses.items()) + f" ({rate:.3g} it/s)", file=sys.stderr, flush=True)
            if evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
                evaluate_and_select()
            elif model_state is not None and evaluate is None and step == config.steps:
                run.save_model({**model_state(), "step": step, "eval": {}})
            if step % config.checkpoint_every == 0 or step == config.steps:
                save()
            bar.update(1)
        if step == 0 and not resume:  # a 0-step run still leaves a checkpoint to restore and resume from
            save()
    finally:
        bar.close()
        run.close()
    return {"step": step, "best": best, "last_eval": last_eval}
