"""Issue 14's held-out 2-D sets: reproducible draws with the shapes their docstrings promise."""
import torch

from diffrl.data import _GMM4_CENTRES, TOY_DATASETS, toy_data


def test_every_toy_set_is_seeded_finite_and_two_dimensional():
    for name in TOY_DATASETS:
        a, b, c = toy_data(name, 500, 7), toy_data(name, 500, 7), toy_data(name, 500, 8)
        assert a.shape == (500, 2) and a.dtype == torch.float32 and bool(torch.isfinite(a).all())
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_gmm4aniso_weights_and_scale():
    x = toy_data("gmm4aniso", 40_000, 0)
    share = torch.cdist(x, _GMM4_CENTRES).argmin(1).bincount(minlength=4).float() / x.shape[0]
    assert torch.allclose(share, torch.tensor([0.4, 0.3, 0.2, 0.1]), atol=0.01)
    assert 5 < float(x.std(0).min()) and float(x.abs().max()) < 20


def test_rings_radii_and_grid25_modes():
    r = toy_data("rings", 40_000, 0).norm(dim=1)
    outer = r > 1.75
    assert abs(float(outer.float().mean()) - 5 / 7) < 0.01
    assert abs(float(r[outer].mean()) - 2.5) < 0.01 and abs(float(r[~outer].mean()) - 1.0) < 0.01
    g = toy_data("grid25", 40_000, 0)
    centres = torch.cartesian_prod(torch.arange(-4.0, 5.0, 2.0), torch.arange(-4.0, 5.0, 2.0))
    share = torch.cdist(g, centres).argmin(1).bincount(minlength=25).float() / g.shape[0]
    assert float((share - 1 / 25).abs().max()) < 0.005
