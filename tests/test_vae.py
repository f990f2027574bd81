"""VAE core: KL analytic vs Monte Carlo, free bits and annealing exactly as specified, likelihoods."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, StudentT

from aelab.distributions import DiscretizedLogistic
from aelab.losses.terms import KLDivergence, free_bits_clamp, kl_per_dimension, kl_per_example
from aelab.models.base import build_model
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
    lo = model.loss(x)
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
