"""The agent protocol the DxMI loop is written against."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Mapping, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from .policy import GaussianStepPolicy

__all__ = ["Agent", "with_options"]

Settings = TypeVar("Settings")


@runtime_checkable
class Agent(Protocol):
    """Anything that acts in the chain MDP and learns from whole chains of the current policy.

    act(x (B, ...), t int or (B,), noise (B, ...) or None) -> x_{t+1} (B, ...)
    update(chain (T + 1, B, ...)) -> detached metrics; may take several gradient steps.
    training_state() / load_training_state(): networks and optimisers, tensors and plain data only.
    """

    policy: GaussianStepPolicy

    def act(self, x: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor: ...

    def update(self, chain: Tensor) -> dict[str, Tensor]: ...

    def training_state(self) -> dict[str, Any]: ...

    def load_training_state(self, state: dict[str, Any]) -> None: ...


def with_options(settings: Settings, options: Mapping[str, Any], where: str) -> Settings:
    """A copy of the dataclass ``settings`` with the fields in ``options`` replaced (how an agent factory
    applies ``train.agent_options``); an unknown name is a ValueError that lists the known ones."""
    known = [f.name for f in fields(settings)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{where}: {type(settings).__name__} has no option {', '.join(unknown)}; it has {', '.join(known)}")
    return replace(settings, **options)
