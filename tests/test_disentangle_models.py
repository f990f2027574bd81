"""The disentanglement_lib study's models (beta-TCVAE, FactorVAE, DIP-VAE, AnnealedVAE): each term
against an independent hand computation, the models' objectives, FactorVAE's two players, exact
resume, and short trainings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import fit_until_interrupted, tiny_inputs, tiny_overrides, train_steps
from torch.distributions import Independent, Normal, kl_divergence

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.data.base import DataConfig, TensorImageDataset, load_data
from aelab.losses.terms import (
    CapacityKL,
    DensityRatioTC,
    DIPCovariancePenalty,
    DiscriminatorLoss,
    KLDecomposition,
    dip_covariance,
    kl_decomposition,
    permute_dims,
)
from aelab.metrics.reconstruction import evaluate_reconstruction
from aelab.models.disentangle import AnnealedVAEConfig, DIPVAEConfig, FactorVAEConfig
from aelab.outputs import ModelOutput
from aelab.protocol import build_model, from_pretrained
from aelab.schedules import linear
from aelab.training.trainer import Trainer, TrainerConfig

SHAPE = (1, 12, 10)
MODELS = ("beta_tcvae", "factor_vae", "dip_vae", "annealed_vae")


def _posterior(b: int, d: int, seed: int = 0, dtype=torch.float64) -> Independent:
    g = torch.Generator().manual_seed(seed)
    return Independent(Normal(torch.randn(b, d, generator=g, dtype=dtype),
                              0.3 + torch.rand(b, d, generator=g, dtype=dtype)), 1)


def _unit(d: int, dtype=torch.float64) -> Independent:
    return Independent(Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)), 1)


def _log_normal(x: float, m: float, s: float) -> float:
    return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)


# --- beta-TCVAE -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1000])
def test_kl_decomposition_matches_brute_force(n):
    """Explicit loops over samples i, posteriors j and dimensions l; M = B or N B (MWS)."""
    b, d = 5, 3
    q = _posterior(b, d)
    z = q.sample()
    mi, tc, dim_kl = kl_decomposition(q, z, _unit(d), dataset_size=n)
    mu, s = q.base_dist.loc, q.base_dist.scale
    m = b * n if n else b
    for i in range(b):
        # log q(z_i) = log 1/M sum_j prod_l q(z_il | x_j); log q(z_il) = log 1/M sum_j q(z_il | x_j)
        joint = math.log(sum(math.exp(sum(_log_normal(z[i, l].item(), mu[j, l].item(), s[j, l].item())
                                          for l in range(d))) for j in range(b)) / m)
        marginals = [math.log(sum(math.exp(_log_normal(z[i, l].item(), mu[j, l].item(), s[j, l].item()))
                                  for j in range(b)) / m) for l in range(d)]
        own = sum(_log_normal(z[i, l].item(), mu[i, l].item(), s[i, l].item()) for l in range(d))
        prior = sum(_log_normal(z[i, l].item(), 0.0, 1.0) for l in range(d))
        assert mi[i].item() == pytest.approx(own - joint, rel=1e-9, abs=1e-9)
        assert tc[i].item() == pytest.approx(joint - sum(marginals), rel=1e-9, abs=1e-9)
        assert dim_kl[i].item() == pytest.approx(sum(marginals) - prior, rel=1e-9, abs=1e-9)


def test_tc_and_disentanglement_lib_differ_by_a_constant():
    """disentanglement_lib's total_correlation drops the normaliser: its value is our minibatch TC
    minus (D - 1) log B, and MWS adds (D - 1) log N; MI and dimension-wise KL move the other way."""
    b, d, n = 6, 4, 737280
    q = _posterior(b, d, seed=3)
    z = q.sample()
    mi0, tc0, dk0 = kl_decomposition(q, z, _unit(d))
    mi_n, tc_n, dk_n = kl_decomposition(q, z, _unit(d), dataset_size=n)
    # disentanglement_lib: log_qz_prob[j, i, l] = log q(z_jl | x_i), then two logsumexps over i
    log_qz_prob = q.base_dist.log_prob(z[:, None]).numpy()
    def lse(a, axis):
        top = a.max(axis=axis, keepdims=True)
        return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)
    dlib = np.mean(lse(log_qz_prob.sum(2), 1) - lse(log_qz_prob, 1).sum(1))
    assert tc0.mean().item() - (d - 1) * math.log(b) == pytest.approx(dlib, rel=1e-10)
    torch.testing.assert_close(tc_n, tc0 + (d - 1) * math.log(n))
    torch.testing.assert_close(mi_n, mi0 + math.log(n))
    torch.testing.assert_close(dk_n, dk0 - d * math.log(n))


def test_kl_decomposition_identity_exactly_and_in_expectation():
    b, d = 4, 3
    q, p = _posterior(b, d, seed=1), _unit(d)
    z = q.sample()
    torch.testing.assert_close(sum(kl_decomposition(q, z, p)), q.log_prob(z) - p.log_prob(z), rtol=0, atol=1e-12)
    total = torch.stack([sum(kl_decomposition(q, q.sample(), p)) for _ in range(4000)]).mean(0)
    torch.testing.assert_close(total, kl_divergence(q, p), rtol=0, atol=0.06)  # analytic KL per example


def test_minibatch_tc_sees_correlation():
    """The minibatch mixture's TC is >= 0 in expectation and large when the codes co-vary."""
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-2, 2, 16, dtype=torch.float64)
    grid = torch.cartesian_prod(t[::4], t[::4])  # 16 means on a grid: independent coordinates
    diagonal = torch.stack([t, t], 1)  # 16 means on a line: z_1 = z_2
    tcs = {}
    for name, mu in {"grid": grid, "diagonal": diagonal}.items():
        q = Independent(Normal(mu, torch.full_like(mu, 0.1)), 1)
        tcs[name] = torch.stack([kl_decomposition(q, q.base_dist.loc + 0.1 * torch.randn(mu.shape, generator=g,
                                                                                    dtype=mu.dtype), _unit(2))[1]
                                 for _ in range(200)]).mean().item()
    assert -0.05 < tcs["grid"] < 0.5 < 1.5 < tcs["diagonal"]


def test_beta_tcvae_objective_by_hand():
    model = build_model("beta_tcvae", image_shape=SHAPE, latent_dim=3, tc_beta=4.0)
    assert model.objective.weights(0) == {"recon": 1.0, "kl": 1.0, "mi": 0.0, "tc": 3.0, "dim_kl": 0.0}
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(0)
    lo = model.loss(Batch(x), 0)
    assert set(lo.terms) == {"recon", "kl", "tc"}  # MI and dimension-wise KL only at evaluation
    torch.manual_seed(0)
    out = model(x, 0)
    hand = -out.px_z.log_prob(x) + kl_divergence(out.qz_x, out.pz) + 3.0 * kl_decomposition(out.qz_x, out.z, out.pz)[1]
    torch.testing.assert_close(lo.per_example, hand.detach())
    with torch.no_grad():
        assert set(model.loss(Batch(x)).terms) == {"recon", "kl", "mi", "tc", "dim_kl"}
    with pytest.raises(ValueError, match="part must be"):
        KLDecomposition("total")
    with pytest.raises(ConfigError, match="dataset_size"):
        build_model("beta_tcvae", dataset_size=-1)


# --- FactorVAE ------------------------------------------------------------------------------------
def test_permute_dims_permutes_each_dimension_independently():
    torch.manual_seed(0)
    z = torch.randn(64, 5)
    p = permute_dims(z)
    for col in range(5):  # each column a permutation of the original column
        assert torch.equal(p[:, col].sort().values, z[:, col].sort().values)
    # ... by a permutation of its own: the row index each value came from differs between columns
    source = torch.stack([(p[:, c, None] == z[None, :, c]).float().argmax(1) for c in range(5)], 1)
    assert all(not torch.equal(source[:, 0], source[:, c]) for c in range(1, 5))
    assert (source == torch.arange(64)[:, None]).float().mean() < 0.2  # not the identity


def _factor_vae(**kw):
    torch.manual_seed(0)
    return build_model("factor_vae", **(tiny_overrides("factor_vae") | kw))


def test_factor_vae_terms_by_hand():
    model = _factor_vae(gamma=7.0)
    disc = model.discriminator
    x = tiny_inputs("factor_vae", 8).x
    out = model(x, 0)
    d_real = disc(out.z)[:, 0]
    # TC estimate: the discriminator's logit log D / (1 - D) at the posterior samples
    tc = DensityRatioTC(disc)(out, model)
    torch.testing.assert_close(tc, d_real)
    torch.testing.assert_close(tc.mean(), torch.log(torch.sigmoid(d_real) / (1 - torch.sigmoid(d_real))).mean())
    # discriminator loss on the same batch's codes, each dimension permuted
    torch.manual_seed(5)
    got = DiscriminatorLoss(disc)(out, model)
    torch.manual_seed(5)
    d_fake = disc(permute_dims(out.z))[:, 0]
    hand = -0.5 * (torch.log(torch.sigmoid(d_real)) + torch.log(1 - torch.sigmoid(d_fake)))
    torch.testing.assert_close(got, hand)
    # the model's loss: recon + kl + gamma tc + discriminator, one sampled z and one permutation
    torch.manual_seed(1)
    lo = model.loss(Batch(x), 0)
    torch.manual_seed(1)
    out = model(x, 0)
    d_real = disc(out.z)[:, 0]
    d_fake = disc(permute_dims(out.z))[:, 0]
    hand = (-out.px_z.log_prob(x) + kl_divergence(out.qz_x, out.pz) + 7.0 * d_real
            + 0.5 * (torch.nn.functional.softplus(-d_real) + torch.nn.functional.softplus(d_fake)))
    torch.testing.assert_close(lo.per_example, hand.detach())
    assert set(lo.terms) == {"recon", "kl", "tc", "discriminator"}


def test_factor_vae_each_player_gets_gradients_from_its_own_loss_only():
    model = _factor_vae()
    x = tiny_inputs("factor_vae", 8).x
    vae, disc = list(model.vae.parameters()), list(model.discriminator.parameters())
    enc = list(model.vae.encoder.parameters()) + list(model.vae.head.parameters())

    def grads(value, params):
        return torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)

    out = model(x, 0)
    tc = DensityRatioTC(model.discriminator)(out, model).mean()
    disc_loss = DiscriminatorLoss(model.discriminator)(out, model).mean()
    assert all(g is None for g in grads(tc, disc))  # the TC trains the encoder, not the discriminator
    assert all(g is not None and g.abs().sum() > 0 for g in grads(tc, enc))
    assert all(g is None for g in grads(disc_loss, vae))  # the discriminator's loss never reaches the VAE
    assert all(g is not None and g.abs().sum() > 0 for g in grads(disc_loss, disc))
    # so the model's one loss has each player's own gradient
    torch.manual_seed(2)
    lo = model.loss(Batch(x), 0)
    total_vae, total_disc = grads(lo.loss, vae), grads(lo.loss, disc)
    torch.manual_seed(2)
    out = model(x, 0)
    obj = model.objective
    vae_loss = sum(w(0) * term(out, model) for name, (term, w) in obj.terms.items() if name != "discriminator")
    own_disc = obj.terms["discriminator"][0](out, model)
    for a, b in zip(total_vae, grads(vae_loss.mean(), vae)):
        torch.testing.assert_close(a, b)
    for a, b in zip(total_disc, grads(own_disc.mean(), disc)):
        torch.testing.assert_close(a, b)


def _images(n: int, seed: int) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8),
                              torch.zeros(n, dtype=torch.long))


def _factor_trainer(run_dir) -> Trainer:
    model = _factor_vae()
    cfg = TrainerConfig(epochs=2, batch_size=16, lr=3e-3, seed=5, progress=False, images=False,
                        checkpoint_every=4, grad_clip=5.0)
    return Trainer(model, _images(90, 0), None, cfg, run_dir=run_dir)


def test_factor_vae_trains_two_optimizers_in_its_own_step():
    t = _factor_trainer(None)
    model = t.model
    assert model.capabilities.own_step and set(t.optimizers) == {"vae", "discriminator"}
    ids = {g: {id(p) for group in opt.param_groups for p in group["params"]} for g, opt in t.optimizers.items()}
    assert ids["discriminator"] == {id(p) for p in model.discriminator.parameters()}
    assert ids["vae"] | ids["discriminator"] == {id(p) for p in model.parameters()} and not ids["vae"] & ids[
        "discriminator"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logs = t._train_step(t.train_data.get_batch(torch.arange(16)))
    assert {"loss", "recon", "kl", "tc", "discriminator", "lr"} <= set(logs)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"vae", "discriminator"}
    assert t.optimizers["discriminator"].param_groups[0]["betas"] == (0.5, 0.9)
    assert t.optimizers["vae"].param_groups[0]["betas"] == t.cfg.betas


def test_factor_vae_resumes_bit_identically(tmp_path):
    straight = _factor_trainer(tmp_path / "a")
    straight.fit()
    first = _factor_trainer(tmp_path / "b")
    fit_until_interrupted(first, 11)  # 6 steps an epoch: the last checkpoint is the periodic one at 8
    resumed = _factor_trainer(tmp_path / "b")
    resumed.fit(resume=True)
    assert resumed.resumed_from == 8
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])]
    loaded = from_pretrained(tmp_path / "b")  # the run's saved model: VAE and discriminator
    assert any(k.startswith("discriminator.") for k in loaded.state_dict())
    assert all(torch.equal(v, b[k]) for k, v in loaded.state_dict().items())


def test_factor_vae_config_checks():
    with pytest.raises(ConfigError, match="discriminator_betas"):
        FactorVAEConfig(discriminator_betas=(0.5, 1.0))
    with pytest.raises(ConfigError, match="discriminator_hidden"):
        FactorVAEConfig(discriminator_hidden=())


# --- DIP-VAE --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_penalties_match_numpy_covariances(kind):
    q = _posterior(7, 3, seed=4)
    mu, var = q.mean.numpy(), q.variance.numpy()
    cov = np.cov(mu, rowvar=False, bias=True)  # Cov[mu(x)], expectations over the batch
    if kind == "ii":
        cov = cov + np.diag(var.mean(0))  # + E[Cov_q(z|x)]: the covariance of q(z)
    np.testing.assert_allclose(dip_covariance(q, kind).numpy(), cov, rtol=1e-12)
    out = ModelOutput(x=torch.zeros(7, 1), x_in=torch.zeros(7, 1), z=q.sample(), qz_x=q, px_z=q)
    off = DIPCovariancePenalty(kind, "off_diagonal")(out, None)
    diag = DIPCovariancePenalty(kind, "diagonal")(out, None)
    assert off.shape == diag.shape == (7,) and bool((off == off[0]).all())  # batch-level, broadcast
    want_off = sum(cov[i, j] ** 2 for i in range(3) for j in range(3) if i != j)
    assert off[0].item() == pytest.approx(want_off, rel=1e-12)
    assert diag[0].item() == pytest.approx(sum((cov[i, i] - 1) ** 2 for i in range(3)), rel=1e-12)


@pytest.mark.parametrize(("kind", "factor", "lambda_d"), [("i", None, 100.0), ("ii", None, 10.0), ("i", 2.0, 20.0)])
def test_dip_vae_objective_by_hand(kind, factor, lambda_d):
    model = build_model("dip_vae", image_shape=SHAPE, latent_dim=3, kind=kind, lambda_d_factor=factor)
    assert model.objective.weights(0) == {"recon": 1.0, "kl": 1.0, "dip_off_diagonal": 10.0, "dip_diagonal": lambda_d}
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(0)
    lo = model.loss(Batch(x), 0)
    torch.manual_seed(0)
    out = model(x, 0)
    c = dip_covariance(out.qz_x, kind)
    penalty = 10.0 * (c - torch.diag(c.diagonal())).pow(2).sum() + lambda_d * (c.diagonal() - 1).pow(2).sum()
    hand = -out.px_z.log_prob(x) + kl_divergence(out.qz_x, out.pz) + penalty
    torch.testing.assert_close(lo.per_example, hand.detach())
    with pytest.raises(ConfigError, match="model.kind"):
        DIPVAEConfig(kind="iii")


# --- AnnealedVAE ----------------------------------------------------------------------------------
def test_capacity_schedule_and_term_by_hand():
    cfg = AnnealedVAEConfig()
    assert (cfg.gamma, cfg.c_max, cfg.c_steps, cfg.beta) == (1000.0, 25.0, 5000, "0.0")
    term = CapacityKL(linear(0.0, 25.0, 5000))
    assert [term.capacity(s) for s in (0, 1000, 2500, 5000, 10**6, None)] == [0.0, 5.0, 12.5, 25.0, 25.0, 25.0]
    q, p = _posterior(6, 2, seed=5), _unit(2)
    loc = q.base_dist.loc.clone().requires_grad_(True)
    q = Independent(Normal(loc, q.base_dist.scale), 1)
    out = ModelOutput(x=torch.zeros(6, 1), x_in=torch.zeros(6, 1), z=q.rsample(), qz_x=q, px_z=q, pz=p)
    kl = kl_divergence(q, p)
    for step in (0, 100, 1000, 2500, 5000, None):
        c = term.capacity(step)
        got = term(out, None, step)
        assert got.mean().item() == pytest.approx(abs(kl.mean().item() - c), rel=1e-12)
        # per example: s * (KL_b - C), s the sign of the batch's gap; the gradient of |mean KL - C|
        s = math.copysign(1.0, kl.mean().item() - c)
        torch.testing.assert_close(got, s * (kl - c))
        (g_got,) = torch.autograd.grad(got.mean(), loc, retain_graph=True)
        (g_want,) = torch.autograd.grad((kl.mean() - c).abs(), loc, retain_graph=True)
        torch.testing.assert_close(g_got, g_want)


def test_annealed_vae_objective_by_hand():
    model = build_model("annealed_vae", image_shape=SHAPE, latent_dim=3, c_max=10.0, c_steps=100, gamma=50.0)
    x = torch.rand(6, *SHAPE)
    for step in (0, 30, 100, 500):
        torch.manual_seed(0)
        lo = model.loss(Batch(x), step)
        assert set(lo.terms) == {"recon", "capacity"}  # the plain KL has weight 0
        torch.manual_seed(0)
        out = model(x, step)
        kl = kl_divergence(out.qz_x, out.pz)
        c = min(step / 100, 1.0) * 10.0
        want = (-out.px_z.log_prob(x)).mean() + 50.0 * (kl.mean() - c).abs()
        assert lo.loss.item() == pytest.approx(want.item(), rel=1e-6)
    with torch.no_grad():  # evaluation: C = c_max, the KL logged
        torch.manual_seed(0)
        lo = model.loss(Batch(x))
        torch.manual_seed(0)
        out = model(x)
        assert lo.terms["capacity"].item() == pytest.approx(abs(kl_divergence(out.qz_x, out.pz).mean().item() - 10))
        assert "kl" in lo.terms


# --- every model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, tmp_path):
    model = build_model(name, **tiny_overrides(name))
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config and type(loaded) is type(model)
    batch = tiny_inputs(name)
    torch.manual_seed(0)
    a = loaded.loss(batch).per_example
    torch.manual_seed(0)
    torch.testing.assert_close(a, model.loss(batch).per_example, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_fixed_batch_training_lowers_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, **tiny_overrides(name))
    before, after = train_steps(model, tiny_inputs(name, 16), steps=40, lr=1e-2)
    assert after < before


@pytest.fixture(scope="module")
def dsprites_512():
    splits = load_data(DataConfig(name="dsprites", train_subset=512, test_subset=128, seed=0))
    return splits.train, splits.test


@pytest.mark.parametrize("name", MODELS)
def test_fifty_steps_on_dsprites_lower_the_loss(name, dsprites_512):
    """50 steps at batch 64 on 512 dSprites images with the MLP backbone, through the trainer
    (FactorVAE's own step included); the seeded evaluation objective falls."""
    train, test = dsprites_512
    extra = {"c_max": 5.0, "c_steps": 40} if name == "annealed_vae" else {}
    torch.manual_seed(0)
    model = build_model(name, image_shape=(1, 64, 64), latent_dim=6, backbone={"kind": "mlp", "hidden": (128,)},
                        **extra)
    before = evaluate_reconstruction(model, test, batch_size=128)["loss"]
    cfg = TrainerConfig(epochs=7, max_steps=50, batch_size=64, lr=2e-3, seed=0, progress=False, images=False)
    Trainer(model, train, None, cfg).fit()
    after = evaluate_reconstruction(model, test, batch_size=128)["loss"]
    assert after < 0.7 * before, (before, after)
