"""Normalizing flows against independent computations.

Log-determinants vs autograd Jacobians, exact inverses, MADE's autoregressive property, the IAF
posterior's density vs the change-of-variables formula written out by hand, the flow prior's
normalisation on a grid, and the flow models under the registry contract and in training.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_SHAPE, tiny_inputs, tiny_overrides, train_steps

# the registry contract, reused verbatim for the flow prior (which is a config, not a model name):
# collected here, these tests take this module's ``case`` and ``image_case`` fixtures below
from test_contract import (  # noqa: F401
    test_eval_is_deterministic,
    test_every_model_declares_its_capabilities_and_name,
    test_finite_per_example_loss,
    test_gradients_reach_every_parameter,
    test_image_models_shapes,
    test_one_training_step_lowers_loss_on_a_fixed_batch,
    test_sample_or_refuse,
    test_save_load_round_trip,
)
from torch.autograd.functional import jacobian
from torch.distributions import kl_divergence
from torch.distributions.transforms import Transform

from aelab.batch import Batch
from aelab.config import ConfigError, apply_overrides
from aelab.flows import MADE, FlowDistribution, IAFTransform, MAFTransform, ReversePermutation, stack_flow
from aelab.flows.transforms import IAF_GATE_BIAS
from aelab.latents.iaf import IAFHead
from aelab.models import Autoencoder, build_model
from aelab.models.vae import VAEConfig
from aelab.priors import PriorConfig, build_prior
from aelab.priors.flow import FlowPrior
from aelab.registry import PRIORS

D, C, B = 5, 3, 4
F64 = torch.float64


def _randomise(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Replace the near-identity init by sizeable random weights, so tests see a real flow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def _made(context: int = 0, depth: int = 2, seed: int = 0) -> MADE:
    return _randomise(MADE(D, 16, context=context, depth=depth).double(), 0.5, seed)


def _transform(kind: str, context: int, cache_size: int = 1) -> Transform:
    if kind == "reverse":
        return ReversePermutation(cache_size=cache_size)
    h = torch.randn(B, context, dtype=F64) if context else None
    return {"iaf": IAFTransform, "maf": MAFTransform}[kind](_made(context), h, cache_size=cache_size)


TRANSFORMS = [("iaf", 0), ("iaf", C), ("maf", 0), ("maf", C), ("reverse", 0)]
IDS = [f"{k}-context{c}" for k, c in TRANSFORMS]


def _per_example_jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """``(B, D, D)`` Jacobians of a batched map, checking that examples do not interact."""
    j = jacobian(f, x)  # (B, D, B, D)
    blocks = torch.stack([j[b, :, b, :] for b in range(x.shape[0])])
    off = j.clone()
    for b in range(x.shape[0]):
        off[b, :, b, :] = 0
    assert off.abs().max() == 0, "examples of a batch must be transformed independently"
    return blocks


# --- transforms ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "context"), TRANSFORMS, ids=IDS)
def test_log_abs_det_jacobian_matches_autograd(kind, context):
    t = _transform(kind, context)
    plain = t.with_cache(0)  # what autograd differentiates must not hit the cache
    x = torch.randn(B, D, dtype=F64)
    y = t(x)
    sign, logdet = torch.linalg.slogdet(_per_example_jacobian(plain._call, x))
    assert (sign != 0).all()
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), logdet)  # cached log-det
    torch.testing.assert_close(t.log_abs_det_jacobian(x.clone(), y.clone()), logdet)  # recomputed
    # the inverse direction, Jacobian of the (sequential, for IAF) inverse itself
    _, inv_logdet = torch.linalg.slogdet(_per_example_jacobian(plain._inverse, y.detach().clone()))
    torch.testing.assert_close(inv_logdet, -logdet)
    torch.testing.assert_close(t.inv.log_abs_det_jacobian(y, x), -logdet)


@pytest.mark.parametrize(("kind", "context"), TRANSFORMS, ids=IDS)
def test_inverse_is_exact_without_the_cache(kind, context):
    t = _transform(kind, context)
    x = torch.randn(B, D, dtype=F64)
    y = t(x)
    assert t.inv(y) is x  # the cache: what log_prob of a fresh rsample uses
    torch.testing.assert_close(t.inv(y.clone()), x, rtol=0, atol=1e-10)  # fresh tensor: exact inverse
    y2 = torch.randn(B, D, dtype=F64)
    torch.testing.assert_close(t(t.inv(y2).clone()), y2, rtol=0, atol=1e-10)
    assert t.domain.event_dim == t.codomain.event_dim == 1 and t.bijective


@pytest.mark.parametrize("context", [0, C])
@pytest.mark.parametrize("depth", [1, 3])
def test_made_is_autoregressive(context, depth):
    made = _made(context, depth, seed=1)
    h = torch.randn(context, dtype=F64) if context else None
    z = torch.randn(D, dtype=F64)
    for j in jacobian(lambda v: made(v, h), z):  # shift and scale, each (D, D): d out_i / d z_j
        assert torch.equal(j.triu(), torch.zeros_like(j)), "output i must not see z_j for j >= i"
        assert (j.tril(-1)[torch.ones(D, D).tril(-1).bool()] != 0).all(), "every z_<i must reach output i"
    if context:  # every output, the first included, depends on the context
        for j in jacobian(lambda c: made(z, c), h):
            assert (j.abs().sum(-1) > 0).all()


def test_made_starts_near_identity_and_checks_its_context():
    made = MADE(D, 16, context=C)
    shift, scale = made(torch.randn(7, D), torch.randn(7, C))
    assert shift.abs().max() < 0.1 and scale.abs().max() < 0.1
    with pytest.raises(ValueError, match="context"):
        made(torch.randn(7, D))
    with pytest.raises(ValueError, match="without a context"):
        MADE(D, 16)(torch.randn(7, D), torch.randn(7, C))


# --- the IAF posterior --------------------------------------------------------------------------
def _head(context: int = C) -> IAFHead:
    head = IAFHead(in_features=7, latent_dim=D, flows=3, hidden=16, context=context).double()
    for i, made in enumerate(head.flows):
        _randomise(made, 0.3, seed=i)
    return head


def _by_hand(head: IAFHead, feats: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z and log q(z) from base noise, written out from the IAF paper (eq. 14-15)."""
    mu, log_sigma, ctx = head.linear(feats).split([D, D, head.context_dim], -1)
    sigma0 = log_sigma.exp()
    u = mu + sigma0 * eps
    log_q = (-0.5 * eps**2 - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
    for i, made in enumerate(head.flows):
        if i:
            u = u.flip(-1)
        m, s = made(u, ctx if head.context_dim else None)
        gate = torch.sigmoid(s + IAF_GATE_BIAS)
        u = gate * u + (1 - gate) * m
        log_q = log_q - gate.log().sum(-1)
    return u, log_q


@pytest.mark.parametrize("context", [0, C])
def test_iaf_log_prob_is_the_change_of_variables_formula(context, monkeypatch):
    head, feats = _head(context), torch.randn(B, 7, dtype=F64)
    q = head(feats)
    assert isinstance(q, FlowDistribution) and q.batch_shape == (B,) and q.event_shape == (D,)
    torch.manual_seed(3)
    z = q.rsample()
    torch.manual_seed(3)
    eps = (q.base_dist.rsample() - q.base_dist.mean) / q.base_dist.stddev
    z_hand, log_q_hand = _by_hand(head, feats, eps)
    torch.testing.assert_close(z, z_hand)

    def no_inverse(self, y):
        raise AssertionError("the sequential inverse ran for a value that was just sampled")

    with monkeypatch.context() as patch:
        patch.setattr(IAFTransform, "_inverse", no_inverse)
        with monkeypatch.context() as no_made:  # cache hit: not even a parallel pass is redone
            no_made.setattr(MADE, "forward", lambda *a: pytest.fail("MADE ran again for a cached sample"))
            torch.testing.assert_close(q.log_prob(z), log_q_hand)
        # the code: the flow image of the base mean; computing it keeps the sample's cache
        torch.testing.assert_close(q.mean, _by_hand(head, feats, torch.zeros_like(eps))[0])
        torch.testing.assert_close(q.log_prob(z), log_q_hand)
    # a fresh tensor misses the cache and goes through the exact sequential inverse: same number
    torch.testing.assert_close(q.log_prob(z.clone()), log_q_hand)


def test_iaf_samples_k_per_example_with_the_context_broadcast():
    head, feats = _head(), torch.randn(B, 7, dtype=F64)
    q = head(feats)
    zk = q.rsample((6,))
    lp = q.log_prob(zk)
    assert zk.shape == (6, B, D) and lp.shape == (6, B) and torch.isfinite(lp).all()
    assert q.sample((2,)).shape == (2, B, D) and torch.isfinite(q.sample()).all()
    for b in range(B):  # example b's k samples used example b's context: score each alone
        alone = head(feats[b : b + 1]).log_prob(zk[:, b : b + 1].clone())
        torch.testing.assert_close(alone, lp[:, b : b + 1])


# --- the flow prior -----------------------------------------------------------------------------
def test_flow_prior_is_registered_and_configured():
    assert "flow" in PRIORS
    prior = build_prior(6, PriorConfig(name="flow", flows=3, hidden=8))
    assert isinstance(prior, FlowPrior) and len(prior.flows) == 3
    assert prior.flows[0].output.in_features == 8 and any(p.requires_grad for p in prior.parameters())
    cfg = apply_overrides(VAEConfig(), ["prior.name=flow", "prior.flows=3", "prior.hidden=8"])
    assert cfg.prior == PriorConfig(name="flow", flows=3, hidden=8)
    with pytest.raises(ValueError, match="flows"):
        FlowPrior(4, PriorConfig(name="flow", flows=-1))


def test_flow_prior_normalises_and_samples_what_it_scores():
    prior = FlowPrior(2, PriorConfig(name="flow", flows=3, hidden=16)).double()
    for i, made in enumerate(prior.flows):
        _randomise(made.output, 0.2, seed=i)  # a clearly non-Gaussian density that fits the grid
    pz = prior()
    g = torch.linspace(-9, 9, 241, dtype=F64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    density = pz.log_prob(grid).exp() * (g[1] - g[0]) ** 2
    gauss = torch.distributions.Normal(0.0, 1.0).log_prob(grid).sum(-1).exp() * (g[1] - g[0]) ** 2
    assert (density - gauss).abs().sum() > 0.3, "the test density should be far from N(0, I)"
    assert density.sum().item() == pytest.approx(1.0, abs=1e-3)
    # sequential sampling draws from the density that the parallel pass scores
    mean = (grid * density[:, None]).sum(0)
    std = ((grid - mean) ** 2 * density[:, None]).sum(0).sqrt()
    torch.manual_seed(0)
    s = pz.sample((4000,))
    assert s.shape == (4000, 2) and torch.isfinite(s).all()
    torch.testing.assert_close(s.mean(0), mean, rtol=0, atol=0.1)
    torch.testing.assert_close(s.std(0), std, rtol=0.06, atol=0)


def test_flow_prior_sample_and_log_prob_shapes():
    pz = build_prior(6, PriorConfig(name="flow"))()
    z = pz.sample((3, 4))
    assert z.shape == (3, 4, 6) and pz.log_prob(z).shape == (3, 4) and torch.isfinite(pz.log_prob(z)).all()


# --- the models ---------------------------------------------------------------------------------
FLOW_PRIOR = {"prior": {"name": "flow", "flows": 2, "hidden": 16}}
FLOW_MODELS = [("vae", "mlp"), ("iaf_vae", "conv")]  # the prior does not see the backbone


@pytest.fixture(params=FLOW_MODELS, ids=lambda p: f"{p[0]}-flow_prior-{p[1]}")
def case(request) -> tuple[Autoencoder, Batch]:
    """The flow prior under the registry contract (imported tests above): vae and iaf_vae with it."""
    name, kind = request.param
    return build_model(name, **tiny_overrides(name, kind), **FLOW_PRIOR), tiny_inputs(name)


@pytest.fixture
def image_case(case) -> tuple[Autoencoder, Batch]:
    return case


@pytest.mark.parametrize(("name", "prior"), [("iaf_vae", {}), ("vae", FLOW_PRIOR), ("iaf_vae", FLOW_PRIOR)],
                         ids=["iaf_vae", "vae-flow_prior", "iaf_vae-flow_prior"])
def test_flow_models_take_the_monte_carlo_kl_and_train(name, prior, tiny_batch):
    model = build_model(name, **tiny_overrides(name), **prior)
    out = model(tiny_batch, step=0)
    with pytest.raises(NotImplementedError):
        kl_divergence(out.qz_x, out.pz)  # so the KL term must take its Monte-Carlo path
    kl = model.objective.terms["kl"][0](out, model)
    torch.testing.assert_close(kl, out.qz_x.log_prob(out.z) - out.pz.log_prob(out.z))
    # cached (training) and fresh (exact inverse) scores of the sample agree in float32 too
    torch.testing.assert_close(out.qz_x.log_prob(out.z), out.qz_x.log_prob(out.z.clone()), rtol=1e-4, atol=1e-4)

    before = [p.detach().clone() for p in model.prior.parameters()]
    start, end = train_steps(model, tiny_batch, steps=15, lr=3e-3)
    assert end < start
    if prior:  # the flow prior trains jointly with the model
        assert any(not torch.equal(a, b) for a, b in zip(before, model.prior.parameters()))


def test_iaf_vae_config():
    m = build_model("iaf_vae", image_shape=TINY_SHAPE, latent_dim=4, flows=3, flow_hidden=8, context_dim=2)
    assert isinstance(m.head, IAFHead) and len(m.head.flows) == 3 and m.head.context_dim == 2
    assert build_model("iaf_vae", image_shape=TINY_SHAPE, free_bits=0.5).config.free_bits_mode == "total"
    with pytest.raises(ConfigError, match="free_bits_mode"):
        build_model("iaf_vae", free_bits=0.5, free_bits_mode="dim")
    plain = build_model("iaf_vae", image_shape=TINY_SHAPE, latent_dim=4, flows=0)  # a diagonal Gaussian
    assert plain.encode(torch.rand(2, *TINY_SHAPE)).mean.shape == (2, 4)


def test_stack_flow_reverses_between_steps():
    steps = stack_flow([MADE(3, 4), MADE(3, 4), MADE(3, 4)], MAFTransform)
    assert [type(t) for t in steps] == [MAFTransform, ReversePermutation] * 2 + [MAFTransform]
