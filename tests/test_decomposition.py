"""Decomposition (Mathieu et al. 2019): structured priors, D(q(z), p(z)), and the rotation claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal
from torch.utils._python_dispatch import TorchDispatchMode

from aelab.batch import Batch
from aelab.likelihoods import mean_image
from aelab.losses.terms import MMD_SCALES, aggregate_log_density, imq_mmd_per_dimension
from aelab.models import build_model
from aelab.outputs import ModelOutput
from aelab.priors.base import PriorConfig, build_prior

SHAPE = (1, 12, 10)


def test_alpha_zero_beta_one_is_exactly_the_vae():
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(0)
    vae = build_model("vae", image_shape=SHAPE, latent_dim=4)
    torch.manual_seed(0)
    dec = build_model("decomposition_vae", image_shape=SHAPE, latent_dim=4, alpha="0", beta="1")
    for (ka, a), (kb, b) in zip(vae.state_dict().items(), dec.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    torch.manual_seed(1)
    la = vae.loss(Batch(x), 0)
    torch.manual_seed(1)
    lb = dec.loss(Batch(x), 0)
    assert torch.equal(la.per_example, lb.per_example)
    with torch.no_grad():  # the switched-off term is still reported at evaluation
        assert "divergence" in dec.loss(Batch(x), 0).terms


def test_mmd_matches_brute_force_and_detects_a_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g, dtype=torch.float64)
    got = imq_mmd_per_dimension(x, y, scales=(0.5, 2.0))
    for d in range(3):
        want = 0.0
        for c in (1.0, 4.0):
            k = lambda a, b, c=c: c / (c + (a - b) ** 2)  # noqa: E731
            n = 12
            kxx = sum(k(x[i, d], x[j, d]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
            kyy = sum(k(y[i, d], y[j, d]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
            kxy = sum(k(x[i, d], y[j, d]) for i in range(n) for j in range(n)) / n**2
            want += float(kxx + kyy - 2 * kxy)
        assert got[d].item() == pytest.approx(want, rel=1e-10)
    same = torch.stack([imq_mmd_per_dimension(torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g))
                        for _ in range(50)]).mean()
    shifted = imq_mmd_per_dimension(torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g) + 1.5).mean()
    assert abs(same.item()) < 0.01 < shifted.item()  # unbiased: ~0 for equal laws


def _direct_mmd(x, y, scales):
    """The dimension-wise IMQ MMD^2 from whole (B, B, D) difference tensors (the formula before chunking)."""
    b = x.shape[0]
    dxx, dyy, dxy = (x[:, None] - x[None]).pow(2), (y[:, None] - y[None]).pow(2), (x[:, None] - y[None]).pow(2)
    total = 0
    for s in scales:
        c = 2.0 * s
        kxx = ((c / (c + dxx)).sum((0, 1)) - b) / (b * (b - 1))
        kyy = ((c / (c + dyy)).sum((0, 1)) - b) / (b * (b - 1))
        total = total + kxx + kyy - 2.0 * (c / (c + dxy)).sum((0, 1)) / (b * b)
    return total


@pytest.mark.parametrize("b,chunk", [(7, 1), (7, 2), (7, 3), (7, 7), (7, 64), (2, 1)])
def test_chunked_mmd_value_and_gradient_equal_the_direct_formula(b, chunk):
    g = torch.Generator().manual_seed(b * 100 + chunk)
    x = torch.randn(b, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.randn(b, 4, generator=g, dtype=torch.float64) * 2 + 0.5).requires_grad_(True)
    w = torch.randn(4, generator=g, dtype=torch.float64)  # a weighted sum: each dimension's gradient checked
    got = imq_mmd_per_dimension(x, y, chunk=chunk)
    want = _direct_mmd(x, y, (0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    gx, gy = torch.autograd.grad((got * w).sum(), (x, y))
    wx, wy = torch.autograd.grad((want * w).sum(), (x, y))
    torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(gy, wy, rtol=1e-10, atol=1e-13)


def test_chunked_mmd_gradcheck_and_one_sided_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: imq_mmd_per_dimension(a, b, (0.5, 2.0), chunk=2), (x, y))
    (gx,) = torch.autograd.grad(imq_mmd_per_dimension(x, y.detach(), chunk=3).sum(), x)  # fixed prior samples
    torch.testing.assert_close(gx, torch.autograd.grad(_direct_mmd(x, y.detach(), MMD_SCALES).sum(), x)[0])
    with torch.no_grad():
        assert not imq_mmd_per_dimension(x, y).requires_grad
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        imq_mmd_per_dimension(x, y, chunk=0)
    with pytest.raises(ValueError, match="same shape"):
        imq_mmd_per_dimension(x, y[:4])


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an operator returns (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_chunked_mmd_never_materialises_a_batch_by_batch_tensor():
    b, d, chunk = 24, 3, 5
    x, y = torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)
    with _Shapes() as rec:
        imq_mmd_per_dimension(x, y, chunk=chunk).sum().backward()
    assert rec.shapes and max(math.prod(s) for s in rec.shapes) <= chunk * b * d
    with _Shapes() as direct:  # the recorder does see the direct formula's (B, B, D) tensors
        _direct_mmd(x, y, MMD_SCALES).sum().backward()
    assert (b, b, d) in direct.shapes


def test_decomposition_objective_uses_the_chunked_mmd():
    b, d = 80, 3  # more rows than the default chunk of 64
    model = build_model("decomposition_vae", image_shape=SHAPE, latent_dim=d, alpha="10", divergence="mmd")
    x = torch.rand(b, *SHAPE)
    with _Shapes() as rec:
        lo = model.loss(Batch(x), 0)
        lo.loss.backward()
    assert lo.terms["divergence"].abs() > 0
    assert not any(len(s) == 3 and s[:2] == (b, b) for s in rec.shapes)


def test_aggregate_log_density_brute_force():
    g = torch.Generator().manual_seed(0)
    q = Independent(Normal(torch.randn(5, 2, generator=g), torch.rand(5, 2, generator=g) + 0.5), 1)
    z = q.sample()
    got = aggregate_log_density(q, z)
    for i in range(5):
        dens = sum(math.exp(Independent(Normal(q.base_dist.loc[j], q.base_dist.scale[j]), 1).log_prob(z[i]).item())
                   for j in range(5)) / 5
        assert got[i].item() == pytest.approx(math.log(dens), rel=1e-5)


@pytest.mark.parametrize("divergence", ["mmd", "aggregate_kl"])
@pytest.mark.parametrize("prior", ["standard_normal", "anisotropic", "student_t", "mixture", "sparse"])
def test_divergence_trains_with_every_prior(divergence, prior):
    model = build_model("decomposition_vae", image_shape=SHAPE, latent_dim=3, alpha="10", divergence=divergence,
                        prior={"name": prior, "learn": True})
    lo = model.loss(Batch(torch.rand(8, *SHAPE)), 0)
    assert torch.isfinite(lo.loss) and lo.terms["divergence"].abs() > 0
    lo.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_priors_are_what_they_say():
    d = 5
    aniso = build_prior(d, PriorConfig(name="anisotropic"))()
    v = aniso.base_dist.variance
    assert v.sum().item() == pytest.approx(d) and (v[:-1] > v[1:]).all()
    assert v[-1] / v[0] == pytest.approx(0.1, rel=1e-5)
    sparse = build_prior(d, PriorConfig(name="sparse", gamma=0.8, spike_scale=0.05))()
    s = sparse.sample((20000,))
    assert (s.abs() < 0.15).float().mean().item() == pytest.approx(0.8 + 0.2 * 0.119, abs=0.015)
    t = build_prior(d, PriorConfig(name="student_t", df=3.0))()
    assert t.base_dist.df[0].item() == 3.0
    mix = build_prior(2, PriorConfig(name="mixture", components=4, learn=True))()
    assert mix.sample((10,)).shape == (10, 2) and mix.mixture_distribution.logits.shape == (4,)
    with pytest.raises(ValueError, match="prior.variances has 2 entries but latent_dim is 5"):
        build_prior(d, PriorConfig(name="anisotropic", variances=(1.0, 2.0)))


def _rotated_objective(model, x: torch.Tensor, rot: torch.Tensor | None, eps: torch.Tensor) -> torch.Tensor:
    """The beta-VAE objective with the latent space rotated by ``rot``: encoder output mapped by R,
    decoder input by R^T. The rotated posterior N(R mu, R diag(s^2) R^T) is a full-covariance Gaussian."""
    q = model.encode(x, encoding=False)
    mu, s = q.base_dist.loc, q.base_dist.scale
    z = mu + s * eps
    if rot is None:
        qz = q
    else:
        qz = MultivariateNormal(mu @ rot.T, scale_tril=torch.linalg.cholesky(rot @ torch.diag_embed(s**2) @ rot.T))
        z = z @ rot.T
    px = model.decode(z @ rot if rot is not None else z)
    out = ModelOutput(x=x, x_in=x, z=z, qz_x=qz, px_z=px, pz=model.prior())
    return model.objective(out, model, None).per_example


@pytest.mark.parametrize("prior", ["standard_normal", "anisotropic"])
def test_rotation_invariance_only_with_an_isotropic_prior(prior):
    """Mathieu et al. 2019, Sec. 3: with p(z) = N(0, I) the beta-VAE objective does not change when
    the latent space is rotated, so it cannot prefer any axes; an anisotropic prior breaks that."""
    torch.manual_seed(0)
    model = build_model("beta_vae", image_shape=SHAPE, latent_dim=4, beta="4", monte_carlo_kl=True,
                        prior={"name": prior}).double()
    x = torch.rand(16, *SHAPE, dtype=torch.float64)
    rot, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    eps = torch.randn(16, 4, dtype=torch.float64)
    base, rotated = _rotated_objective(model, x, None, eps), _rotated_objective(model, x, rot, eps)
    if prior == "standard_normal":
        torch.testing.assert_close(base, rotated, rtol=1e-10, atol=1e-9)
    else:
        assert (base - rotated).abs().max() > 1e-2
    assert mean_image(model.decode(torch.zeros(1, 4, dtype=torch.float64))).shape == (1, *SHAPE)


def test_pinwheel_data():
    from aelab.data import DataConfig, load_data
    from aelab.data.pinwheel import pinwheel

    splits = load_data(DataConfig(name="pinwheel"))
    assert (len(splits.train), len(splits.test)) == (10000, 2000)
    assert (splits.info.shape, splits.info.num_classes) == ((1, 1, 2), 5)
    batch = splits.train.get_batch(torch.arange(10000))
    x, y = batch.x, batch.y
    assert x.dtype == torch.float32 and torch.bincount(y).tolist() == [2000] * 5
    a, _ = pinwheel(per_arm=50, seed=3)
    b, _ = pinwheel(per_arm=50, seed=3)
    assert torch.equal(a, b)
    # arms are rotated copies: the mean angle of arm k is about 2 pi k / 5 apart from arm 0's
    ang = torch.atan2(x[:, 0, 0, 1], x[:, 0, 0, 0])
    means = torch.stack([torch.atan2(ang[y == k].sin().mean(), ang[y == k].cos().mean()) for k in range(5)])
    steps = torch.remainder(means.diff(), 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((4,), 2 * math.pi / 5), atol=0.05, rtol=0)


def test_zero_weight_terms_are_skipped_in_training_and_logged_in_evaluation():
    model = build_model("decomposition_vae", image_shape=SHAPE, latent_dim=3, alpha="linear(0, 1, 10)")
    x = torch.rand(4, *SHAPE)
    assert "divergence" not in model.loss(Batch(x), 0).terms  # weight 0 at step 0
    assert "divergence" in model.loss(Batch(x), 5).terms
    with torch.no_grad():
        assert "divergence" in model.loss(Batch(x), 0).terms


@pytest.mark.parametrize("k,dim", [(5, 2), (10, 2), (10, 10), (3, 32)])
def test_mixture_components_start_well_separated(k, dim):
    """Random directions can nearly coincide; the prior's means are spread (evenly on a circle)."""
    from aelab.priors.structured import spread_on_sphere

    p = spread_on_sphere(k, dim, radius=2.0)
    torch.testing.assert_close(p.norm(dim=1), torch.full((k,), 2.0))
    cos = (p @ p.T / 4).masked_fill(torch.eye(k, dtype=torch.bool), -1)
    if dim == 2:  # k evenly spaced angles: nearest neighbour at exactly 360/k degrees
        assert torch.rad2deg(torch.arccos(cos.max())).item() == pytest.approx(360 / k, abs=1.0)
    else:
        assert cos.max() < 0.5  # no two means within 60 degrees
    torch.testing.assert_close(spread_on_sphere(k, dim), spread_on_sphere(k, dim), rtol=0, atol=0)
