"""The contract every registered model honours (one parametrized test over the registry)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import TINY_SHAPE, tiny_overrides, train_steps

import aelab
from aelab.models.base import Autoencoder, build_model

MODELS = aelab.MODELS.names()


def _kinds(name: str) -> tuple[str, ...]:
    """Backbone kinds to test: both for models with a ``backbone`` (vector codes), one for the rest."""
    fields = {f.name for f in dataclasses.fields(aelab.MODELS.get(name).config_cls)}
    return ("mlp", "conv") if "backbone" in fields else ("own",)


@pytest.fixture(params=[(m, k) for m in MODELS for k in _kinds(m)], ids=lambda p: f"{p[0]}-{p[1]}")
def model(request) -> Autoencoder:
    name, kind = request.param
    return build_model(name, **tiny_overrides(name, kind))


def _expected_latent_shape(model) -> tuple[int, ...]:
    """(6,) for the tiny vector-code configs; VQ models declare their quantised grids, flattened."""
    if getattr(model, "code_shapes", None) is None:
        return (6,)
    assert len(model.code_shapes) == len(model.num_codes) == len(model.latent_shapes)
    return (sum(math.prod(s) for s in model.latent_shapes),)


def test_registry_is_not_empty():
    assert {"ae", "dae", "sparse_ae", "ksparse_ae", "cae", "vqvae", "vqvae2"} <= set(MODELS)


def test_shapes_and_finite_loss(model, tiny_batch):
    out = model(tiny_batch, step=0)
    assert model.latent_shape == _expected_latent_shape(model)
    assert out.z.shape == (5, *model.latent_shape)
    assert model.encode(tiny_batch).mean.shape == (5, *model.latent_shape)
    assert out.px_z.event_shape == TINY_SHAPE and out.px_z.batch_shape == (5,)
    assert out.qz_x.batch_shape == (5,)
    lo = model.objective(out, model, 0)
    assert lo.per_example.shape == (5,)
    assert torch.isfinite(lo.loss)
    assert model.reconstruct(tiny_batch).shape == tiny_batch.shape


def test_gradients_reach_every_parameter(model, tiny_batch):
    model.loss(tiny_batch, step=0).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gradient is all zero"


def test_eval_is_deterministic(model, tiny_batch):
    """Same seed, same result (stochastic models sample z even in eval); reconstructions use E[z|x]."""
    model.eval()
    torch.manual_seed(0)
    a = model.loss(tiny_batch).per_example
    torch.manual_seed(0)
    b = model.loss(tiny_batch).per_example
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(model.reconstruct(tiny_batch), model.reconstruct(tiny_batch), rtol=0, atol=0)


def test_save_load_round_trip(model, tiny_batch, tmp_path):
    model.eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Autoencoder.from_pretrained(tmp_path)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert loaded.config == model.config and loaded.name == model.name
    state = loaded.state_dict()
    for k, v in model.state_dict().items():  # parameters and buffers (e.g. codebook statistics)
        assert torch.equal(state[k], v), k
    torch.testing.assert_close(loaded.reconstruct(tiny_batch), model.reconstruct(tiny_batch), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode(tiny_batch).mean, model.encode(tiny_batch).mean, rtol=0, atol=0)


def test_decode_prior_samples_or_refuse(model):
    if model.prior is None:
        with pytest.raises(ValueError, match="no prior"):
            model.sample(4)
    else:
        assert model.sample(4).shape == (4, *TINY_SHAPE)


def test_one_training_step_lowers_loss_on_a_fixed_batch(model, tiny_batch):
    before, after = train_steps(model, tiny_batch, steps=20, lr=1e-2)
    assert after < before
