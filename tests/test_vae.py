"""VAE core: KL analytic vs Monte Carlo, free bits and annealing exactly as specified, likelihoods."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, StudentT

from aelab.batch import Batch
from aelab.distributions import DiscretizedLogistic
from aelab.losses.terms import KLDivergence, free_bits_clamp, kl_per_dimension, kl_per_example
from aelab.models import build_model
from aelab.outputs import ModelOutput


def _q(b=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Independent(Normal(torch.randn(b, d, generator=g), torch.rand(b, d, generator=g) + 0.3), 1)


def test_analytic_kl_matches_monte_carlo():
    q = _q()
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    analytic = kl_per_example(q, p, q.rsample())
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    torch.testing.assert_close(analytic, mc, rtol=0.02, atol=0.01)
    # closed form of KL(N(mu, s^2) || N(0, 1)) = 0.5 sum(mu^2 + s^2 - 1 - log s^2)
    mu, s = q.base_dist.loc, q.base_dist.scale
    torch.testing.assert_close(analytic, 0.5 * (mu**2 + s**2 - 1 - 2 * s.log()).sum(-1))


def test_monte_carlo_fallback_for_unregistered_pairs():
    q = _q()
    p = Independent(StudentT(torch.tensor(3.0), torch.zeros(3), torch.ones(3)), 1)
    z = q.rsample()
    torch.testing.assert_close(kl_per_example(q, p, z), q.log_prob(z) - p.log_prob(z))
    # and the estimator is unbiased: its mean over many samples converges
    zs = q.sample((100_000,))
    est = (q.log_prob(zs) - p.log_prob(zs)).mean(0)
    assert (est > 0).all()


def test_kl_per_dimension_sums_to_total():
    q, p = _q(), Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    z = q.rsample()
    torch.testing.assert_close(kl_per_dimension(q, p, z).sum(-1), kl_per_example(q, p, z))


def test_free_bits_per_dimension_exact():
    kl = torch.tensor([[0.1, 2.0, 0.3], [0.3, 4.0, 0.1]], requires_grad=True)  # batch means 0.2, 3.0, 0.2
    out = free_bits_clamp(kl, 0.25)
    assert out.mean(0).tolist() == pytest.approx([0.25, 3.0, 0.25])
    out.sum().backward()
    assert kl.grad.tolist() == [[0, 1, 0], [0, 1, 0]]  # no gradient below the threshold


def test_free_bits_term_total_and_dim():
    q, p = _q(b=6, d=3, seed=1), Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    z = q.rsample()
    out = ModelOutput(x=torch.zeros(6, 1), x_in=torch.zeros(6, 1), z=z, qz_x=q, px_z=None, pz=p)
    per_dim = kl_per_dimension(q, p, z).mean(0)
    lam = float(per_dim.median())
    got = KLDivergence(free_bits=lam)(out, None).mean()
    assert got.item() == pytest.approx(torch.clamp(per_dim, min=lam).sum().item())
    total = kl_per_example(q, p, z).mean().item()
    on_total = lambda lam: KLDivergence(free_bits=lam, free_bits_mode="total")(out, None).mean().item()  # noqa: E731
    assert on_total(total + 1) == pytest.approx(total + 1)
    assert on_total(total - 1) == pytest.approx(total)


def test_kl_annealing_weights_exact():
    model = build_model("vae", image_shape=(1, 6, 5), beta="linear(0, 1, 100)")
    weights = [model.objective.weights(s)["kl"] for s in (0, 25, 100, 500, None)]
    assert weights == [0.0, 0.25, 1.0, 1.0, 1.0]
    cyc = build_model("vae", image_shape=(1, 6, 5), beta="cyclical(0, 1, 100, 0.5)")
    assert [cyc.objective.weights(s)["kl"] for s in (0, 25, 50, 99, 100, 125)] == [0, 0.5, 1, 1, 0, 0.5]
    assert build_model("beta_vae", image_shape=(1, 6, 5)).objective.weights(0)["kl"] == 4.0
    with pytest.raises(ValueError, match="cannot parse schedule"):
        build_model("vae", beta="ramp")


def test_beta_weights_the_kl_exactly():
    x = torch.rand(3, 1, 6, 5)
    model = build_model("vae", image_shape=(1, 6, 5), beta="2.5").eval()
    torch.manual_seed(0)
    lo = model.loss(Batch(x))
    assert lo.loss.item() == pytest.approx((lo.terms["recon"] + 2.5 * lo.terms["kl"]).item(), rel=1e-6)


def test_discretized_logistic_is_normalised_and_matches_integral():
    d = DiscretizedLogistic(torch.tensor([0.2, 0.5, 0.97]), torch.tensor([-3.0, -1.0, -5.0]))
    values = torch.arange(256.0) / 255
    probs = d.log_prob(values[:, None]).exp()
    torch.testing.assert_close(probs.sum(0), torch.ones(3), rtol=0, atol=1e-5)
    # an interior bin's mass equals the logistic CDF difference
    mu, s, v = 0.5, math.exp(-1.0), 100 / 255
    cdf = lambda t: 1 / (1 + math.exp(-(t - mu) / s))  # noqa: E731
    assert probs[100, 1].item() == pytest.approx(cdf(v + 0.5 / 255) - cdf(v - 0.5 / 255), rel=1e-4)
    samples = d.sample((1000,))
    assert torch.equal((samples * 255).round(), samples * 255) and samples.min() >= 0 and samples.max() <= 1


def test_vae_sampling_decodes_prior_samples():
    model = build_model("vae", image_shape=(3, 9, 7), latent_dim=4)
    x = model.sample(5)
    assert x.shape == (5, 3, 9, 7) and x.min() >= 0 and x.max() <= 1


# --- the parts on the VAE's hot path: same mathematics as torch's general versions ------------
def test_posterior_scale_parameterisations():
    from aelab.latents.heads import DiagonalGaussianHead, diagonal_normal

    mu, raw = torch.randn(4, 3), torch.tensor([[-30.0, 0.5, 30.0]]).expand(4, 3).clone().requires_grad_()
    q = diagonal_normal(mu, raw, "log_sigma")
    torch.testing.assert_close(q.base_dist.scale[0], torch.tensor([-10.0, 0.5, 10.0]).exp())
    q = diagonal_normal(mu, raw, "log_var")
    torch.testing.assert_close(q.base_dist.scale[0], torch.tensor([-10.0, 0.25, 10.0]).exp())
    q.base_dist.scale.sum().backward()  # the guard passes no gradient where it binds
    assert raw.grad[0, 0] == 0 and raw.grad[0, 2] == 0 and raw.grad[0, 1] > 0
    with pytest.raises(ValueError, match="log_sigma, log_var.*'softplus'"):
        diagonal_normal(mu, raw, "softplus")
    head = DiagonalGaussianHead(5, 3, scale="log_var")
    h = torch.randn(2, 5)
    out = head.linear(h)
    torch.testing.assert_close(head(h).base_dist.scale, (out[:, 3:] / 2).exp())
    with pytest.raises(Exception, match="model.posterior_scale: expected one of log_sigma, log_var"):
        build_model("vae", posterior_scale="std")


def test_bernoulli_image_log_prob_is_torchs():
    from torch.distributions import Bernoulli

    from aelab.likelihoods import BernoulliImage

    logits = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 4
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)  # soft targets, as grey images are scored
    mine = BernoulliImage(Bernoulli(logits=logits, validate_args=False), 3, validate_args=False)
    ref = Independent(Bernoulli(logits=logits, validate_args=False), 3)
    torch.testing.assert_close(mine.log_prob(x), ref.log_prob(x))
    xb = x[:1].expand(2, 6, 1, 4, 4)  # a value of another shape broadcasts like torch's
    torch.testing.assert_close(mine.log_prob(xb), ref.log_prob(xb))
    assert mine.log_prob(x).shape == (6,) and torch.equal(mine.mean, ref.mean)


def test_objective_weights_and_switched_off_terms():
    from aelab.losses.objective import Objective

    x = torch.zeros(3, 1, 2, 2)
    out = ModelOutput(x=x, x_in=x, z=torch.zeros(3, 2), qz_x=None, px_z=None)
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5, 2.0])
    obj = Objective({"a": (lambda o, m: a, 1.0), "b": (lambda o, m: b, 2.0)})
    res = obj(out, None)
    torch.testing.assert_close(res.per_example, a + 2 * b)
    torch.testing.assert_close(res.loss, (a + 2 * b).mean())
    off = Objective({"a": (lambda o, m: a, 0.0)})(out, None)  # every term off: a zero loss, no terms
    assert off.loss.item() == 0.0 and off.per_example.shape == (3,) and off.terms == {}


def test_float32_region_is_free_outside_autocast():
    from contextlib import nullcontext

    from aelab.nn.precision import float32_region

    x = torch.randn(2, 2)
    assert isinstance(float32_region(x), nullcontext)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with float32_region(x):
            assert (x @ x).dtype == torch.float32
        assert (x @ x).dtype == torch.bfloat16


def test_short_kl_to_the_unit_normal_equals_torchs_general_formula():
    from torch.distributions import kl_divergence

    from aelab.distributions import DiagonalNormal, UnitNormal
    from aelab.latents.heads import diagonal_normal
    from aelab.priors.base import StandardNormal

    gen = torch.Generator().manual_seed(0)
    f64 = {"generator": gen, "dtype": torch.float64}
    mu, raw = torch.randn(5, 4, **f64), torch.randn(5, 4, **f64)
    q = diagonal_normal(mu, raw, "log_var")
    assert isinstance(q.base_dist, DiagonalNormal)
    pz = StandardNormal(4).double()()
    assert isinstance(pz.base_dist, UnitNormal)
    unit = Normal(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    general = kl_divergence(Independent(Normal(mu, q.base_dist.scale), 1), Independent(unit, 1))
    torch.testing.assert_close(kl_divergence(q, pz), general)
    # a plain Normal posterior takes the same short form (with its log); batch shapes broadcast
    plain = Normal(mu, q.base_dist.scale)
    torch.testing.assert_close(kl_divergence(plain, UnitNormal(torch.zeros(3, 5, 4), torch.ones(3, 5, 4))),
                               kl_divergence(plain, Normal(0.0, 1.0)).expand(3, 5, 4), check_dtype=False)
    # and the Monte-Carlo estimate agrees
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - pz.log_prob(z)).mean(0)
    torch.testing.assert_close(mc, kl_divergence(q, pz), atol=0.02, rtol=0.02)
    # expand keeps the log-scale
    e = q.base_dist.expand((2, 5, 4))
    assert isinstance(e, DiagonalNormal) and e.log_scale.shape == (2, 5, 4)
