"""Disentanglement metrics on synthetic encoders with known answers, and on a real tiny model.

The synthetic encoders map dSprites factor indices straight to codes: the identity (factors
scaled to [0, 1]) and a permuted, rescaled, sign-flipped copy must score near 1 everywhere;
noise must score near 0 (near chance, 1/K = 0.2, for the two classifier-based scores); a
rotation must lose the axis-aligned scores but keep the information.

Tolerances, per metric, for the identity and permuted codes (5,000 samples, 200 points):
MIG > 0.85 at 20 bins (binning caps it near log 20 / log 40 for 40 orientations: 0.896) and
> 0.95 at 40 bins; SAP > 0.95; DCI disentanglement and completeness > 0.99; informativeness
> 0.95 (Lasso shrinkage); BetaVAE and FactorVAE > 0.95.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import aelab
from aelab.data.base import DatasetInfo, DataSplits, TensorImageDataset
from aelab.data.dsprites import FACTOR_SIZES, NUM_IMAGES, DSprites
from aelab.data.splits import split_indices
from aelab.metrics.disentanglement import (
    beta_vae_score,
    dci,
    dci_from_importance,
    discretize,
    evaluate_disentanglement,
    factor_vae_score,
    lasso,
    mig,
    sample_codes,
    sap,
)
from aelab.registry import METRICS


def _splits(test) -> DataSplits:
    """Registered metrics take ``(model, splits)``; these tests score the test split only."""
    return DataSplits(train=test, test=test, info=DatasetInfo("test", (1, 1, 1)))

SIZES = torch.tensor(FACTOR_SIZES)
K = len(FACTOR_SIZES)
SUITE = {"n_samples": 5000, "n_points": 200, "group_size": 64}


def identity(f: torch.Tensor) -> torch.Tensor:
    return f.double() / (SIZES - 1)


def standardised(f: torch.Tensor) -> torch.Tensor:
    # zero mean, unit variance under uniform factors, so a rotation mixes factors evenly
    return (f.double() - (SIZES - 1) / 2) / ((SIZES.double() ** 2 - 1) / 12).sqrt()


def permuted(f: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(K, generator=g)
    scale = torch.tensor([3.0, -0.5, 2.0, 10.0, -1.0], dtype=torch.float64)
    return identity(f)[:, perm] * scale + 7.0


def random_rotation(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
    return q


def noise_encoder(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return lambda f: torch.randn(f.shape[0], K, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def suite_scores() -> dict[str, dict[str, float]]:
    q = random_rotation(0)
    encoders = {"identity": identity, "permuted": permuted, "noise": noise_encoder(0),
                "rotated": lambda f: standardised(f) @ q}
    return {name: evaluate_disentanglement(enc, FACTOR_SIZES, torch.Generator().manual_seed(0), **SUITE)
            for name, enc in encoders.items()}


# --- the suite on synthetic encoders ----------------------------------------------------------
@pytest.mark.parametrize("name", ["identity", "permuted"])
def test_aligned_codes_score_near_one(suite_scores, name):
    s = suite_scores[name]
    assert s["mig"] > 0.85
    assert s["sap"] > 0.95
    assert s["dci_disentanglement"] > 0.99 and s["dci_completeness"] > 0.99
    assert s["dci_informativeness_train"] > 0.95 and s["dci_informativeness_test"] > 0.95
    assert s["betavae_score"] > 0.95
    assert s["factorvae_score"] > 0.95
    assert s["factorvae_active_dims"] == K


def test_noise_scores_near_zero_or_chance(suite_scores):
    s = suite_scores["noise"]
    assert s["mig"] < 0.05
    assert s["sap"] < 0.05
    # the Lasso penalty zeroes every weight of an unrelated code: no importance at all
    assert s["dci_disentanglement"] < 0.05 and s["dci_completeness"] < 0.05
    assert abs(s["dci_informativeness_test"]) < 0.05
    # classifier-based scores bottom out at chance, 1/K = 0.2 (80 evaluation points)
    assert s["betavae_score"] < 0.4
    assert s["factorvae_score"] < 0.4


def test_rotation_drops_axis_aligned_scores_but_keeps_information(suite_scores):
    s, ident = suite_scores["rotated"], suite_scores["identity"]
    assert s["mig"] < 0.3 < ident["mig"] - 0.5
    assert s["sap"] < 0.3
    assert s["dci_disentanglement"] < 0.4 and s["dci_completeness"] < 0.4
    # a rotation loses nothing: linear predictors still read every factor
    assert s["dci_informativeness_test"] > 0.95
    # the BetaVAE classifier is linear, so it undoes the rotation (Kim & Mnih's criticism)
    assert s["betavae_score"] > 0.7


def test_factor_vae_drops_when_each_factor_is_split_between_two_dimensions():
    # A random rotation can leave FactorVAE high: it only needs each factor's largest-loading
    # dimension to be distinct. Splitting every factor evenly over two dimensions (45-degree
    # rotations of pairs; a sixth, noise dimension pairs with the last factor) cannot pass.
    noise = torch.Generator().manual_seed(3)
    c = 1 / math.sqrt(2)

    def split(f: torch.Tensor) -> torch.Tensor:
        x = torch.cat([standardised(f), torch.randn(f.shape[0], 1, generator=noise, dtype=torch.float64)], 1)
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.cat([c * (a + b), c * (a - b)], 1)

    gen = torch.Generator().manual_seed(0)
    s = evaluate_disentanglement(split, FACTOR_SIZES, gen, **SUITE)
    assert s["factorvae_score"] < 0.75
    assert s["mig"] < 0.3 and s["sap"] < 0.3
    # four dimensions matter for two factors each (1 - log_5 2), two for one: a lenient 0.655
    assert s["dci_disentanglement"] == pytest.approx(0.8 * (1 - math.log(2, 5)) + 0.2, abs=0.02)


def test_metrics_are_deterministic_given_the_generator():
    enc = noise_encoder(5)
    kw = {"n_samples": 600, "n_points": 30, "group_size": 8}
    a = evaluate_disentanglement(lambda f: enc(f) + identity(f), FACTOR_SIZES, torch.Generator().manual_seed(4), **kw)
    enc = noise_encoder(5)
    b = evaluate_disentanglement(lambda f: enc(f) + identity(f), FACTOR_SIZES, torch.Generator().manual_seed(4), **kw)
    assert a == b
    assert all(math.isfinite(v) for v in a.values())


# --- the pure functions -----------------------------------------------------------------------
def test_mig_reaches_one_with_a_bin_per_value_and_punishes_duplicated_dimensions():
    z, v = sample_codes(identity, FACTOR_SIZES, 5000, torch.Generator().manual_seed(0))
    assert mig(z, v, bins=40)["mig"] > 0.95
    # the same information in two dimensions: no gap for that factor
    dup = torch.cat([z, z[:, :1]], 1)
    assert mig(dup, v, bins=40)["mig"] == pytest.approx(mig(z, v, bins=40)["mig"] - 0.2, abs=0.01)


def test_mig_exact_on_a_small_table():
    # z0 = v0 exactly (4 values, 2 bits), z1 carries one bit of it: gap = (2 - 1) / 2 bits
    i = torch.arange(400)
    v0 = i % 4
    z = torch.stack([v0.double(), (v0 // 2).double()], 1)
    assert mig(z, v0[:, None], bins=4)["mig"] == pytest.approx(0.5, abs=1e-12)


def test_discretize_matches_numpy_histogram_edges():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1000, 3, generator=g, dtype=torch.float64)
    ours = discretize(z, 20)
    for j in range(3):
        edges = np.histogram(z[:, j].numpy(), 20)[1]
        ref = np.digitize(z[:, j].numpy(), edges[:-1]) - 1  # disentanglement_lib's binning, from 0
        assert (ours[:, j].numpy() == ref).mean() > 0.999  # bin edges may differ by one ulp


def test_sap_continuous_and_discrete_on_identity():
    z, v = sample_codes(identity, FACTOR_SIZES, 4000, torch.Generator().manual_seed(1))
    assert sap(z[:3000], v[:3000], z[3000:], v[3000:], continuous=True)["sap"] > 0.95
    assert sap(z[:3000], v[:3000], z[3000:], v[3000:])["sap"] > 0.95
    with pytest.raises(ValueError, match="2 code dimensions"):
        sap(z[:, :1], v, z[:, :1], v)


def test_lasso_satisfies_its_optimality_conditions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    y = x[:, :2] @ torch.tensor([[1.0, 0.0], [-2.0, 0.5]], dtype=torch.float64)
    y = y + torch.randn(500, 2, generator=g, dtype=torch.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    alpha = 0.3
    w = lasso(x, y, alpha)
    grad = x.T @ (y - x @ w) / x.shape[0]  # (D, K): must equal alpha sign(w) on the support
    on = w != 0
    assert torch.allclose(grad[on], alpha * w[on].sign(), atol=1e-7)
    assert bool((grad[~on].abs() <= alpha + 1e-7).all())
    assert on.any() and (~on).any()


def test_dci_from_importance_hand_computed():
    out = dci_from_importance(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    # codes: pure (D=1) and even (D=0), equal weight; factors: (2/3, 1/3) and (0, 1), weights 3/4, 1/4
    h = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert out["dci_disentanglement"] == pytest.approx(0.5)
    assert out["dci_completeness"] == pytest.approx(0.75 * (1 - h) + 0.25)
    assert dci_from_importance(torch.zeros(3, 2)) == {"dci_disentanglement": 0.0, "dci_completeness": 0.0}


def test_dci_accepts_numpy_and_rejects_float_factors():
    z, v = sample_codes(permuted, FACTOR_SIZES, 2000, torch.Generator().manual_seed(2))
    out = dci(z.numpy(), v.numpy(), z.numpy(), v.numpy())
    assert out["dci_disentanglement"] > 0.99
    with pytest.raises(ValueError, match="integer"):
        dci(z, v.double(), z, v)


def test_interventional_scores_alone():
    gen = torch.Generator().manual_seed(0)
    assert beta_vae_score(permuted, FACTOR_SIZES, gen, group_size=16, n_train=60, n_eval=40)["betavae_score"] == 1.0
    out = factor_vae_score(permuted, FACTOR_SIZES, gen, group_size=16, n_train=60, n_eval=40, n_variance=1000)
    assert out["factorvae_score"] == 1.0
    # a collapsed dimension (std below 0.05) is pruned, not voted for
    collapsed = factor_vae_score(lambda f: torch.cat([identity(f), torch.zeros(f.shape[0], 1)], 1),
                                 FACTOR_SIZES, gen, group_size=16, n_train=60, n_eval=40, n_variance=1000)
    assert collapsed["factorvae_active_dims"] == K and collapsed["factorvae_score"] == 1.0
    dead = factor_vae_score(lambda f: 1e-3 * identity(f), FACTOR_SIZES, gen, group_size=8, n_train=5, n_eval=5,
                            n_variance=100)
    assert dead == {"factorvae_score": 0.0, "factorvae_train_acc": 0.0, "factorvae_active_dims": 0.0}


# --- the registered wrapper on a real tiny model ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_dsprites_vae():
    torch.manual_seed(0)
    return aelab.build_model("vae", image_shape=(1, 64, 64), latent_dim=4,
                             backbone={"kind": "conv", "channels": (4, 8), "fc": 16})


def test_disentanglement_wrapper_runs_on_dsprites(tiny_dsprites_vae):
    data = DSprites(split_indices(NUM_IMAGES, 0, test_size=100)[1])
    fn = METRICS.get("disentanglement")
    kw = {"n_samples": 400, "n_points": 20, "group_size": 8, "batch_size": 256}
    tiny_dsprites_vae.train()
    out = fn(tiny_dsprites_vae, _splits(data), **kw)
    assert tiny_dsprites_vae.training  # the wrapper restores the mode
    assert set(out) == {"mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness_train",
                        "dci_informativeness_test", "betavae_score", "betavae_train_acc", "factorvae_score",
                        "factorvae_train_acc", "factorvae_active_dims"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert 0 <= out["mig"] <= 1 and 0 <= out["betavae_score"] <= 1
    assert fn(tiny_dsprites_vae, _splits(data), **kw) == out  # seeded


def test_disentanglement_wrapper_needs_a_renderable_factor_data_set(tiny_dsprites_vae):
    data = TensorImageDataset(torch.zeros(4, 1, 64, 64, dtype=torch.uint8), torch.zeros(4, K, dtype=torch.long))
    with pytest.raises(ValueError, match="render"):
        METRICS.get("disentanglement")(tiny_dsprites_vae, _splits(data))
