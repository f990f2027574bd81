"""Each regulariser checked against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_overrides

from aelab.latents.heads import top_k_mask
from aelab.losses.terms import SparsityKL, encoder_jacobian_sq_norm
from aelab.models import build_model
from aelab.nn.corruption import Corruption, CorruptionConfig


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_contractive_penalty_matches_autograd_jacobian(kind, tiny_batch):
    model = build_model("cae", **tiny_overrides("cae", kind)).double()
    x = tiny_batch.double()
    out = model(x)
    penalty = model.objective.terms["contractive"][0](out, model)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda xi: model.encode(xi[None]).mean[0], x[i])
        assert jac.shape == (6, *x.shape[1:])
        torch.testing.assert_close(penalty[i], jac.pow(2).sum(), rtol=1e-10, atol=1e-12)


def test_contractive_penalty_closed_form_for_sigmoid_layer():
    # one sigmoid layer h = s(Wx + b): ||J||_F^2 = sum_j (h_j (1 - h_j))^2 ||W_j||^2 (Rifai et al.)
    w, b = torch.randn(7, 11, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    x = torch.randn(4, 11, dtype=torch.float64)
    got = encoder_jacobian_sq_norm(lambda v: torch.sigmoid(v @ w.T + b), x, create_graph=False)
    h = torch.sigmoid(x @ w.T + b)
    want = ((h * (1 - h)) ** 2 * w.pow(2).sum(1)).sum(1)
    torch.testing.assert_close(got, want)


def test_contractive_penalty_is_trainable():
    model = build_model("cae", **tiny_overrides("cae"))
    out = model(torch.rand(3, 1, 12, 10))
    model.objective.terms["contractive"][0](out, model).sum().backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0


def test_top_k_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(50, 12, generator=g)
    for k in (1, 3, 12):
        got = top_k_mask(codes, k)
        for row, out in zip(codes, got):
            keep = sorted(range(12), key=lambda j: -row[j].item())[:k]
            want = torch.zeros(12)
            want[keep] = row[keep]
            torch.testing.assert_close(out, want, rtol=0, atol=0)
        assert ((got != 0).sum(1) == k).all()


def test_top_k_gradient_only_through_kept_codes():
    codes = torch.randn(8, 10, requires_grad=True)
    out = top_k_mask(codes, 3)
    (out * torch.randn(8, 10)).sum().backward()
    kept = out.detach() != 0
    assert (codes.grad[~kept] == 0).all()
    assert (codes.grad[kept] != 0).all()


def test_k_schedule_and_alpha_at_encoding():
    model = build_model("ksparse_ae", **tiny_overrides("ksparse_ae"))  # k 5 -> 2 over 10 steps, alpha 2
    x = torch.rand(4, 1, 12, 10)
    nnz = lambda z: (z != 0).sum(1).unique().tolist()  # noqa: E731
    assert nnz(model(x, step=0).z) == [5]
    assert nnz(model(x, step=5).z) == [4]  # round(5 - 3 * 0.5) = round(3.5) = 4 (banker's)
    assert nnz(model(x, step=10).z) == [2]
    assert nnz(model(x).z) == [2]  # evaluation: the schedule's end
    assert nnz(model.encode(x).mean) == [4]  # alpha * k at encoding time


def test_sparsity_kl_matches_formula():
    from aelab.outputs import ModelOutput

    z = torch.rand(6, 4, dtype=torch.float64)
    rho = 0.1
    out = ModelOutput(x=torch.zeros(6, 1), x_in=torch.zeros(6, 1), z=z, qz_x=None, px_z=None)
    got = SparsityKL(rho)(out, None)
    want = 0.0
    for j in range(4):
        r = z[:, j].mean().item()
        want += rho * math.log(rho / r) + (1 - rho) * math.log((1 - rho) / (1 - r))
    assert got.shape == (6,)
    torch.testing.assert_close(got, torch.full((6,), want, dtype=torch.float64))
    out.z = torch.full((6, 4), rho, dtype=torch.float64)
    assert SparsityKL(rho)(out, None).abs().max() < 1e-12  # zero at the target


def test_sparse_ae_codes_are_sigmoid():
    model = build_model("sparse_ae", **tiny_overrides("sparse_ae"))
    z = model(torch.rand(4, 1, 12, 10)).z
    assert ((z > 0) & (z < 1)).all()


@pytest.mark.parametrize("level", [0.1, 0.5])
def test_masking_rate(level):
    x = torch.rand(200, 1, 50, 50) * 0.9 + 0.1  # no zeros in the clean input
    c = Corruption(CorruptionConfig("masking", level)).train()
    rate = (c(x) == 0).float().mean().item()
    assert abs(rate - level) < 0.01
    assert torch.equal(c.eval()(x), x)  # no corruption at evaluation


@pytest.mark.parametrize("level", [0.1, 0.4])
def test_salt_and_pepper_rates(level):
    x = torch.full((200, 1, 50, 50), 0.5)
    y = Corruption(CorruptionConfig("salt_pepper", level)).train()(x)
    assert abs((y == 0).float().mean().item() - level / 2) < 0.01
    assert abs((y == 1).float().mean().item() - level / 2) < 0.01
    assert abs((y == 0.5).float().mean().item() - (1 - level)) < 0.01


def test_gaussian_noise_level():
    x = torch.full((100, 1, 50, 50), 0.5)
    y = Corruption(CorruptionConfig("gaussian", 0.3)).train()(x)
    assert abs((y - x).std().item() - 0.3) < 0.005 and abs((y - x).mean().item()) < 0.005


def test_dae_scores_the_clean_input():
    model = build_model("dae", **tiny_overrides("dae"), corruption={"kind": "masking", "level": 0.5}).train()
    x = torch.rand(4, 1, 12, 10) * 0.9 + 0.1
    out = model(x)
    assert torch.equal(out.x, x) and not torch.equal(out.x_in, x)
    torch.testing.assert_close(model.objective.terms["recon"][0](out, model), -out.px_z.log_prob(x))


def test_bad_corruption_level():
    with pytest.raises(ValueError, match="level"):
        Corruption(CorruptionConfig("masking", 1.5))
