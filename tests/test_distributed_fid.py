"""diffrl.distributed (gradient / statistic averaging over a real 2-process gloo group, rank 0's weights
everywhere, RNG states) and diffrl.fid (FID plumbing on the small fixed feature network)."""
from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from diffrl.agents import DxDP, DxDPConfig
from diffrl.data import BatchSampler
from diffrl.distributed import (Dist, average_gradients, average_statistic, distribute, rank_seed, rng_state,
                                set_rng_state)
from diffrl.dxmi import DxMI
from diffrl.fid import SmallFeatures, build_fid, fid_name, load_reference_stats, sample_fid
from diffrl.image_data import to_uint8, to_unit
from diffrl.mdp import ChainMDP
from diffrl.nets import TimeMLP
from diffrl.optim import OptimizerStep
from diffrl.policy import GaussianStepPolicy
from diffrl.rewards import EnergyReward

CPU = torch.device("cpu")
ONE = Dist(0, 1, CPU)


# ---------------------------------------------------------------- pieces shared by both processes


def rank_loss(rank: int) -> tuple[list[nn.Parameter], torch.Tensor]:
    """A Linear(3, 2) (the same on every rank) and an extra parameter that only rank 1's loss uses (so
    rank 0's gradient of it is None); the data differ by rank."""
    torch.manual_seed(0)
    linear, extra = nn.Linear(3, 2), nn.Parameter(torch.zeros(2))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(10 + rank))
    loss = linear(x).pow(2).sum()
    if rank == 1:
        loss = loss + (extra * torch.tensor([1.0, 2.0])).sum()
    return [linear.weight, linear.bias, extra], loss


def mean_gradients() -> list[torch.Tensor]:
    """The two ranks' gradients averaged here, without any process group (None counts as zeros)."""
    per_rank = []
    for rank in (0, 1):
        params, loss = rank_loss(rank)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        per_rank.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])
    assert not torch.equal(per_rank[0][0], per_rank[1][0])  # the ranks really disagree
    return [(a + b) / 2 for a, b in zip(*per_rank)]


def tiny_dxmi_pieces(seed: int) -> tuple[DxDP, EnergyReward, ChainMDP]:
    """A 2-D DxDP agent (T = 3), a learnable energy and the chain MDP, initialised from ``seed``."""
    torch.manual_seed(seed)
    sigma = torch.full((3,), 0.5)
    policy = GaussianStepPolicy(TimeMLP(2, 2, hidden=8, depth=1, time_dim=8), sigma, (2,))
    value = TimeMLP(2, 1, hidden=8, depth=1, time_dim=8)
    reward = EnergyReward(nn.Sequential(nn.Linear(2, 8), nn.SiLU(), nn.Linear(8, 1), nn.Flatten(0)), lr=1e-2)
    mdp = ChainMDP(reward, (2,), sigma, tau_velocity=0.1, avr_decay=0.9)
    agent = DxDP(policy, value, mdp, DxDPConfig(lr_sampler=1e-2, lr_sigma=1e-2, lr_value=1e-2))
    return agent, reward, mdp


def flat_state(agent: DxDP, reward: EnergyReward, mdp: ChainMDP) -> torch.Tensor:
    tensors = [*agent.policy.parameters(), *agent.value.parameters(), *reward.parameters(), mdp.velocity_scale_sq]
    return torch.cat([t.detach().reshape(-1) for t in tensors]).clone()


# ---------------------------------------------------------------- the 2-process run


def check_gradients(ctx: Dist) -> None:
    expected = mean_gradients()
    params, loss = rank_loss(ctx.rank)
    before = [p.detach().clone() for p in params]
    OptimizerStep(torch.optim.SGD(params, lr=1.0), grad_reduce=average_gradients(ctx))(loss)
    for p, p0, g in zip(params, before, expected):
        torch.testing.assert_close(p.grad, g)  # the None gradient of rank 0 became half of rank 1's
        torch.testing.assert_close(p.detach(), p0 - g)  # SGD stepped on the averaged gradient


def check_statistic(ctx: Dist) -> None:
    x = torch.tensor([1.0, 2.0, 3.0]) * (ctx.rank + 1)
    torch.testing.assert_close(average_statistic(ctx)(x), torch.tensor([1.5, 3.0, 4.5]))
    torch.testing.assert_close(x, torch.tensor([1.0, 2.0, 3.0]) * (ctx.rank + 1))  # left alone


def check_rng(ctx: Dist) -> None:
    torch.manual_seed(rank_seed(0, ctx.rank, 0))
    data = torch.Generator().manual_seed(rank_seed(0, ctx.rank, 1))
    states = rng_state(ctx, data)
    assert len(states) == 2 and not torch.equal(states[0]["cpu"], states[1]["cpu"])
    assert torch.equal(states[ctx.rank]["cpu"], torch.get_rng_state())
    draws = torch.rand(3), torch.rand(3, generator=data)
    torch.rand(5), torch.rand(5, generator=data)
    assert set_rng_state(ctx, states, data)
    assert torch.equal(torch.rand(3), draws[0]) and torch.equal(torch.rand(3, generator=data), draws[1])
    cpu = torch.get_rng_state()
    assert not set_rng_state(ctx, states[:1], data) and torch.equal(torch.get_rng_state(), cpu)


def train_two_steps(ctx: Dist, out: str) -> None:
    """Ranks start from different weights; after distribute they share rank 0's, then train two DxMI
    iterations on different data and noise; both ranks save what they hold."""
    agent, reward, mdp = tiny_dxmi_pieces(seed=ctx.rank)
    distribute(ctx, agent, reward, mdp)
    assert all(step.grad_reduce is not None for step in [*agent.optimizer_steps(), *reward.optimizer_steps()])
    assert mdp.avr_reduce is not None
    start = flat_state(agent, reward, mdp)
    torch.manual_seed(rank_seed(0, ctx.rank, 0))
    data = BatchSampler(torch.randn(64, 2, generator=torch.Generator().manual_seed(ctx.rank)), 16, rank_seed(0, ctx.rank, 1))
    dxmi = DxMI(agent, mdp, data)
    for _ in range(2):
        dxmi.step()
    torch.save({"start": start, "end": flat_state(agent, reward, mdp)}, f"{out}/rank{ctx.rank}.pt")


def worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        ctx = Dist(rank, 2, CPU)
        check_gradients(ctx)
        check_statistic(ctx)
        check_rng(ctx)
        train_two_steps(ctx, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_average_gradients_and_statistics_and_stay_in_step(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(str(tmp_path),), nprocs=2, join=True)  # a failed check in a rank raises here

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    own_init = flat_state(*tiny_dxmi_pieces(seed=1))
    assert not torch.equal(own_init, r0["start"])  # rank 1 did start elsewhere ...
    assert torch.equal(r1["start"], r0["start"])  # ... and took rank 0's weights and buffers
    assert torch.equal(r1["end"], r0["end"])  # identical after training on different batches
    assert not torch.equal(r0["end"], r0["start"])


def test_distribute_with_one_process_changes_nothing():
    agent, reward, mdp = tiny_dxmi_pieces(seed=0)
    before = flat_state(agent, reward, mdp)
    distribute(ONE, agent, reward, mdp)
    assert all(step.grad_reduce is None for step in [*agent.optimizer_steps(), *reward.optimizer_steps()])
    assert mdp.avr_reduce is None
    assert torch.equal(flat_state(agent, reward, mdp), before)


def test_rank_seed_streams_are_the_examples():
    assert rank_seed(0, 0, 0) == 0 and rank_seed(3, 1, 2) == 3 * 100_003 + 2 * 10_007 + 1


def test_core_modules_import_no_agents_envs_or_metrics():
    code = (
        "import sys, diffrl.distributed, diffrl.fid\n"
        "bad = [m for m in ('diffrl.agents', 'diffrl.envs', 'diffrl.app', 'torchmetrics', 'torch_fidelity') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------- FID


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """(128, 3, 16, 16) uint8: smooth colour blobs plus a little noise."""
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(128, 3, 4, 4, generator=g) * 2 - 1, size=16, mode="bilinear", align_corners=False)
    return to_uint8(x + 0.05 * torch.randn(x.shape, generator=g))


def replay(images: torch.Tensor, shift: float = 0.0):
    """draw(b, generator): the images in order, as floats in [-1, 1] (plus ``shift``), ignoring the noise."""
    position = 0

    def draw(b: int, generator: torch.Generator) -> torch.Tensor:
        nonlocal position
        x = to_unit(images[position : position + b]) + shift
        position += b
        return x

    return draw


def small_fid(images: torch.Tensor, cache):
    metric, tag = build_fid(feature=SmallFeatures())
    load_reference_stats(metric, images, cache, 50, ONE)
    return metric, tag


def test_fid_of_a_set_with_itself_is_zero_and_a_shifted_set_is_far(images, tmp_path):
    metric, tag = small_fid(images, tmp_path / "ref.pt")
    assert tag == "smoke-features-v1"
    fid, energy, grid = sample_fid(replay(images), 128, metric, 50, ONE, seed=0, energy=lambda x: x.flatten(1).mean(1))
    assert abs(fid) < 1e-9  # the random features are small: a shift of 0.3 gives about 0.01
    assert energy == pytest.approx(float(to_unit(images).mean()), abs=1e-6)
    assert torch.equal(grid, to_unit(images[:64]))
    shifted, none, _ = sample_fid(replay(images, shift=0.3), 128, metric, 50, ONE, seed=0)
    assert shifted > 1e-3 and none is None
    again, _, _ = sample_fid(replay(images), 128, metric, 50, ONE, seed=0)  # reset kept the reference statistics
    assert abs(again) < 1e-9


def test_sample_fid_sees_the_same_noise_every_call(images, tmp_path):
    metric, _ = small_fid(images, tmp_path / "ref.pt")
    draw = lambda b, g: torch.rand(b, 3, 16, 16, generator=g) * 2 - 1  # noqa: E731
    first, _, grid = sample_fid(draw, 100, metric, 30, ONE, seed=1)
    assert sample_fid(draw, 100, metric, 30, ONE, seed=1)[0] == first
    assert sample_fid(draw, 100, metric, 30, ONE, seed=2)[0] != first
    assert grid.shape == (64, 3, 16, 16)
    with pytest.raises(ValueError, match="at least 2 samples per process"):
        sample_fid(draw, 3, metric, 30, Dist(0, 2, CPU), seed=1)


def test_reference_statistics_are_cached_and_loaded(images, tmp_path):
    cache = tmp_path / "fid_stats" / "ref.pt"
    first, _ = small_fid(images, cache)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ref.pt"]  # written, no temporary file left
    second, _ = small_fid(images.flip(0)[:10], cache)  # other images: the cache must be what is used
    for name in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples"):
        assert torch.equal(getattr(second, name), getattr(first, name))
    assert int(second.real_features_num_samples) == 128
    other_rank, _ = build_fid(feature=SmallFeatures())
    load_reference_stats(other_rank, images, tmp_path / "unused.pt", 50, Dist(1, 2, CPU))
    assert not (tmp_path / "unused.pt").exists() and not bool(other_rank.real_features_sum.any())


@pytest.mark.parametrize("n, name", [(10_000, "fid10k"), (50_000, "fid50k"), (64, "fid64"), (1500, "fid1500"), (1000, "fid1k")])
def test_fid_name(n, name):
    assert fid_name(n) == name


def test_build_fid_rejects_bad_weight_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_fid(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        build_fid(tmp_path / "text.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        build_fid(tmp_path / "list.pth")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="do not fit"):
        build_fid(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not both"):
        build_fid(tmp_path / "other.pth", feature=SmallFeatures())
