"""The library's DxMI iteration against the same maths written by hand in one plain-torch function.

``benchmarks/iteration_speed.py`` holds ``plain_dxmi_iteration``: sampling, AVR, the contrastive
energy step, T value TD steps and the sampler step written out without diffrl (only its TimeMLP
nets and schedule numbers). From identical weights and the same seed, a few iterations of it and
of ``DxMI.step()`` must leave identical parameters, and identical parameter changes.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "iteration_speed.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("diffrl_bench_iteration_speed", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()

BIG_LR = ["train.dxdp.lr_sampler=1e-3", "train.dxdp.lr_sigma=1e-2", "train.dxdp.lr_value=1e-2", "train.lr_energy=1e-2"]


@pytest.fixture(scope="module")
def data():
    return bench.make_data(2_000, seed=0)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="default"),
        pytest.param(BIG_LR, id="large-lr"),
        pytest.param(BIG_LR + ["train.separate_energy=false", "train.dxdp.lr_value=3e-3"], id="shared-energy"),
        pytest.param(BIG_LR + ["train.fix_last=true", "train.tau_velocity=1.0", "train.tau_entropy=0.5"], id="fix-last"),
    ],
)
def test_library_iteration_equals_plain_torch(data, overrides):
    config = bench.make_config(32, hidden=16, depth=2, time_dim=8, overrides=overrides)
    result = bench.check_equivalence(config, data, iters=5, seed=3)  # raises AssertionError on a mismatch
    assert result["smallest_max_change"] > 0  # every parameter tensor moved


def test_check_catches_a_wrong_update(data):
    """The comparison is not vacuous: a plain iteration with a different entropy weight disagrees."""
    config = bench.make_config(32, hidden=16, depth=2, time_dim=8, overrides=BIG_LR)
    dxmi = bench.build_library(config, data, 0)
    plain = bench.plain_from_library(dxmi, config, data, 0)
    plain.tau_entropy *= 2
    torch.manual_seed(1)
    dxmi.step()
    torch.manual_seed(1)
    bench.plain_dxmi_iteration(plain)
    lib, pln = bench.named_state(dxmi), bench.named_state_plain(plain)
    assert not torch.allclose(lib["log_sigma"], pln["log_sigma"], rtol=1e-6, atol=1e-7)
