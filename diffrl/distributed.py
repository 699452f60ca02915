"""Many processes (torchrun): one per GPU (NCCL) or per CPU process (gloo), the global batch split
across them.

Gradients are averaged explicitly rather than through ``DistributedDataParallel``: DxDP steps each
optimiser on ``loss.backward(inputs=...)`` with the value network inside the sampler's loss, a DDP
wrapper would put ``module.`` into every state-dict key, and the sampler's log-sigmas belong to no
wrapped module. Instead ``distribute`` starts every rank from rank 0's weights and sets
``grad_reduce`` on every ``diffrl.optim.OptimizerStep`` (one flat all-reduce of the gradients,
before the clip, so a clip sees the averaged gradient as in one process with the whole batch) and
``ChainMDP.avr_reduce`` (AVR's EMA is linear in its batch statistic, so averaging the statistic
gives the EMA of the global batch). Every rank then ends every step with identical parameters.
With one process nothing is set, so single-process numbers are unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .agent import Agent
from .mdp import ChainMDP
from .optim import GradReduce
from .rewards import RewardModel

__all__ = [
    "Dist", "init_processes", "rank_seed", "rank0_first", "average_gradients", "average_statistic",
    "distribute", "rng_state", "set_rng_state",
]

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in the group: rank in 0..world-1 and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0, the one that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean_(self, x: Tensor) -> Tensor:
        """In-place average of ``x`` (any shape, contiguous) over ranks, identical on every rank; returns x."""
        if self.world > 1:
            dist.all_reduce(x)
            x.div_(self.world)
        return x


def init_processes(device: str) -> Dist:
    """device "auto", "cpu" or "cuda": one process (plain python), or a torchrun group (WORLD_SIZE > 1)
    on NCCL with GPUs and gloo on CPUs. Raises ValueError when cuda is asked for and missing. Called
    again in a process whose group is started, it returns that group's Dist (for a job after train)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was requested, but CUDA is not available")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():  # a second call (after pipeline.train) joins the same group
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30), device_id=dev if cuda else None)
    return Dist(dist.get_rank() if world > 1 else 0, world, dev)


def rank_seed(seed: int, rank: int, stream: int) -> int:
    """Seed of one of a rank's independent streams: 0 = torch's global RNG, 1 = data batches,
    2 = evaluation noise, 3 = the final sample grid."""
    return seed * 100_003 + stream * 10_007 + rank


def rank0_first(ctx: Dist, fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the others (a download or a cache is made once)."""
    out = fn() if ctx.main else None
    ctx.barrier()
    return out if ctx.main else fn()


def average_gradients(ctx: Dist) -> GradReduce:
    """A ``grad_reduce`` for ``OptimizerStep``: average the ``.grad`` of its params over ranks in one
    flat all-reduce. A None gradient counts as zeros and becomes a zero tensor."""

    def reduce(params: list[nn.Parameter]) -> None:
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = ctx.mean_(torch.cat([g.reshape(-1) for g in grads]))
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p)

    return reduce


def average_statistic(ctx: Dist) -> Callable[[Tensor], Tensor]:
    """A function x -> the average of x over ranks (a new tensor, x is left alone): ``ChainMDP.avr_reduce``."""
    return lambda x: ctx.mean_(x.clone())


def distribute(ctx: Dist, agent: Agent, reward: RewardModel, mdp: ChainMDP) -> None:
    """Make the training pieces act as one over ranks; call on every rank before the first step and
    before building ``DxMI`` (its EMA copies the policy).

    Broadcasts rank 0's parameters and buffers of ``agent.policy``, ``agent.value`` and
    ``agent.target_value`` (when present), ``reward`` and ``mdp``; sets ``grad_reduce`` to
    ``average_gradients`` on every step of ``agent.optimizer_steps()`` (when it has one) and
    ``reward.optimizer_steps()``; sets ``mdp.avr_reduce``. With one process it does nothing.
    """
    if ctx.world == 1:
        return
    modules = [agent.policy, getattr(agent, "value", None), getattr(agent, "target_value", None), reward, mdp]
    seen: set[int] = set()
    with torch.no_grad():
        for module in modules:
            for t in [*module.parameters(), *module.buffers()] if module is not None else []:
                if id(t) not in seen:  # shared tensors (value = energy, the reward inside the mdp) once
                    seen.add(id(t))
                    dist.broadcast(t.data, 0)
    steps = [*(agent.optimizer_steps() if hasattr(agent, "optimizer_steps") else []), *reward.optimizer_steps()]
    for step in steps:
        step.grad_reduce = average_gradients(ctx)
    mdp.avr_reduce = average_statistic(ctx)


def _local_rng(ctx: Dist, generator: torch.Generator) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state(), "data": generator.get_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def rng_state(ctx: Dist, generator: torch.Generator) -> list[dict[str, Tensor]]:
    """Collective (every rank calls it): every rank's RNG states, indexed by rank, for a checkpoint.
    Each entry holds "cpu" (torch's global RNG), "data" (``generator``, the data batches) and, on a GPU,
    "cuda"; all uint8 CPU tensors."""
    local = _local_rng(ctx, generator)
    if ctx.world == 1:
        return [local]
    states: list[Any] = [None] * ctx.world
    dist.all_gather_object(states, local)
    return states


def set_rng_state(ctx: Dist, states: list[dict[str, Tensor]], generator: torch.Generator) -> bool:
    """Restore this rank's entry of ``rng_state``'s list. Returns False, changing nothing, when the list
    comes from another number of processes (the caller reseeds: the run is no longer an exact continuation)."""
    if len(states) != ctx.world:
        return False
    state = states[ctx.rank]
    torch.set_rng_state(state["cpu"])
    generator.set_state(state["data"])
    if "cuda" in state and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], ctx.device)
    return True
