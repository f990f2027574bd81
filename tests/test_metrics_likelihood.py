"""ELBO, IWAE and bits/dim against exact answers: a linear-Gaussian model with a closed-form log p(x)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Distribution, MultivariateNormal

from aelab.data.base import TensorImageDataset
from aelab.metrics.likelihood import (
    bits_per_dim,
    elbo,
    is_discrete_8bit,
    iwae_and_elbo,
    iwae_log_likelihood,
    likelihood_metric,
    log_importance_weights,
)
from aelab.models import build_model
from aelab.protocol import Capabilities, Model
from aelab.training.trainer import Trainer, TrainerConfig

SHAPE = (1, 2, 3)  # P = 6 pixels
SIGMA = 0.5


def _linear_gaussian(exact_posterior: bool, seed: int = 0):
    """z ~ N(0, I_2), x = W z + b + N(0, sigma^2 I_6): the VAE with no hidden layers and a fixed-scale
    Gaussian likelihood. W has orthogonal columns, so the exact posterior is a diagonal Gaussian
    (linear mean, constant scale) that the encoder head can represent exactly.

    Returns the model and the exact marginal p(x) = N(b, W W^T + sigma^2 I).
    """
    g = torch.Generator().manual_seed(seed)
    model = build_model("vae", image_shape=SHAPE, latent_dim=2, backbone={"hidden": ()},
                        likelihood={"name": "gaussian", "scale": SIGMA})
    q, _ = torch.linalg.qr(torch.randn(6, 2, generator=g))
    w = q * torch.tensor([1.5, 0.7])  # orthogonal columns of different lengths
    b = torch.randn(6, generator=g) * 0.3
    dec = model.decoder.net[0]
    enc = model.head.linear
    m = w.T @ w + SIGMA**2 * torch.eye(2)  # diagonal
    a = torch.linalg.solve(m, w.T)  # posterior mean = a (x - b)
    log_sd = 0.5 * torch.log(SIGMA**2 / torch.diagonal(m))
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
        if exact_posterior:
            enc.weight.copy_(torch.cat([a, torch.zeros(2, 6)]))
            enc.bias.copy_(torch.cat([-a @ b, log_sd]))
        else:  # a deliberately poor but overlapping proposal: shifted and too wide
            enc.weight.copy_(torch.cat([0.6 * a, torch.zeros(2, 6)]))
            enc.bias.copy_(torch.cat([-0.6 * a @ b + 0.3, log_sd + 0.7]))
    marginal = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(6))
    return model.eval(), marginal


def _x(n: int, marginal: MultivariateNormal, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return marginal.sample((n,)).view(n, *SHAPE)


@torch.no_grad()
def test_exact_posterior_makes_every_bound_exact():
    model, marginal = _linear_gaussian(exact_posterior=True)
    x = _x(20, marginal)
    exact = marginal.log_prob(x.flatten(1))
    # every importance weight equals p(x): ELBO and IWAE are exact for any k
    torch.testing.assert_close(elbo(model, x, n_samples=3), exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(iwae_log_likelihood(model, x, k=37, chunk=5), exact, atol=1e-4, rtol=0)


@torch.no_grad()
def test_iwae_converges_to_exact_log_likelihood():
    model, marginal = _linear_gaussian(exact_posterior=False)
    x = _x(30, marginal)
    exact = marginal.log_prob(x.flatten(1))
    torch.manual_seed(0)
    gap_elbo = (exact - elbo(model, x, n_samples=2000)).mean().item()
    gaps = []
    for k in (1, 10, 100, 5000):
        torch.manual_seed(k)
        gaps.append((exact - iwae_log_likelihood(model, x, k=k, chunk=256)).mean().item())
    assert gap_elbo > 0.3  # the proposal is poor: the ELBO is clearly loose
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]  # tightens with k
    assert -0.02 < gaps[3] < 0.02  # and reaches log p(x)


def test_iwae_k1_equals_elbo_with_the_same_samples():
    torch.manual_seed(0)
    model = build_model("vae", image_shape=(1, 6, 5), latent_dim=3, backbone={"hidden": (16,)}).eval()
    x = torch.rand(7, 1, 6, 5)
    with torch.no_grad():
        torch.manual_seed(5)
        a = iwae_log_likelihood(model, x, k=1)
        torch.manual_seed(5)
        b = elbo(model, x, n_samples=1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


class _Replay(Distribution):
    """Wraps q(z|x) and hands out pre-drawn samples in order: the same samples whatever the chunking."""

    def __init__(self, q: Distribution, pool: torch.Tensor) -> None:
        self.q, self.pool, self.used = q, pool, 0
        super().__init__(q.batch_shape, q.event_shape, validate_args=False)

    def rsample(self, sample_shape=()):
        m = sample_shape[0]
        z = self.pool[self.used : self.used + m]
        self.used += m
        return z

    def log_prob(self, value):
        return self.q.log_prob(value)


class _ReplayModel(Model):
    """The encode/decode/prior interface of an aelab model, with replayed posterior samples."""

    name = "replay_stand_in"
    capabilities = Capabilities(latent=True, latent_prior=True)

    def __init__(self, model: nn.Module, pool: torch.Tensor) -> None:
        super().__init__()
        self.model, self.pool = model, pool
        self.prior = model.prior

    def encode(self, x, step=None, encoding=True):
        return _Replay(self.model.encode(x, encoding=encoding), self.pool)

    def decode(self, z):
        return self.model.decode(z)


@torch.no_grad()
def test_chunked_iwae_equals_unchunked():
    torch.manual_seed(0)
    model = build_model("vae", image_shape=(1, 6, 5), latent_dim=3, backbone={"hidden": (16,)}).eval()
    x = torch.rand(4, 1, 6, 5)
    k = 50
    q = model.encode(x, encoding=False)
    pool = q.rsample((k,))  # (K, B, D)
    log_w = log_importance_weights(_ReplayModel(model, pool), x, k)
    direct = torch.logsumexp(log_w.double(), 0) - math.log(k)
    for chunk in (None, 1, 7, 50, 64):
        iwae, elbo_k = iwae_and_elbo(_ReplayModel(model, pool), x, k, chunk)
        torch.testing.assert_close(iwae.double(), direct, atol=1e-4, rtol=0)
        torch.testing.assert_close(elbo_k, log_w.mean(0), atol=1e-4, rtol=0)
        assert (iwae >= elbo_k - 1e-5).all()  # log-mean-exp >= mean, for the same samples


@pytest.fixture(scope="module")
def trained_vae():
    """A small VAE trained for a few hundred steps on random MNIST digits, and held-out digits."""
    from aelab.data.base import DataConfig, load_data

    data = load_data(DataConfig(name="mnist-10k", train_subset=1000, test_subset=200))
    torch.manual_seed(0)
    model = build_model("vae", latent_dim=8, backbone={"hidden": (64,)})
    Trainer(model, data.train, None, TrainerConfig(epochs=6, batch_size=25, images=False, progress=False)).fit()
    return model.eval(), data.test


def test_iwae_tightens_with_k_on_a_trained_vae(trained_vae):
    model, test = trained_vae
    x = test.get_batch(torch.arange(len(test))).x
    means = {}
    with torch.no_grad():
        for k in (1, 10, 100):
            runs = []
            for seed in range(3):
                torch.manual_seed(seed)
                iwae, elbo_k = iwae_and_elbo(model, x, k, None)
                assert (iwae >= elbo_k - 1e-4).all()
                runs.append(iwae.mean().item())
            means[k] = sum(runs) / len(runs)
    # the gains are nats, the Monte-Carlo noise of a 200-image, 3-seed average is far smaller
    assert means[1] + 0.5 < means[10] < means[100] - 0.1, means


def test_likelihood_metric(trained_vae):
    model, test = trained_vae
    state = torch.random.get_rng_state()
    a = likelihood_metric(model, test, k=20, limit=50, batch_size=16)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert a == likelihood_metric(model, test, k=20, limit=50, batch_size=16)  # seeded: reproducible
    assert set(a) == {"neg_elbo", "nll_iwae_k20"}  # Bernoulli on grey values: no bits/dim
    assert 0 < a["nll_iwae_k20"] <= a["neg_elbo"]
    assert model.training is False


def test_bits_per_dim_only_for_discrete_likelihoods():
    assert bits_per_dim(784 * math.log(2) * 3.0, 784) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        bits_per_dim(1.0, 0)
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 256, (20, 1, 6, 5), dtype=torch.uint8, generator=g),
                              torch.zeros(20, dtype=torch.long))
    for name, discrete in [("discretized_logistic", True), ("bernoulli", False), ("gaussian", False),
                           ("laplace", False)]:
        torch.manual_seed(0)
        model = build_model("vae", image_shape=(1, 6, 5), latent_dim=2, backbone={"hidden": (8,)},
                            likelihood={"name": name})
        with torch.no_grad():
            px_z = model.decode(torch.randn(3, 2))
        assert is_discrete_8bit(px_z) is discrete, name
        out = likelihood_metric(model, data, k=5)
        assert ("bits_per_dim" in out) is discrete, name
        if discrete:
            assert out["bits_per_dim"] == pytest.approx(out["nll_iwae_k5"] / (30 * math.log(2)))
            assert out["bits_per_dim"] > 0


def test_needs_a_prior():
    model = build_model("ae", image_shape=(1, 6, 5), latent_dim=2, backbone={"hidden": (8,)})
    with pytest.raises(ValueError, match="no prior"):
        iwae_log_likelihood(model, torch.rand(2, 1, 6, 5), k=3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        elbo(build_model("vae", image_shape=(1, 6, 5), latent_dim=2), torch.rand(2, 1, 6, 5), n_samples=0)


def test_iwae_on_token_ids_is_not_truncated_to_integers():
    # a text VAE scores integer token ids; its bounds must keep their fractions
    from aelab.protocol import build_model

    torch.manual_seed(0)
    m = build_model("text_vae", vocab_size=20, embed_dim=8, hidden=16, latent_dim=4).eval()
    x = torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0], [9, 9, 3, 0]])
    with torch.no_grad():
        iwae, elbo_k = iwae_and_elbo(m, x, k=4, chunk=None)
    assert iwae.dtype == elbo_k.dtype == torch.float32
    assert float((iwae - iwae.round()).abs().max()) > 1e-3
    assert bool((iwae >= elbo_k - 1e-5).all())
