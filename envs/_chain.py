"""The one transition every env adapter calls: checks the action, then defers to ``ChainMDP``.

Framework-free (torch only), so the Gymnasium side never imports TorchRL and vice versa.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffrl.mdp import ChainMDP


def next_state(x: Tensor, action: Tensor) -> Tensor:
    """x_{t+1} = a_t: the action (same shape as x (B, *event_shape)), detached, in x's dtype (the
    action itself when it already is). Raises ValueError on a wrong action shape."""
    if action.shape != x.shape:
        raise ValueError(
            f"action must be the next sample x_(t+1) of shape {tuple(x.shape)} "
            f"(batch, *event_shape), got {tuple(action.shape)}"
        )
    if action.requires_grad or action.dtype != x.dtype:
        return action.detach().to(x.dtype)
    return action


def advance(mdp: ChainMDP, x: Tensor, t: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """One step of B chains: ``(x_t, t, a_t = x_{t+1}) -> (x_{t+1}, t + 1, r_t, terminated, costs)``.

    x (B, *event_shape), t (B,) long, action (B, *event_shape). Returns x_next (B, *event_shape)
    (``next_state``), t_next (B,) long, reward (B,) = ``mdp.reward_of(costs)`` (higher is better:
    minus the running cost, minus cost(x_T) on the last step), terminated (B,) bool (t_next == T)
    and the costs ``mdp.step_terms`` (each (B,), higher is worse).
    Raises ValueError on a wrong action shape or a chain already at t = T.
    """
    x_next = next_state(x, action)
    if bool((t >= mdp.horizon).any()):
        raise ValueError(f"a chain has already taken all T = {mdp.horizon} steps; reset it before stepping")
    with torch.no_grad():
        terms = mdp.step_terms(x, x_next, t)
        reward = mdp.reward_of(terms)
    t_next = t + 1
    return x_next, t_next, reward, t_next == mdp.horizon, terms
