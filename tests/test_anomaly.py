"""Issue 15: the energy as an anomaly detector. Scores and the pooling / upsampling protocol against
loops and an independent bilinear interpolation; the start distributions; the Langevin sampler
against the exact stationary law of unadjusted Langevin on a Gaussian energy; a short DxMI run on
a toy problem whose AUROC rises above 0.9; ``diffrl score`` and its errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffrl.anomaly import (
    Autoencoder, AutoencoderStart, ReconstructionEnergy, ReplayStart, auroc, detection_scores, energies, energy_maps,
    langevin_policy, localisation_maps,
)
from diffrl.app import pipeline
from diffrl.app.cli import main
from diffrl.app.config import load_config
from diffrl.app.tasks import make_task
from diffrl.mdp import ChainMDP
from diffrl.metrics import roc_auc
from diffrl.policy import rollout
from diffrl.rewards import EnergyReward


class SquaredNorm(nn.Module):
    """E(x) = sum_d w_d x_d^2, x (B, D) -> (B,)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(1.0, dim + 1))

    def forward(self, x):
        return (self.w * x**2).sum(-1)


def bilinear_reference(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of one map (H, W) with pixel-centre alignment, written from the definition:
    output pixel i samples the input at (i + 0.5) * H / out_h - 0.5, clamped to the border."""
    h, w = m.shape
    out = np.empty((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y = min(max((i + 0.5) * h / out_h - 0.5, 0.0), h - 1)
            x = min(max((j + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (m[y0, x0] * (1 - dy) * (1 - dx) + m[y0, x1] * (1 - dy) * dx
                         + m[y1, x0] * dy * (1 - dx) + m[y1, x1] * dy * dx)
    return out


def test_energy_maps_pool_and_upsample_as_the_paper_does() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 2, 3, generator=g)
    energy = SquaredNorm(4)
    maps = energy_maps(energy, features, chunk=5)  # chunks that cut across images
    assert maps.shape == (3, 2, 3)
    loop = torch.tensor([[[float((energy.w.detach() * features[n, :, i, j] ** 2).sum()) for j in range(3)] for i in range(2)] for n in range(3)])
    torch.testing.assert_close(maps, loop)
    scores = detection_scores(maps)
    assert scores.shape == (3,)
    assert scores.tolist() == [max(max(row) for row in loop[n].tolist()) for n in range(3)]
    local = localisation_maps(maps, (7, 5))
    assert local.shape == (3, 7, 5)
    for n in range(3):
        np.testing.assert_allclose(local[n].numpy(), bilinear_reference(maps[n].double().numpy(), 7, 5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(localisation_maps(maps, (2, 3)), maps)  # the map's own size is the identity
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        energy_maps(energy, features[0])


def test_auroc_matches_the_rank_statistic_and_refuses_bad_scores() -> None:
    g = torch.Generator().manual_seed(1)
    normal, anomaly = torch.randn(50, generator=g), torch.randn(30, generator=g) + 1
    normal[:5] = anomaly[:5]  # ties
    assert auroc(normal, anomaly) == pytest.approx(roc_auc(anomaly, normal), abs=1e-12)
    assert auroc(torch.zeros(3), torch.ones(2)) == 1.0 and auroc(torch.ones(3), torch.zeros(2)) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        auroc(torch.tensor([0.0, float("nan")]), torch.ones(2))


def test_autoencoder_start_encodes_perturbs_and_decodes_the_drawn_rows() -> None:
    torch.manual_seed(0)
    ae, data = Autoencoder(6, latent=3, hidden=8, depth=1), torch.randn(20, 6)
    start = AutoencoderStart(ae, data, noise=0.3)
    x0 = start(7, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, in the documented order: rows, then latent noise
    idx = torch.randint(0, 20, (7,), generator=g)
    with torch.no_grad():
        expected = ae.decoder(ae.encoder(data[idx]) + 0.3 * torch.randn(7, 3, generator=g))
    torch.testing.assert_close(x0, expected)
    assert not any(p.requires_grad for p in start.parameters())
    assert set(start.state_dict()) == {f"autoencoder.{k}" for k in ae.state_dict()}  # weights saved, data not

    x = torch.randn(4, 6)
    with torch.no_grad():
        expected_energy = torch.stack([((r - ae.decoder(ae.encoder(r))) ** 2).sum() / 6 / 0.5 for r in x])
    torch.testing.assert_close(ReconstructionEnergy(ae, temperature=0.5)(x).detach(), expected_energy)
    reward = EnergyReward(ReconstructionEnergy(Autoencoder(6, 3, 8, 1)))
    mdp = ChainMDP(reward, (6,), torch.full((4,), 0.1), tau_velocity=0.1, start=start)
    torch.testing.assert_close(mdp.reset(7, torch.Generator().manual_seed(5)), x0)
    default = ChainMDP(reward, (6,), torch.full((4,), 0.1), tau_velocity=0.1)  # unchanged: N(0, I), same draws
    assert torch.equal(default.reset(7, torch.Generator().manual_seed(5)), torch.randn(7, 6, generator=torch.Generator().manual_seed(5)))
    bad = ChainMDP(reward, (5,), torch.full((4,), 0.1), tau_velocity=0.1, start=start)
    with pytest.raises(ValueError, match="start distribution returned shape"):
        bad.reset(3)


def test_replay_start_mixes_stored_and_fresh_samples_and_overwrites_the_oldest() -> None:
    class Fresh(nn.Module):
        def forward(self, batch, generator=None, device=None):
            return torch.full((batch, 2), -1.0)

    replay = ReplayStart(Fresh(), capacity=4, event_shape=(2,), reinit=0.0)
    assert torch.equal(replay(3), torch.full((3, 2), -1.0))  # empty: fresh draws only
    replay.push(torch.arange(12.0).view(6, 2))  # rows 0..5 into 4 slots: 4, 5 overwrite 0, 1
    assert int(replay.filled) == 4 and int(replay.cursor) == 2
    assert torch.equal(replay.memory, torch.tensor([[8.0, 9], [10, 11], [4, 5], [6, 7]]))
    stored = {tuple(r) for r in replay.memory.tolist()}
    assert all(tuple(r) in stored for r in replay(200, torch.Generator().manual_seed(0)).tolist())
    replay.reinit = 1.0
    assert torch.equal(replay(5), torch.full((5, 2), -1.0))
    replay.reinit = 0.25
    fresh_share = (replay(4000, torch.Generator().manual_seed(1))[:, 0] == -1).float().mean()
    assert abs(float(fresh_share) - 0.25) < 0.03


def test_langevin_sampler_reaches_the_exact_ula_law_of_a_gaussian_energy() -> None:
    """E(x) = sum_d (x_d - mu_d)^2 / (2 s_d^2). Unadjusted Langevin with step h, x' = x - h grad E +
    sqrt(2 h) eps, is a Gaussian AR(1) chain with mean mu and stationary variance s^2 / (1 - h / (2 s^2))
    (solve v = (1 - h / s^2)^2 v + 2 h), about 11% above s^2 for s = 0.5, h = 0.05."""
    mu, s, h = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0]), 0.05

    class Gaussian(nn.Module):
        def forward(self, x):
            return ((x - mu) ** 2 / (2 * s**2)).sum(-1)

    policy = langevin_policy(200, h, (2,), energy=Gaussian())
    n = 20_000
    with torch.no_grad():
        x = rollout(policy, torch.zeros(n, 2), policy.horizon, torch.Generator().manual_seed(0))[-1]
    var = s**2 / (1 - h / (2 * s**2))
    assert ((x.mean(0) - mu).abs() < 4 * (var / n).sqrt()).all()
    torch.testing.assert_close(x.var(0), var, rtol=0.04, atol=0)
    assert (x.var(0) / s**2)[0] > 1.07  # the step-size bias is resolved, not just s^2 approximated


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """Normal data near a 2-D plane in R^8; anomalies the same points pushed off the plane."""
    root = tmp_path_factory.mktemp("anomaly")
    g = np.random.default_rng(0)
    basis = np.linalg.qr(g.normal(size=(8, 8)))[0]

    def normal(n: int) -> np.ndarray:
        return (g.normal(size=(n, 2)) @ basis[:, :2].T + 0.05 * g.normal(size=(n, 8))).astype(np.float32)

    np.save(root / "train.npy", normal(3000))
    anomalies = torch.from_numpy(normal(400) + (g.normal(size=(400, 2)) @ basis[:, 2:4].T).astype(np.float32))
    return {"root": root, "anomalies": anomalies}


TOY = ["task=anomaly", "data.normalize=none", "data.n_eval=200", "net.hidden=64", "net.depth=2", "net.time_dim=16",
       "anomaly.latent=2", "anomaly.ae_hidden=64", "train.batch_size=64", "train.lr_energy=1e-3", "train.dxdp.lr_sampler=1e-3",
       "train.dxdp.lr_value=1e-3", "train.energy_ema_decay=null", "threads=1", "train.loop.log_every=20"]


@pytest.fixture(scope="module")
def toy_run(toy) -> dict:
    """100 DxMI iterations on the toy data from a random energy (no autoencoder pretraining): the
    AUROC of the energy's initial weights and of the trained run."""
    root = toy["root"]
    config = load_config(None, [*TOY, f"data.name={root / 'train.npy'}", f"data.root={root / 'data'}", "anomaly.ae_steps=0",
                                "train.loop.steps=100", "train.loop.eval_every=50", "train.loop.checkpoint_every=100"])
    task = make_task(config)
    normal = task.split("test")

    def score(energy) -> float:
        return auroc(energies(energy, normal), energies(energy, task.encode(toy["anomalies"])))

    before = score(ReconstructionEnergy(task.pretrained_autoencoder()))  # the energy's initial weights
    pipeline.train(config, root / "dxmi", progress=False)
    return {"run": root / "dxmi", "before": before, "after": score(pipeline.from_run(root / "dxmi").energy)}


def test_a_short_dxmi_run_raises_a_random_energys_auroc_above_0_9(toy_run) -> None:
    assert toy_run["before"] < 0.85 and toy_run["after"] > 0.9, toy_run
    rows = [json.loads(line) for line in (toy_run["run"] / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/energy_gap"] == pytest.approx(rows[-1]["eval/energy_samples"] - rows[-1]["eval/energy_data"])


def test_langevin_baseline_trains_through_the_pipeline_and_diffrl_score_scores_maps(toy, tmp_path: Path) -> None:
    root = toy["root"]
    maps = np.random.default_rng(1).normal(size=(40, 8, 3, 2)).astype(np.float32)  # 40 images of 3 x 2 locations, C = 8
    np.save(tmp_path / "maps.npy", maps)
    run = tmp_path / "langevin"
    assert main(["train", "--out", str(run), "--no-progress", "--agent", "langevin", "--data", str(tmp_path / "maps.npy"), *TOY,
                 f"data.root={root / 'data'}", "anomaly.ae_steps=20", "anomaly.replay=64", "train.horizon=4",
                 "train.loop.steps=6", "train.loop.eval_every=3", "train.loop.checkpoint_every=3"]) == 0
    restored = pipeline.from_run(run)
    assert restored.mdp.start.filled == 64  # 6 batches of 64 final samples went into the 64-slot buffer
    assert restored.policy.mean_model.energy is not None

    np.save(tmp_path / "new.npy", maps[:5])
    assert main(["score", str(run), "--data", str(tmp_path / "new.npy"), "--map-size", "6"]) == 0
    scores, local = np.load(run / "scores_new.npy"), np.load(run / "scores_new_maps.npy")
    assert scores.shape == (5,) and local.shape == (5, 6, 6)
    with torch.no_grad():
        per_location = restored.energy(restored.task.encode(torch.from_numpy(maps[:5]).permute(0, 2, 3, 1))).reshape(5, -1)
    np.testing.assert_allclose(scores, per_location.max(1).values.numpy(), rtol=1e-5)

    np.save(tmp_path / "vectors.npy", maps[:5, :, 0, 0])
    assert main(["score", str(run), "--data", str(tmp_path / "vectors.npy")]) == 0
    assert np.load(run / "scores_vectors.npy").shape == (5,)
    assert main(["score", str(run), "--data", str(tmp_path / "new.npy")]) == 2  # never overwrites without --force


@pytest.mark.parametrize("array, message", [
    (np.full((3, 8), np.nan, dtype=np.float32), "hold NaN or inf"),
    (np.zeros((3, 5), dtype=np.float32), r"scores vectors \(N, 8\) or feature maps \(N, 8, H, W\), got \(3, 5\)"),
    (np.zeros((3, 8, 2), dtype=np.float32), r"expected an array \(N, C\) or \(N, C, H, W\)"),
    (np.array([["a"] * 8] * 3), "expected numbers"),
])
def test_diffrl_score_refuses_bad_input_in_one_line(toy_run, tmp_path: Path, capsys, array, message) -> None:
    run = toy_run["run"]
    np.save(tmp_path / "bad.npy", array)
    capsys.readouterr()
    assert main(["score", str(run), "--data", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_the_langevin_agent_refuses_a_policy_that_is_not_langevin() -> None:
    from diffrl.anomaly import LangevinAgent
    from diffrl.nets import ResidualMean, TimeMLP
    from diffrl.policy import GaussianStepPolicy

    reward = EnergyReward(ReconstructionEnergy(Autoencoder(6, 3, 8, 1)))
    mdp = ChainMDP(reward, (6,), torch.full((3,), 0.1), tau_velocity=0.1)
    with pytest.raises(ValueError, match="needs a Langevin policy"):
        LangevinAgent(GaussianStepPolicy(ResidualMean(TimeMLP(6, 6)), torch.full((3,), 0.1), (6,)), mdp)
    policy = langevin_policy(3, 0.1, (6,))
    LangevinAgent(policy, mdp)
    assert policy.mean_model.energy is reward.energy  # bound to the energy the loop trains


def test_sphere_data_keep_the_decoder_and_the_sampler_mean_on_the_sphere() -> None:
    from diffrl.anomaly import OnSphere
    from diffrl.nets import ResidualMean, TimeMLP

    x = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    with torch.no_grad():
        for out in (Autoencoder(6, 3, 8, 1, sphere=True)(x), OnSphere(ResidualMean(TimeMLP(6, 6)))(x, torch.zeros(5, dtype=torch.long))):
            torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))


def test_anomaly_settings_fail_before_any_work() -> None:
    with pytest.raises(ValueError, match="data.holdout"):
        load_config("8gaussians", ["data.holdout=3"])
    with pytest.raises(ValueError, match="data.holdout"):
        load_config("digits-anomaly", ["data.holdout=10"])
    with pytest.raises(ValueError, match="needs train.agent=langevin"):
        make_task(load_config("digits-anomaly", ["anomaly.replay=10"]), load=False)
    with pytest.raises(ValueError, match="from scratch"):
        make_task(load_config("digits-anomaly", ["train.teacher=runs/x"]), load=False)
    with pytest.raises(ValueError, match="no DDPM teacher"):
        make_task(load_config("digits-anomaly"), load=False).new_teacher()


def test_digits_leave_one_class_out_splits() -> None:
    task = make_task(load_config("digits-anomaly", ["data.holdout=3"]))
    from diffrl.image_data import load_digits_images

    d = load_digits_images()
    assert task.split("train").shape == (int((d.train_labels != 3).sum()), 64)
    assert task.split("val").shape[0] == int((d.val_labels != 3).sum())
    assert task.anomalies("val").shape[0] == int((d.val_labels == 3).sum())
    assert task.anomalies("test").shape[0] == int((d.train_labels == 3).sum() + (d.test_labels == 3).sum())
    train_rows = {tuple(r) for r in task.split("train").tolist()}
    assert not any(tuple(r) in train_rows for r in [*task.anomalies("test").tolist(), *task.anomalies("val").tolist()])


def test_the_example_trains_on_digits_and_prints_both_aurocs(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "examples/anomaly_dxmi.py", "--holdout", "1", "--out", str(tmp_path / "run"), f"data.root={tmp_path / 'data'}",
         "anomaly.ae_steps=20", "train.loop.steps=4", "train.loop.eval_every=2", "train.loop.checkpoint_every=2", "net.hidden=32",
         "anomaly.ae_hidden=32", "data.n_eval=32"],
        cwd=root, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["DxMI energy", "pretrained autoencoder"]
    assert all(0 <= float(line.split("AUROC ")[1].split()[0]) <= 1 for line in lines)
