"""Latent diagnostics on synthetic cases with known answers, and on a tiny VAE."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Independent,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    kl_divergence,
)
from torch.distributions.transforms import AffineTransform, ExpTransform

from aelab.data.base import TensorImageDataset
from aelab.metrics.latent import (
    active_units,
    collect_latent_statistics,
    kl_summary,
    kl_to_prior,
    latent_diagnostics,
    mutual_information,
    posterior_mean,
)
from aelab.metrics.reconstruction import evaluate_reconstruction
from aelab.models import build_model


def test_active_units_on_codes_with_known_variances():
    g = torch.Generator().manual_seed(0)
    variances = torch.tensor([1.0, 0.5, 0.02, 0.005, 0.0])  # threshold 0.01: three active
    codes = torch.randn(5000, 5, generator=g) * variances.sqrt() + 3.0  # an offset changes nothing
    assert active_units(codes) == {"active_units": 3.0}
    assert active_units(codes, threshold=0.001)["active_units"] == 4.0
    with pytest.raises(ValueError):
        active_units(codes[:1])


def _gaussian_channel(n: int, d: int, noise: float, seed: int = 0):
    """q(z|x_n) = N(mu_n, noise^2 I) with mu_n ~ N(0, I): I(x; z) = d/2 log(1 + 1/noise^2) for
    a continuum of inputs."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g)
    q = Independent(Normal(mu, torch.full((n, d), noise)), 1)
    z = mu + noise * torch.randn(n, d, generator=g)
    return q, z


def test_mutual_information_is_zero_when_q_ignores_x():
    q = Independent(Normal(torch.full((300, 3), 0.7), torch.full((300, 3), 1.3)), 1)
    torch.manual_seed(0)
    z = q.sample()
    out = mutual_information([q], [z])
    assert abs(out["mutual_info"]) < 1e-9
    assert out["mutual_info_max"] == pytest.approx(math.log(300))


def test_mutual_information_matches_the_gaussian_channel():
    q, z = _gaussian_channel(2000, 2, noise=1.0)
    # split into minibatches: the mixture runs over all of them
    qs = [Independent(Normal(q.base_dist.loc[i : i + 300], q.base_dist.scale[i : i + 300]), 1)
          for i in range(0, 2000, 300)]
    out = mutual_information(qs, list(z.split(300)), chunk=128)
    assert out["mutual_info"] == pytest.approx(math.log(2.0), abs=0.06)  # d/2 log(1 + 1) = log 2
    assert out == mutual_information([q], [z])  # the minibatch split is only a memory matter


def test_mutual_information_saturates_at_log_m_for_deterministic_codes():
    q, z = _gaussian_channel(500, 4, noise=1e-3)
    out = mutual_information([q], [z])
    assert math.log(500) - 0.01 < out["mutual_info"] <= out["mutual_info_max"] + 1e-9


def test_kl_per_dimension_sums_to_the_total():
    g = torch.Generator().manual_seed(0)
    q = Independent(Normal(torch.randn(50, 4, generator=g), torch.rand(50, 4, generator=g) + 0.2), 1)
    p = Independent(Normal(torch.zeros(4), torch.ones(4)), 1)
    per_dim = kl_to_prior(q, p)
    assert per_dim.shape == (50, 4)
    torch.testing.assert_close(per_dim.sum(-1), kl_divergence(q, p))
    out = kl_summary(per_dim)
    assert sum(out[f"kl_dim_{j}"] for j in range(4)) == pytest.approx(out["kl_total"])
    assert out["kl_total"] == pytest.approx(kl_divergence(q, p).mean().item(), rel=1e-6)


def test_kl_of_non_factorised_laws_is_a_total():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(10, 3, generator=g)
    q = MultivariateNormal(loc, scale_tril=torch.eye(3) * 0.5)
    p = MultivariateNormal(torch.zeros(3), torch.eye(3))
    kl = kl_to_prior(q, p)
    assert kl.shape == (10,)
    torch.testing.assert_close(kl, kl_divergence(q, p))
    assert set(kl_summary(kl)) == {"kl_total"}


def test_posterior_mean_falls_back_to_monte_carlo():
    # a log-normal as a flow: no closed-form .mean on TransformedDistribution
    base = Normal(torch.zeros(2), torch.full((2,), 0.5))
    q = TransformedDistribution(base, [ExpTransform(), AffineTransform(1.0, 2.0)])
    torch.manual_seed(0)
    m = posterior_mean(q, n_samples=20000)
    torch.testing.assert_close(m, torch.full((2,), 1.0 + 2.0 * math.exp(0.125)), atol=0.03, rtol=0)


def _data(n: int = 120, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, 1, 6, 5), generator=g, dtype=torch.uint8),
                              torch.randint(0, 3, (n,), generator=g))


def test_latent_diagnostics_wrapper():
    torch.manual_seed(0)
    model = build_model("vae", image_shape=(1, 6, 5), latent_dim=4, backbone={"hidden": (16,)})
    data = _data()
    state = torch.random.get_rng_state()
    out = latent_diagnostics(model, data, batch_size=50)
    assert torch.equal(state, torch.random.get_rng_state())
    assert out == latent_diagnostics(model, data, batch_size=50)  # seeded
    assert set(out) == {"kl_dim_0", "kl_dim_1", "kl_dim_2", "kl_dim_3", "kl_total", "active_units", "mutual_info",
                        "mutual_info_max"}
    assert sum(out[f"kl_dim_{j}"] for j in range(4)) == pytest.approx(out["kl_total"])
    # the same analytic KL the objective trains with, on the same examples
    assert out["kl_total"] == pytest.approx(evaluate_reconstruction(model, data, 50)["kl"], rel=1e-5)
    assert 0 <= out["active_units"] <= 4
    # an untrained encoder barely depends on x: the estimate is near 0 (Monte-Carlo noise either side)
    assert -0.05 < out["mutual_info"] <= out["mutual_info_max"] == pytest.approx(math.log(120))
    # a random subset for the MI caps it at log(mi_limit)
    small = latent_diagnostics(model, data, batch_size=50, mi_limit=40)
    assert small["mutual_info_max"] == pytest.approx(math.log(40))
    assert small["kl_total"] == out["kl_total"]


def test_collect_latent_statistics_shapes_and_prior_check():
    torch.manual_seed(0)
    model = build_model("vae", image_shape=(1, 6, 5), latent_dim=3, backbone={"hidden": (8,)})
    stats = collect_latent_statistics(model, _data(), batch_size=32, limit=70)
    assert stats.codes.shape == (70, 3) and stats.kl.shape == (70, 3) and stats.labels.shape == (70,)
    assert [len(z) for z in stats.samples] == [32, 32, 6]
    with pytest.raises(ValueError, match="no prior"):
        collect_latent_statistics(build_model("ae", image_shape=(1, 6, 5), latent_dim=3), _data())


def test_mutual_information_ignores_overflowing_far_components():
    """Cross terms where a flow's inverse overflows count as zero density, not as NaN."""
    from torch.distributions import Independent, Normal

    class Overflowing(Independent):
        def log_prob(self, value):
            lp = super().log_prob(value)
            far = (value - self.base_dist.loc).abs().amax(-1) > 3.0
            return torch.where(far, torch.full_like(lp, float("nan")), lp)

    locs = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    q = Overflowing(Normal(locs, torch.ones(3, 2)), 1)
    z = locs + 0.1
    plain = Independent(Normal(locs, torch.ones(3, 2)), 1)
    got = mutual_information([q], [z])["mutual_info"]
    want = mutual_information([plain], [z])["mutual_info"]
    assert got == pytest.approx(want, abs=1e-6) and got == pytest.approx(math.log(3), abs=1e-3)
