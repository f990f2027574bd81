"""The VQ likelihood bound: reconstruction NLL + code prior NLL, and which bits/dim it is."""

from __future__ import annotations

import math

import pytest
import torch

from aelab.data.base import TensorImageDataset
from aelab.metrics.codes import code_likelihood_metric, vq_bits_per_dim
from aelab.models import build_model
from tests.conftest import TINY_SHAPE, tiny_overrides


def _data(n: int = 7) -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 256, (n, *TINY_SHAPE), generator=g, dtype=torch.uint8),
                              torch.zeros(n, dtype=torch.long))


def _with_prior(name: str, likelihood: str):
    model = build_model(name, **tiny_overrides(name), likelihood={"name": likelihood}).eval()
    if name == "vqvae":
        (h, w), k = model.code_shapes[0], model.num_codes[0]
        model.attach_prior(build_model("pixelcnn", num_codes=k, grid_shape=(h, w), channels=4, layers=1))
    else:
        (ht, wt), (hb, wb) = model.code_shapes
        prior = build_model("vqvae2_prior", top={"num_codes": 8, "grid_shape": (ht, wt), "channels": 4, "heads": 2,
                                                "blocks": 1},
                                 bottom={"num_codes": 8, "grid_shape": (hb, wb), "channels": 4, "layers": 1,
                                         "cond_channels": 4})
        model.attach_prior(*prior.levels)
    return model


def test_bits_per_dim_formula():
    assert vq_bits_per_dim(3.0, 5.0, (2, 2, 1)) == pytest.approx(8 / (4 * math.log(2)))
    with pytest.raises(ValueError):
        vq_bits_per_dim(1.0, 1.0, (0, 2, 2))


@pytest.mark.parametrize(("name", "likelihood", "key"), [
    ("vqvae", "bernoulli", "bits_per_dim_bernoulli"),
    ("vqvae", "discretized_logistic", "bits_per_dim"),
    ("vqvae", "gaussian", None),
    ("vqvae2", "bernoulli", "bits_per_dim_bernoulli"),
])
def test_code_likelihood_matches_an_independent_computation(name, likelihood, key):
    model, data = _with_prior(name, likelihood), _data()
    out = code_likelihood_metric(model, data, batch_size=3)
    x = data.get_batch(torch.arange(len(data))).x
    with torch.no_grad():
        codes = model.encode_codes(x)
        levels = [codes] if isinstance(codes, torch.Tensor) else list(codes)
        recon = -model.decode(model.codes_to_latent(levels)).log_prob(x).double().mean().item()
        log_p = model.prior[0].log_prob(levels[0])
        if len(levels) == 2:
            log_p = log_p + model.prior[1].log_prob(levels[1], cond=levels[0])
        prior = -log_p.double().mean().item()
    assert out["recon_nll"] == pytest.approx(recon, rel=1e-5)
    assert out["prior_nll"] == pytest.approx(prior, rel=1e-5)
    assert out["neg_elbo"] == pytest.approx(recon + prior, rel=1e-5)
    assert {k for k in out if "bits_per_dim" in k} == ({key} if key else set())
    if key:
        assert out[key] == pytest.approx((recon + prior) / (math.prod(TINY_SHAPE) * math.log(2)), rel=1e-5)


def test_code_likelihood_needs_a_code_prior():
    model = build_model("vqvae", **tiny_overrides("vqvae"))
    with pytest.raises(ValueError, match="train-prior"):
        code_likelihood_metric(model, _data())
