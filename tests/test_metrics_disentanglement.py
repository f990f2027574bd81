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
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

import aelab
from aelab.data.base import DatasetInfo, DataSplits, TensorImageDataset
from aelab.data.dsprites import FACTOR_SIZES, NUM_IMAGES, DSprites
from aelab.data.splits import split_indices
from aelab.metrics.disentanglement import (
    beta_vae_score,
    dci,
    dci_from_importance,
    dci_lasso,
    discretize,
    disentanglement_metric,
    encode_once,
    evaluate_disentanglement,
    evaluate_disentanglement_dlib,
    factor_vae_score,
    gbt_importance,
    lasso,
    mig,
    sample_codes,
    sap,
    sap_threshold,
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
        assert (ours[:, j].numpy() == ref).all()  # numpy's own edges: disentanglement_lib's bins exactly


def test_sap_continuous_and_discrete_on_identity():
    z, v = sample_codes(identity, FACTOR_SIZES, 4000, torch.Generator().manual_seed(1))
    assert sap(z[:3000], v[:3000], z[3000:], v[3000:], continuous=True)["sap"] > 0.95
    assert sap_threshold(z[:3000], v[:3000], z[3000:], v[3000:], continuous=True)["sap"] > 0.95
    assert sap_threshold(z[:3000], v[:3000], z[3000:], v[3000:])["sap"] > 0.95
    with pytest.raises(ValueError, match="2 code dimensions"):
        sap_threshold(z[:, :1], v, z[:, :1], v)
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
    out = dci_lasso(z.numpy(), v.numpy(), z.numpy(), v.numpy())
    assert out["dci_disentanglement"] > 0.99
    with pytest.raises(ValueError, match="integer"):
        dci_lasso(z, v.double(), z, v)
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
    kw = {"protocol": "fast", "n_samples": 400, "n_points": 20, "group_size": 8, "batch_size": 256}
    tiny_dsprites_vae.train()
    out = fn(tiny_dsprites_vae, _splits(data), **kw)
    assert tiny_dsprites_vae.training  # the wrapper restores the mode
    assert set(out) == {"mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness_train",
                        "dci_informativeness_test", "betavae_score", "betavae_train_acc", "factorvae_score",
                        "factorvae_train_acc", "factorvae_active_dims"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert 0 <= out["mig"] <= 1 and 0 <= out["betavae_score"] <= 1
    assert fn(tiny_dsprites_vae, _splits(data), **kw) == out  # seeded


def test_channels_last_encoder_is_the_same_function_and_leaves_the_model_alone(tiny_dsprites_vae, monkeypatch):
    data = DSprites(split_indices(NUM_IMAGES, 0, test_size=100)[1])
    codes: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    seen_layouts: list[bool] = []
    real_encode = type(tiny_dsprites_vae).encode

    def spy(self, x):
        seen_layouts.append(any(p.dim() == 4 and not p.is_contiguous() for p in self.parameters()))  # NHWC weights
        assert x.is_contiguous(memory_format=torch.channels_last if seen_layouts[-1] else torch.contiguous_format)
        out = real_encode(self, x)
        codes[seen_layouts[-1]].append(out.mean)
        return out

    monkeypatch.setattr(type(tiny_dsprites_vae), "encode", spy)
    kw = {"protocol": "fast", "n_samples": 200, "n_points": 10, "group_size": 4, "batch_size": 256}
    nhwc = disentanglement_metric(tiny_dsprites_vae, data, channels_last=True, **kw)
    plain = disentanglement_metric(tiny_dsprites_vae, data, channels_last=False, **kw)
    assert codes[True] and codes[False] and len(codes[True]) == len(codes[False])
    for a, b in zip(codes[True], codes[False]):  # the same images, the same codes up to float rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert nhwc.keys() == plain.keys()
    assert all(p.is_contiguous() for p in tiny_dsprites_vae.parameters())  # the copy was converted, not the model


def test_disentanglement_wrapper_needs_a_renderable_factor_data_set(tiny_dsprites_vae):
    data = TensorImageDataset(torch.zeros(4, 1, 64, 64, dtype=torch.uint8), torch.zeros(4, K, dtype=torch.long))
    with pytest.raises(ValueError, match="render"):
        METRICS.get("disentanglement")(tiny_dsprites_vae, _splits(data))


def test_disentanglement_wrapper_defaults_to_the_dlib_protocol(tiny_dsprites_vae):
    data = DSprites(split_indices(NUM_IMAGES, 0, test_size=100)[1])
    kw = {"n_train": 300, "n_test": 100, "n_points_train": 30, "n_points_eval": 20, "group_size": 4,
          "batch_size": 256}
    timings: dict[str, float] = {}
    out = METRICS.get("disentanglement")(tiny_dsprites_vae, _splits(data), timings=timings, **kw)
    assert set(out) >= {"mig", "sap", "dci_disentanglement", "dci_informativeness_test", "betavae_score",
                        "factorvae_score"}
    assert set(timings) == {"encode", "codes", "mig_sap", "dci", "betavae", "factorvae"}
    assert all(t >= 0 for t in timings.values()) and timings["encode"] <= sum(timings.values())
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    with pytest.raises(TypeError):  # the fast protocol's options are not the dlib protocol's
        METRICS.get("disentanglement")(tiny_dsprites_vae, _splits(data), n_samples=400)
    with pytest.raises(ValueError, match="protocol"):
        METRICS.get("disentanglement")(tiny_dsprites_vae, _splits(data), protocol="published")


# --- the dlib protocol against direct scikit-learn computations ------------------------------------
SMALL = (3, 4, 6)


def _small_codes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Graded code on a small factor space: factor 0 clean, 1 rotated with 2, a noise dimension."""
    g = torch.Generator().manual_seed(seed)
    v = torch.stack([torch.randint(0, s, (n,), generator=g) for s in SMALL], 1)
    x = v.double() / (torch.tensor(SMALL) - 1)
    nuisance = torch.randn(n, generator=g, dtype=torch.float64)
    z = torch.stack([x[:, 0], x[:, 1] + x[:, 2], x[:, 1] - x[:, 2], nuisance], 1)
    return z + 0.05 * torch.randn(n, 4, generator=g, dtype=torch.float64), v


def test_dci_is_disentanglement_libs_gradient_boosted_trees():
    z, v = _small_codes(600, 0)
    ztr, vtr, zte, vte = z[:400].numpy(), v[:400].numpy(), z[400:].numpy(), v[400:].numpy()
    # disentanglement_lib's compute_importance_gbt, disentanglement and completeness, written out
    r = np.zeros((4, 3))
    acc_tr, acc_te = [], []
    for k in range(3):
        model = GradientBoostingClassifier(random_state=0).fit(ztr, vtr[:, k])
        r[:, k] = np.abs(model.feature_importances_)
        acc_tr.append(np.mean(model.predict(ztr) == vtr[:, k]))
        acc_te.append(np.mean(model.predict(zte) == vte[:, k]))
    dis = np.sum((1 - entropy(r.T + 1e-11, base=3)) * r.sum(1) / r.sum())
    com = np.sum((1 - entropy(r + 1e-11, base=4)) * r.sum(0) / r.sum())
    out = dci(z[:400], v[:400], z[400:], v[400:], estimator="sklearn")
    assert out["dci_disentanglement"] == pytest.approx(dis, abs=1e-12)
    assert out["dci_completeness"] == pytest.approx(com, abs=1e-12)
    assert out["dci_informativeness_train"] == pytest.approx(np.mean(acc_tr), abs=1e-12)
    assert out["dci_informativeness_test"] == pytest.approx(np.mean(acc_te), abs=1e-12)
    # the in-library trees (the default): the same algorithm, ties between features drawn otherwise
    ours = dci(z[:400], v[:400], z[400:], v[400:])
    for key in out:
        assert ours[key] == pytest.approx(out[key], abs=0.01), key
    imp, _, _ = gbt_importance(z[:400], v[:400], z[400:], v[400:])
    assert torch.allclose(imp.sum(0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(imp, torch.from_numpy(r), atol=0.02)
    with pytest.raises(ValueError, match="estimator"):
        dci(z, v, z, v, estimator="forest")


def test_sap_is_disentanglement_libs_linear_svm():
    z, v = _small_codes(900, 1)
    ztr, vtr, zte, vte = z[:600].numpy(), v[:600].numpy(), z[600:].numpy(), v[600:].numpy()
    score = np.zeros((4, 3))  # disentanglement_lib's compute_score_matrix, continuous_factors=False
    for i in range(4):
        for j in range(3):
            clf = LinearSVC(C=0.01, class_weight="balanced", dual=False).fit(ztr[:, i : i + 1], vtr[:, j])
            score[i, j] = np.mean(clf.predict(zte[:, i : i + 1]) == vte[:, j])
    top = np.sort(score, axis=0)
    assert sap(z[:600], v[:600], z[600:], v[600:])["sap"] == pytest.approx(np.mean(top[-1] - top[-2]), abs=1e-12)
    # continuous: squared correlations on the training set
    c = np.array([[np.corrcoef(ztr[:, i], vtr[:, j])[0, 1] ** 2 for j in range(3)] for i in range(4)])
    top = np.sort(c, axis=0)
    cont = sap(z[:600], v[:600], z[600:], v[600:], continuous=True)["sap"]
    assert cont == pytest.approx(np.mean(top[-1] - top[-2]), abs=1e-12)


def test_mig_is_disentanglement_libs_histogram_estimate():
    z, v = _small_codes(2000, 2)
    zb = np.stack([np.digitize(z[:, j].numpy(), np.histogram(z[:, j].numpy(), 20)[1][:-1]) for j in range(4)])
    m = np.array([[mutual_info_score(v[:, k].numpy(), zb[j]) for k in range(3)] for j in range(4)])
    h = np.array([mutual_info_score(v[:, k].numpy(), v[:, k].numpy()) for k in range(3)])
    top = np.sort(m, axis=0)[::-1]
    assert mig(z, v)["mig"] == pytest.approx(np.mean((top[0] - top[1]) / h), abs=1e-12)


def test_beta_vae_sklearn_classifier_is_logistic_regression_on_raw_features():
    # a fixed code table (a deterministic encoder), so the draws can be redone by hand
    table = torch.randn(3 * 4 * 6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    strides = torch.tensor([24, 6, 1])
    enc = encode_once(lambda f: table[(f * strides).sum(-1)], SMALL)
    out = beta_vae_score(enc, SMALL, torch.Generator().manual_seed(0), 8, 200, 100, classifier="sklearn")
    g = torch.Generator().manual_seed(0)
    f1 = torch.stack([torch.randint(0, s, (300, 8), generator=g) for s in SMALL], -1)
    f2 = torch.stack([torch.randint(0, s, (300, 8), generator=g) for s in SMALL], -1)
    fixed = torch.randint(0, 3, (300,), generator=g)
    f2 = torch.where(torch.nn.functional.one_hot(fixed, 3).bool()[:, None, :], f1, f2)
    feats = (table[(f1 * strides).sum(-1)] - table[(f2 * strides).sum(-1)]).abs().mean(1).numpy()
    model = LogisticRegression().fit(feats[:200], fixed[:200].numpy())
    assert out["betavae_score"] == pytest.approx(np.mean(model.predict(feats[200:]) == fixed[200:].numpy()))
    assert out["betavae_train_acc"] == pytest.approx(np.mean(model.predict(feats[:200]) == fixed[:200].numpy()))
    with pytest.raises(ValueError, match="classifier"):
        beta_vae_score(enc, SMALL, torch.Generator().manual_seed(0), 4, 10, 5, classifier="svm")


def test_encode_once_encodes_each_combination_once_and_keeps_codes():
    seen = []
    table = torch.randn(72, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    strides = torch.tensor([24, 6, 1])

    def enc(f):
        seen.append(f.clone())
        return table[(f * strides).sum(-1)]

    once = encode_once(enc, SMALL)
    f = torch.stack([torch.randint(0, s, (500,), generator=torch.Generator().manual_seed(1)) for s in SMALL], 1)
    assert torch.equal(once(f[:250]), table[(f[:250] * strides).sum(-1)])
    assert torch.equal(once(f), table[(f * strides).sum(-1)])
    rows = torch.cat(seen)
    assert len(torch.unique((rows * strides).sum(-1))) == rows.shape[0] <= 72  # nothing encoded twice
    assert encode_once(enc, SMALL, max_combinations=10) is enc


def test_dlib_protocol_scores_identity_and_noise_codes():
    sizes = (3, 6, 8)
    scale = torch.tensor(sizes) - 1
    kw = {"n_train": 1000, "n_test": 500, "n_points_train": 300, "n_points_eval": 200, "group_size": 16}
    good = evaluate_disentanglement_dlib(lambda f: f.double() / scale, sizes, torch.Generator().manual_seed(0), **kw)
    assert good["mig"] > 0.9 and good["dci_disentanglement"] > 0.95 and good["dci_completeness"] > 0.95
    assert good["dci_informativeness_test"] > 0.99 and good["betavae_score"] > 0.95 and good["factorvae_score"] == 1
    g = torch.Generator().manual_seed(1)
    noise = evaluate_disentanglement_dlib(lambda f: torch.randn(f.shape[0], 3, generator=g, dtype=torch.float64),
                                          sizes, torch.Generator().manual_seed(0), **kw)
    assert noise["mig"] < 0.05 and noise["sap"] < 0.05 and noise["betavae_score"] < 0.5
