"""The contractive penalty's three computations: closed form, exact autograd Jacobian, Hutchinson estimate."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_SHAPE, fit_until_interrupted, tiny_overrides
from torch import nn

from aelab.config import ConfigError
from aelab.data.base import TensorImageDataset
from aelab.losses.terms import (
    affine_code_jacobian_sq_norm,
    encoder_jacobian_sq_norm,
    encoder_jacobian_sq_norm_hutchinson,
)
from aelab.models import build_model
from aelab.nn.backbones import ACTIVATIONS, BackboneConfig, activation_derivative
from aelab.registry import BACKBONES
from aelab.training.trainer import Trainer, TrainerConfig

CODE_ACTIVATIONS = [*ACTIVATIONS.names(), None]  # None: linear codes


def _one_layer_cae(activation: str | None, **kw) -> nn.Module:
    """A CAE whose encoder up to the codes is z = s(W x + b) on the flattened image (Rifai et al.)."""
    return build_model("cae", image_shape=TINY_SHAPE, latent_dim=5, backbone={"kind": "mlp", "hidden": ()},
                       code_activation=activation, **kw).double()


def _jacobians(model, x):
    """The autograd Jacobian of each example's code, ``(B, D, C*H*W)``: the independent reference."""
    return torch.stack([torch.autograd.functional.jacobian(lambda xi: model.encode(xi[None]).mean[0], xi).flatten(1)
                        for xi in x])


@pytest.mark.parametrize("module", [*[ACTIVATIONS.get(n)() for n in ACTIVATIONS.names()], nn.GELU(approximate="tanh"),
                                    nn.LeakyReLU(0.3), nn.ELU(0.7), nn.Identity()], ids=repr)
def test_activation_derivative_matches_autograd(module):
    a = torch.cat([torch.linspace(-6, 6, 101, dtype=torch.float64), torch.randn(50, dtype=torch.float64)])
    a.requires_grad_(True)
    (want,) = torch.autograd.grad(module(a).sum(), a)
    torch.testing.assert_close(activation_derivative(module)(a.detach()), want, rtol=1e-12, atol=1e-14)


def test_every_activation_has_a_derivative_and_unknown_modules_have_none():
    assert all(activation_derivative(ACTIVATIONS.get(n)()) is not None for n in ACTIVATIONS.names())
    assert activation_derivative(nn.Softmax(-1)) is None  # not elementwise: no closed form


@pytest.mark.parametrize("activation", CODE_ACTIVATIONS)
def test_closed_form_equals_the_autograd_jacobian_on_images(activation):
    torch.manual_seed(0)
    model = _one_layer_cae(activation)
    assert model.code_layer() is not None
    x = torch.rand(4, *TINY_SHAPE, dtype=torch.float64, requires_grad=False)
    linear, act = model.code_layer()
    got = affine_code_jacobian_sq_norm(linear, act, x)
    want = _jacobians(model, x).pow(2).sum((1, 2))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # the term the model trains with takes the closed form, and its gradient is the exact one's
    term = model.objective.terms["contractive"][0]
    params = list(model.head.parameters())
    grad = lambda y: torch.autograd.grad(y.sum(), params, allow_unused=True, materialize_grads=True)  # noqa: E731
    closed = grad(term(model(x), model))  # piecewise-linear codes: no gradient reaches the bias
    exact = grad(encoder_jacobian_sq_norm(lambda v: model.encode(v).mean, x))
    for g, e in zip(closed, exact):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


class _CountingEncode:
    def __init__(self, model) -> None:
        self.model, self.encode, self.calls = model, model.encode, 0

    def __call__(self, *a, **kw):
        self.calls += 1
        return self.encode(*a, **kw)


@pytest.mark.parametrize("backbone,jacobian,closed", [
    ({"kind": "mlp", "hidden": ()}, "auto", True),
    ({"kind": "mlp", "hidden": ()}, "exact", False),
    ({"kind": "mlp", "hidden": (16,)}, "auto", False),  # two layers: no closed form
    ({"kind": "conv", "channels": (4,), "fc": 0}, "auto", False),
    ({"kind": "conv", "channels": (4, 8), "fc": 12}, "auto", False),
])
def test_auto_takes_the_closed_form_exactly_when_the_encoder_allows_it(backbone, jacobian, closed):
    model = build_model("cae", image_shape=TINY_SHAPE, latent_dim=3, backbone=backbone, jacobian=jacobian)
    assert (model.code_layer() is not None) == (backbone.get("hidden") == ())
    out = model(torch.rand(2, *TINY_SHAPE))
    model.encode = counting = _CountingEncode(model)  # the autograd paths encode again; the closed form does not
    penalty = model.objective.terms["contractive"][0](out, model)
    assert penalty.shape == (2,) and (counting.calls == 0) == closed
    want = encoder_jacobian_sq_norm(lambda v: counting.encode(v).mean, out.x_in)
    torch.testing.assert_close(penalty, want, rtol=1e-4, atol=1e-6)


def test_linear_codes_and_a_linear_backbone_layer_are_not_confused():
    # codes = W x + b (no activation) have the constant closed form sum ||W_j||^2
    model = _one_layer_cae(None)
    linear, act = model.code_layer()
    assert isinstance(act, nn.Identity)
    x = torch.rand(3, *TINY_SHAPE, dtype=torch.float64)
    torch.testing.assert_close(affine_code_jacobian_sq_norm(linear, act, x), linear.weight.pow(2).sum().expand(3))
    # a hidden layer before the head is a second layer even with linear codes
    assert build_model("cae", image_shape=TINY_SHAPE, latent_dim=3, backbone={"hidden": (8,)},
                       code_activation=None).code_layer() is None


def test_every_registered_encoder_declares_its_dense_layers():
    for name in BACKBONES.names():
        encoder = BACKBONES.get(name)[0](TINY_SHAPE, BackboneConfig(kind=name, channels=(4,), fc=0))
        layers = encoder.dense_layers()
        assert layers is None or all(isinstance(m, nn.Module) for m in layers)


@pytest.mark.parametrize("kernel", [3, 4])
@pytest.mark.parametrize("hw", [(28, 28), (13, 10)])
def test_conv_backbone_batch_norm_and_own_decoder_stack_reach_any_size(kernel, hw):
    # pythae's MNIST decoder style: its own channels, 3x3 kernels (4 -> 7 -> 14 -> 28), no activation
    # after the dense layer, BatchNorm after every conv but the decoder's last
    shape = (2, *hw)
    cfg = BackboneConfig(kind="conv", channels=(4, 8), fc=0, batch_norm=True, decoder_channels=(8, 6, 4),
                         decoder_kernel=kernel, decoder_dense_activation=False)
    encoder, decoder = BACKBONES.get("conv")[0](shape, cfg), BACKBONES.get("conv")[1](3, shape, 5, cfg)
    assert [type(m) for m in encoder.net[:3]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert encoder.dense_layers() is None
    assert len(decoder.dense) == 1 and isinstance(decoder.dense[0], nn.Linear)
    convs = [m for m in decoder.net if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (8, 6, (kernel, kernel)), (6, 4, (kernel, kernel)), (4, 5, (kernel, kernel))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in decoder.net) == 2
    assert isinstance(decoder.net[-1], nn.ConvTranspose2d)
    if hw == (28, 28):
        assert decoder.start == ((8, 4, 4) if kernel == 3 else (8, 3, 3))
    encoder.eval(), decoder.eval()
    x = torch.rand(3, *shape)
    assert encoder(x).shape == (3, encoder.out_features)
    assert decoder(torch.randn(3, 3)).shape == (3, 5, *hw)


def test_conv_backbone_defaults_are_unchanged_and_bad_kernels_refused():
    # the old conv backbone (checkpoints' state-dict keys) is what the defaults still build
    cfg = BackboneConfig(kind="conv", channels=(4, 8), fc=0)
    decoder = BACKBONES.get("conv")[1](3, TINY_SHAPE, 2, cfg)
    assert len(decoder.dense) == 2 and isinstance(decoder.dense[0], nn.Linear) and isinstance(decoder.dense[1], nn.ReLU)
    assert [type(m) for m in decoder.net] == [nn.ConvTranspose2d, nn.ReLU, nn.ConvTranspose2d]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in BACKBONES.get("conv")[0](TINY_SHAPE, cfg).modules())
    with pytest.raises(ValueError, match="decoder_kernel must be 3 or 4, got 5"):
        BackboneConfig(kind="conv", decoder_kernel=5)


def _exact_and_sd(encode, x):
    """Exact ||J||_F^2 per example and the Rademacher estimator's s.d. sqrt(2 sum_{i!=j} (J J^T)_ij^2)."""
    jac = torch.stack([torch.autograd.functional.jacobian(lambda xi: encode(xi[None])[0], xi).flatten(1) for xi in x])
    a = jac @ jac.transpose(1, 2)  # (B, D, D)
    off = a - torch.diag_embed(torch.diagonal(a, dim1=1, dim2=2))
    return jac.pow(2).sum((1, 2)), (2 * off.pow(2).sum((1, 2))).sqrt()


@pytest.mark.parametrize("samples", [1, 4])
def test_hutchinson_is_unbiased_for_every_example(samples):
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 4), nn.Sigmoid()).double()
    x = torch.randn(5, 1, 3, 4, dtype=torch.float64)
    exact, sd = _exact_and_sd(enc, x)
    draws = 4000  # the batch repeated: every row draws probes of its own
    est = encoder_jacobian_sq_norm_hutchinson(enc, x.repeat(draws, 1, 1, 1), samples, create_graph=False)
    est = est.view(draws, 5)
    se = sd / math.sqrt(samples * draws)  # standard error of the mean of the draws
    assert ((est.mean(0) - exact).abs() < 4 * se).all(), ((est.mean(0) - exact) / se).tolist()
    # the spread is the stated one: variance 2 sum_{i != j} A_ij^2 / samples (within 10% at 4000 draws)
    torch.testing.assert_close(est.std(0), sd / math.sqrt(samples), rtol=0.1, atol=0)
    assert (est > 0).all()


def test_hutchinson_is_exact_with_orthogonal_jacobian_rows():
    # J = diag(s') W with orthogonal rows of W: A = J J^T is diagonal, so every draw is exact
    w, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lin = nn.Linear(6, 4).double()
    with torch.no_grad():
        lin.weight.copy_(w[:4])
    enc = nn.Sequential(lin, nn.Sigmoid())
    x = torch.randn(8, 6, dtype=torch.float64)
    got = encoder_jacobian_sq_norm_hutchinson(enc, x, 1, create_graph=False)
    torch.testing.assert_close(got, affine_code_jacobian_sq_norm(lin, nn.Sigmoid(), x), rtol=1e-12, atol=1e-14)


def test_hutchinson_trains_with_estimates_and_evaluates_exactly():
    torch.manual_seed(0)
    model = build_model("cae", **tiny_overrides("cae"), jacobian="hutchinson", jacobian_samples=2).double()
    x = torch.rand(3, *TINY_SHAPE, dtype=torch.float64)
    term = model.objective.terms["contractive"][0]
    exact = encoder_jacobian_sq_norm(lambda v: model.encode(v).mean, x, create_graph=False)
    a, b = term(model(x), model), term(model(x), model)
    assert a.requires_grad and not torch.equal(a, b)  # two draws
    a.sum().backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    state = torch.get_rng_state()
    with torch.no_grad():
        torch.testing.assert_close(term(model(x), model), exact, rtol=1e-12, atol=1e-14)
    assert torch.equal(torch.get_rng_state(), state)  # evaluation draws nothing


@pytest.mark.parametrize("field,value", [("jacobian", "fast"), ("jacobian_samples", 0)])
def test_bad_jacobian_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        build_model("cae", **tiny_overrides("cae"), **{field: value})


@pytest.mark.parametrize("jacobian,hidden", [("auto", ()), ("hutchinson", (16,))])
def test_resume_is_bit_identical(jacobian, hidden, tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 256, (60, *TINY_SHAPE), generator=g, dtype=torch.uint8),
                              torch.randint(0, 3, (60,), generator=g))
    cfg = TrainerConfig(epochs=2, batch_size=16, checkpoint_every=3, log_every=1, images=False, progress=False,
                        seed=7)

    def model(seed):
        torch.manual_seed(seed)
        return build_model("cae", image_shape=TINY_SHAPE, latent_dim=4, backbone={"kind": "mlp", "hidden": hidden},
                           jacobian=jacobian, jacobian_samples=2)

    full = Trainer(model(0), data, None, cfg, run_dir=tmp_path / "a")
    full.fit()
    first = Trainer(model(0), data, None, cfg, run_dir=tmp_path / "b")
    fit_until_interrupted(first, 5)
    resumed = Trainer(model(99), data, None, cfg, run_dir=tmp_path / "b")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 8
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
