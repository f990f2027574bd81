"""The contract every registered model honours (one parametrized test over the registry).

What is checked follows what each model *declares* (:class:`aelab.protocol.Capabilities`): every
model trains on its batches, saves and loads; reconstructing, encoding and sampling models are
checked for those too, and a model that cannot sample must refuse with a clear error.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import TINY_GRID, TINY_SHAPE, tiny_inputs, tiny_overrides, train_steps

import aelab
from aelab.batch import Batch
from aelab.protocol import Model, build_model, from_pretrained, model_config

MODELS = aelab.MODELS.names()


def _kinds(name: str) -> tuple[str, ...]:
    """Backbone kinds to test: both for models with a ``backbone`` (vector codes), one for the rest."""
    fields = {f.name for f in dataclasses.fields(aelab.MODELS.get(name).config_cls)}
    if "decoder" in fields:  # text families: both decoders
        return ("lstm", "cnn")
    return ("mlp", "conv") if "backbone" in fields else ("own",)


CASES = [(m, k) for m in MODELS for k in _kinds(m)]
#: the image families (declared by their registry entries): their outputs have image shapes
IMAGE_CASES = [(m, k) for m, k in CASES if aelab.MODELS.get(m).figures == "images"]
TEXT_CASES = [(m, k) for m, k in CASES if aelab.MODELS.get(m).family == "text"]
SEQUENCE_CASES = [(m, k) for m, k in CASES if aelab.MODELS.get(m).family == "sequence"]


def _case(param: tuple[str, str]) -> tuple[Model, Batch]:
    name, kind = param
    return build_model(name, **tiny_overrides(name, kind)), tiny_inputs(name)


@pytest.fixture(params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def case(request) -> tuple[Model, Batch]:
    return _case(request.param)


@pytest.fixture(params=IMAGE_CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def image_case(request) -> tuple[Model, Batch]:
    return _case(request.param)


@pytest.fixture(params=TEXT_CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def text_case(request) -> tuple[Model, Batch]:
    return _case(request.param)


@pytest.fixture(params=SEQUENCE_CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def sequence_case(request) -> tuple[Model, Batch]:
    return _case(request.param)


def _expected_latent_shape(model) -> tuple[int, ...]:
    """(6,) for the tiny vector-code configs; models with code grids declare them, flattened."""
    if not model.capabilities.codes:
        return (6,)
    assert len(model.code_shapes) == len(model.num_codes) == len(model.latent_shapes)
    return (sum(math.prod(s) for s in model.latent_shapes),)


def test_registry_is_not_empty():
    assert {"ae", "dae", "sparse_ae", "ksparse_ae", "cae", "vqvae", "vqvae2", "pixelcnn", "pixelsnail",
            "vqvae2_prior"} <= set(MODELS)


def test_every_model_declares_its_capabilities_and_name(case):
    model, _ = case
    assert isinstance(model, Model) and isinstance(model.capabilities, aelab.Capabilities)
    assert model.name in aelab.MODELS
    if model.capabilities.latent_prior:
        assert model.capabilities.latent and model.capabilities.sample


def test_finite_per_example_loss(case):
    model, batch = case
    lo = model.loss(batch, step=0)
    assert lo.per_example.shape == (len(batch),)
    assert torch.isfinite(lo.loss) and torch.isfinite(lo.per_example).all()
    assert all(v.dim() == 0 for v in lo.terms.values())


def test_image_models_shapes(image_case):
    model, batch = image_case
    caps = model.capabilities
    assert caps.images
    out = model(batch.x, step=0)
    assert model.latent_shape == _expected_latent_shape(model)
    assert out.z.shape == (5, *model.latent_shape)
    assert model.encode(batch.x).mean.shape == (5, *model.latent_shape)
    assert out.px_z.event_shape == TINY_SHAPE and out.px_z.batch_shape == (5,)
    assert out.qz_x.batch_shape == (5,)
    assert model.objective(out, model, 0).per_example.shape == (5,)
    assert caps.reconstruct and model.reconstruct(batch.x).shape == batch.x.shape


def test_text_models_shapes(text_case):
    """Sentences in, one value per sentence out; samples and reconstructions are token ids."""
    model, batch = text_case
    caps = model.capabilities
    assert caps.text and not caps.images and caps.sample
    drawn = model.sample(4, temperature=0)
    assert drawn.shape[0] == 4 and drawn.shape[1] <= model.config.max_len and drawn.dtype == torch.long
    assert int(drawn.max()) < model.config.vocab_size
    if caps.latent:
        out = model(batch.x, step=0)
        assert out.z.shape == (5, *model.latent_shape) and out.qz_x.batch_shape == (5,)
        assert out.px_z.log_prob(batch.x).shape == (5,)
        rec = model.reconstruct(batch.x)
        assert rec.shape[0] == 5 and rec.shape[1] <= batch.x.shape[1]


def test_sequence_models_shapes(sequence_case):
    """Sequences of frames in, one value per sequence out; rollouts are frames after the context."""
    model, batch = sequence_case
    assert model.capabilities.sequence and not model.capabilities.images
    frames = model.rollout(batch.x[:, :2], [1, 2, 1], samples=3)
    assert frames.shape == (3, 5, 3, *TINY_SHAPE) and torch.isfinite(frames).all()
    assert model.sequence_bound(batch.x).per_example.shape == (5,)


def test_gradients_reach_every_parameter(case):
    model, batch = case
    model.loss(batch, step=0).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gradient is all zero"


def test_eval_is_deterministic(case):
    """Same seed, same result (stochastic models sample z even in eval); reconstructions use E[z|x]."""
    model, batch = case
    model.eval()
    torch.manual_seed(0)
    a = model.loss(batch).per_example
    torch.manual_seed(0)
    b = model.loss(batch).per_example
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if model.capabilities.reconstruct:
        torch.testing.assert_close(model.reconstruct(batch.x), model.reconstruct(batch.x), rtol=0, atol=0)


def test_save_load_round_trip(case, tmp_path):
    model, batch = case
    model.eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = from_pretrained(tmp_path)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert loaded.config == model.config and loaded.name == model.name
    state = loaded.state_dict()
    for k, v in model.state_dict().items():  # parameters and buffers (e.g. codebook statistics)
        assert torch.equal(state[k], v), k
    torch.manual_seed(0)
    a = loaded.loss(batch).per_example
    torch.manual_seed(0)
    torch.testing.assert_close(a, model.loss(batch).per_example, rtol=0, atol=0)
    if model.capabilities.latent:
        torch.testing.assert_close(loaded.encode(batch.x).mean, model.encode(batch.x).mean, rtol=0, atol=0)


def test_a_directly_built_model_of_a_registered_class_saves_loadably(tmp_path):
    model = aelab.models.VQVAE(model_config("vqvae", tiny_overrides("vqvae")))
    model.save_pretrained(tmp_path)
    assert from_pretrained(tmp_path).name == "vqvae"


def test_sample_or_refuse(case):
    model, _ = case
    if not model.capabilities.sample:
        with pytest.raises(ValueError, match="prior"):
            model.sample(4)
    elif model.capabilities.images:
        assert model.sample(4).shape == (4, *TINY_SHAPE)
    elif model.capabilities.text:  # sentences of token ids, at most max_len long
        drawn = model.sample(4)
        assert drawn.shape[0] == 4 and drawn.shape[1] <= model.config.max_len
    else:  # code priors draw code grids (VQ-VAE-2's: top and bottom)
        drawn = model.sample(4)
        grids = drawn if isinstance(drawn, tuple) else (drawn,)
        assert grids[-1].shape == (4, *TINY_GRID)


def test_one_training_step_lowers_loss_on_a_fixed_batch(case):
    model, batch = case
    before, after = train_steps(model, batch, steps=20, lr=1e-2)
    assert after < before
