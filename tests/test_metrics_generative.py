"""Frechet distance and classifier score: known answers, an independent matrix square root, the
classifier cache, and an end-to-end check on real Fashion-MNIST with a tiny classifier."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import DATA_DIR, TINY_SHAPE, tiny_overrides

from aelab.data.base import DataConfig, DatasetInfo, DataSplits, TensorImageDataset, load_data
from aelab.metrics.generative import (
    ClassifierConfig,
    FeatureClassifier,
    classifier_outputs,
    classifier_score,
    feature_statistics,
    frechet_distance,
    generative_metric,
)
from aelab.metrics.suite import run_metric
from aelab.models import build_model
from aelab.registry import MODELS
from aelab.training import classifier as gm
from aelab.training.classifier import load_or_train_classifier

TINY = ClassifierConfig(channels=(8, 16), pool=4, feature_dim=32, epochs=3, batch_size=32, lr=3e-3, train_limit=3000,
                        test_limit=500)


def _spd(d: int, seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def _trace_sqrt_eig(c1: np.ndarray, c2: np.ndarray) -> float:
    """tr sqrtm(C1 C2) from the eigenvalues of the non-symmetric product (real and >= 0 for SPD inputs)."""
    ev = np.linalg.eigvals(c1 @ c2)
    assert np.abs(ev.imag).max() < 1e-8
    return float(np.sqrt(np.clip(ev.real, 0, None)).sum())


def _trace_sqrt_denman_beavers(c1: np.ndarray, c2: np.ndarray, iters: int = 60) -> float:
    """tr sqrtm(C1 C2) by the Denman-Beavers iteration Y -> (Y + Z^-1) / 2, Z -> (Z + Y^-1) / 2."""
    y, z = c1 @ c2, np.eye(len(c1))
    for _ in range(iters):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return float(np.trace(y))


def _fd_reference(mu1, c1, mu2, c2, trace_sqrt) -> float:
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt(c1, c2))


# --- the Frechet distance -------------------------------------------------------------------------
def test_frechet_distance_of_identical_statistics_is_zero():
    c = _spd(20, 0)
    mu = np.random.default_rng(1).standard_normal(20)
    assert frechet_distance(mu, c, mu, c) == pytest.approx(0.0, abs=1e-9)
    singular = _spd(20, 2, rank=5)  # rank 5: sqrt of a singular matrix, tiny negative eigenvalues
    assert frechet_distance(mu, singular, mu, singular) == pytest.approx(0.0, abs=1e-7)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(7), rng.standard_normal(7)
    s1, s2 = rng.uniform(0.1, 3, 7), rng.uniform(0.1, 3, 7)
    s2[0] = 0.0  # a degenerate direction
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_independent_matrix_square_roots(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _spd(d, 10 + d), _spd(d, 20 + d)
    got = frechet_distance(mu1, c1, mu2, c2)
    assert got == pytest.approx(_fd_reference(mu1, c1, mu2, c2, _trace_sqrt_eig), rel=1e-7)
    assert got == pytest.approx(_fd_reference(mu1, c1, mu2, c2, _trace_sqrt_denman_beavers), rel=1e-7)
    assert got == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-9)  # symmetric
    # torch tensors (float32) give the same answer: the computation is float64 either way
    as_t = [torch.as_tensor(a) for a in (mu1, c1, mu2, c2)]
    assert frechet_distance(*as_t) == pytest.approx(got, rel=1e-12)


def test_frechet_distance_grows_with_a_mean_shift():
    c1, c2 = _spd(10, 0), _spd(10, 1)
    direction = np.random.default_rng(2).standard_normal(10)
    base = frechet_distance(np.zeros(10), c1, np.zeros(10), c2)
    values = [frechet_distance(np.zeros(10), c1, t * direction, c2) for t in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] == pytest.approx(base)
    # the mean term adds exactly |shift|^2
    assert values[-1] - base == pytest.approx(4 * (direction**2).sum(), rel=1e-9)
    # equal covariances: only the mean term is left
    assert frechet_distance(np.zeros(10), c1, direction, c1) == pytest.approx((direction**2).sum(), rel=1e-7)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


def test_feature_statistics_match_numpy():
    f = np.random.default_rng(0).standard_normal((50, 6)) * np.arange(1, 7)
    mu, cov = feature_statistics(torch.as_tensor(f, dtype=torch.float32))
    assert mu.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), f.mean(0), rtol=1e-6)
    np.testing.assert_allclose(cov.numpy(), np.cov(f, rowvar=False), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))


# --- the classifier score -------------------------------------------------------------------------
def test_classifier_score_known_answers():
    k = 7
    confident = torch.eye(k).repeat(3, 1)  # certain, every class equally often
    assert classifier_score(confident) == pytest.approx(k)
    assert classifier_score(torch.softmax(torch.randn(1, k), -1).expand(40, k)) == pytest.approx(1.0)
    assert classifier_score(torch.full((10, k), 1 / k)) == pytest.approx(1.0)
    # certain but only two of the classes used: exp(H(y)) = 2
    assert classifier_score(torch.eye(k)[torch.tensor([0, 3, 0, 3])]) == pytest.approx(2.0)


def test_classifier_score_matches_entropy_form():
    p = torch.softmax(torch.randn(200, 5, dtype=torch.float64) * 2, -1)
    py = p.mean(0)
    h_y = -(py * py.log()).sum()
    h_y_x = -(p * p.log()).sum(1).mean()
    assert classifier_score(p) == pytest.approx(math.exp(float(h_y - h_y_x)), rel=1e-10)
    assert 1.0 <= classifier_score(p) <= 5.0
    with pytest.raises(ValueError, match="sum"):
        classifier_score(torch.rand(4, 3) + 1)


# --- the classifier and its cache -----------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 5), (1, 64, 64), (2, 1, 2)])
def test_classifier_takes_any_image_shape(shape):
    net = FeatureClassifier(dataclasses.replace(TINY, image_shape=shape, num_classes=4))
    feats, probs = classifier_outputs(net, torch.rand(6, *shape), batch_size=4)
    assert feats.shape == (6, TINY.feature_dim) and probs.shape == (6, 4)
    assert torch.allclose(probs.sum(1), torch.ones(6))


def _synthetic(n_train: int = 96, n_test: int = 48, name: str = "toy", shape=(1, 9, 6)) -> DataSplits:
    """Three classes told apart by which third of the image (along H) is bright."""
    g = torch.Generator().manual_seed(0)
    band = shape[1] // 3

    def split(n: int) -> TensorImageDataset:
        y = torch.arange(n) % 3
        x = torch.randint(0, 60, (n, *shape), generator=g, dtype=torch.uint8)
        for k in range(3):
            x[y == k, :, band * k : band * (k + 1)] += 180
        return TensorImageDataset(x, y)

    info = DatasetInfo(name=name, shape=shape, num_classes=3)
    return DataSplits(split(n_train), split(n_test), info)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SYN = ClassifierConfig(channels=(4, 8), pool=1, feature_dim=8, epochs=3, batch_size=16, lr=1e-2)


def test_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    splits = _synthetic()
    rng_before = torch.get_rng_state()
    net = load_or_train_classifier(splits, SYN, cache_dir=tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training runs in a forked RNG stream
    (entry,) = tmp_path.iterdir()
    assert entry.name.startswith("toy-1x9x6-")
    assert sorted(p.name for p in entry.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    assert {p.stat().st_mode & 0o777 for p in entry.iterdir()} == {0o666 & ~_umask()}
    meta = json.loads((entry / "config.json").read_text())
    assert meta["data"] == "toy" and meta["label"] == "class" and meta["num_classes"] == 3
    assert meta["test_accuracy"] > 0.9 and meta["classifier_config"]["feature_dim"] == 8
    assert meta == net.meta
    mtimes = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(gm, "train_classifier", no_training)
    again = load_or_train_classifier(splits, SYN, cache_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == mtimes
    x = splits.test.get_batch(torch.arange(10)).x
    assert torch.equal(classifier_outputs(net, x)[0], classifier_outputs(again, x)[0])

    # another config or other data get their own entries (and train, which is refused here)
    with pytest.raises(AssertionError, match="reused"):
        load_or_train_classifier(splits, {**json.loads(json.dumps(meta["classifier_config"])), "seed": 1},
                                 cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="reused"):
        load_or_train_classifier(_synthetic(n_train=90), SYN, cache_dir=tmp_path)


def test_training_is_deterministic_and_env_var_sets_the_cache(tmp_path, monkeypatch):
    splits = _synthetic()
    monkeypatch.setenv(gm.CACHE_ENV, str(tmp_path / "env"))
    a = load_or_train_classifier(splits, SYN)
    b = load_or_train_classifier(splits, SYN, cache_dir=tmp_path / "arg")
    assert len(list((tmp_path / "env").iterdir())) == 1 and len(list((tmp_path / "arg").iterdir())) == 1
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("damage", ["weights", "json", "fingerprint", "missing_weights"])
def test_corrupt_or_mismatched_cache_is_retrained(tmp_path, damage):
    splits = _synthetic()
    net = load_or_train_classifier(splits, SYN, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    weights, cfg = entry / "model.safetensors", entry / "config.json"
    if damage == "weights":
        data = bytearray(weights.read_bytes())
        data[-8:] = b"\x00" * 8
        weights.write_bytes(bytes(data))
    elif damage == "json":
        cfg.write_text("{not json")
    elif damage == "fingerprint":
        meta = json.loads(cfg.read_text())
        meta["data_fingerprint"]["checksum"] = "0" * 16
        cfg.write_text(json.dumps(meta))
    else:
        weights.unlink()
    with pytest.warns(UserWarning, match="unusable.*retraining"):
        again = load_or_train_classifier(splits, SYN, cache_dir=tmp_path)
    for va, vb in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(va, vb)
    # repaired: the next load is silent (filterwarnings=error would fail it otherwise)
    load_or_train_classifier(splits, SYN, cache_dir=tmp_path)


def test_labels_classes_factors_and_refusal(tmp_path):
    toy = _synthetic()
    unlabelled = DataSplits(TensorImageDataset(toy.train.x, -torch.ones(96, dtype=torch.long)),
                            TensorImageDataset(toy.test.x, -torch.ones(48, dtype=torch.long)),
                            DatasetInfo(name="my-photos", shape=(1, 9, 6)))
    with pytest.raises(ValueError, match="'my-photos' has no class labels"):
        load_or_train_classifier(unlabelled, SYN, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not factors"):
        load_or_train_classifier(toy, SYN, cache_dir=tmp_path, label_factor="shape")
    factors = DataSplits(toy.train, toy.test, DatasetInfo(name="f", shape=(1, 9, 6), factor_names=("a", "b"),
                                                          factor_sizes=(3, 4)))
    with pytest.raises(ValueError, match="name the one"):
        load_or_train_classifier(factors, SYN, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())

    # dSprites: the shape factor (3 values) by default
    sprites = load_data(DataConfig(name="dsprites", train_subset=96, test_subset=32))
    net = load_or_train_classifier(sprites, ClassifierConfig(channels=(4,), pool=1, feature_dim=8, epochs=1),
                                   cache_dir=tmp_path)
    assert net.meta["label"] == "factor:shape" and net.meta["num_classes"] == 3
    assert net.meta["image_shape"] == [1, 64, 64]


# --- on real data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not (DATA_DIR / "fashion-mnist.npz").is_file():
        pytest.fail(f"real data not found in {DATA_DIR}")
    splits = load_data(DataConfig(name="fashion-mnist"))
    net = load_or_train_classifier(splits, TINY, cache_dir=tmp_path_factory.mktemp("classifiers"))
    return splits, net


def test_real_images_are_closer_to_real_than_corrupted_ones(fashion):
    splits, net = fashion
    assert net.meta["test_accuracy"] > 0.6  # a tiny classifier, three passes over 3000 images (0.74)
    g = torch.Generator().manual_seed(0)
    real_a = splits.test.get_batch(torch.randperm(len(splits.test), generator=g)[:1000]).x
    real_b = splits.train.get_batch(torch.randperm(len(splits.train), generator=g)[:1000]).x
    noise = torch.rand(real_b.shape, generator=g)
    blurred = torch.nn.functional.avg_pool2d(real_b, 5, stride=1, padding=2, count_include_pad=False)
    shuffled = real_b.flatten(1)[:, torch.randperm(28 * 28, generator=g)].view_as(real_b)

    def stats(x):
        return feature_statistics(classifier_outputs(net, x)[0])

    ref = stats(real_a)
    fd = {name: frechet_distance(*stats(x), *ref)
          for name, x in [("real", real_b), ("noise", noise), ("blurred", blurred), ("shuffled", shuffled)]}
    assert fd["real"] < fd["blurred"] / 3 and fd["real"] < fd["shuffled"] / 10 and fd["real"] < fd["noise"] / 10, fd
    score_real = classifier_score(classifier_outputs(net, real_a)[1])
    assert score_real > 4 and score_real > classifier_score(classifier_outputs(net, noise)[1])


def test_generative_metric_on_a_vae(fashion, tmp_path):
    splits, net = fashion
    vae = build_model("vae", image_shape=(1, 28, 28), latent_dim=4, backbone={"hidden": (32,)})
    rng_before = torch.get_rng_state()
    a = generative_metric(vae, splits, n=300, batch_size=128, classifier=net)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    assert set(a) == {"frechet_distance", "frechet_distance_train_vs_test", "classifier_score",
                      "classifier_score_real", "frechet_classifier_acc"}
    assert all(math.isfinite(v) for v in a.values())
    assert a["frechet_distance_train_vs_test"] < a["frechet_distance"]  # an untrained VAE draws blurry blobs
    assert 1 <= a["classifier_score"] <= 10 and 1 <= a["classifier_score_real"] <= 10
    assert a["frechet_classifier_acc"] == net.meta["test_accuracy"]
    assert generative_metric(vae, splits, n=300, batch_size=128, classifier=net) == a  # seeded
    assert generative_metric(vae, splits, n=300, batch_size=128, classifier=net, seed=1) != a
    # the one calling convention the CLI uses: (model, splits, **options)
    assert run_metric("frechet", vae, splits, batch_size=128, n=300, classifier=net) == a

    ae = build_model("ae", image_shape=(1, 28, 28), latent_dim=4, backbone={"hidden": (32,)})
    with pytest.raises(ValueError, match="prior to sample from"):
        generative_metric(ae, splits, n=100, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before any classifier was trained


class _UniformCodes:
    """A code prior drawing every code uniformly: enough to make a VQ model sample."""

    def __init__(self, num_codes: int, shape: tuple[int, int]) -> None:
        self.num_codes, self.shape = num_codes, shape

    def sample(self, n: int, temperature: float = 1.0, cond: torch.Tensor | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_codes, (n, *self.shape))


def test_every_registered_model_that_samples_is_scored_and_the_others_refused(tmp_path):
    splits = _synthetic(n_train=150, n_test=60, shape=TINY_SHAPE)
    net = load_or_train_classifier(splits, SYN, cache_dir=tmp_path)
    scored, refused = [], []
    for name in MODELS:
        model = build_model(name, **tiny_overrides(name))
        if not model.capabilities.images:  # code priors, classifiers: no images to score
            with pytest.raises(ValueError, match="image inputs|prior to sample from"):
                generative_metric(model, splits, n=8, classifier=net)
            continue
        if model.capabilities.codes:  # VQ models sample through priors over their code grids
            with pytest.raises(ValueError, match="prior to sample from"):
                generative_metric(model, splits, n=8, classifier=net)
            model.attach_prior(*[_UniformCodes(k, s) for k, s in zip(model.num_codes, model.code_shapes)])
        if not model.capabilities.sample:
            with pytest.raises(ValueError, match="prior to sample from"):
                generative_metric(model, splits, n=8, classifier=net)
            refused.append(name)
            continue
        out = generative_metric(model, splits, n=40, batch_size=16, classifier=net)
        assert all(math.isfinite(v) for v in out.values()), (name, out)
        assert out["frechet_distance"] >= 0 and 1 <= out["classifier_score"] <= 3, (name, out)
        scored.append(name)
    assert {"vae", "iaf_vae"} <= set(scored) and "ae" in refused
    assert "vqvae" not in MODELS or "vqvae" in scored


def test_default_cache_is_the_user_cache_not_the_data_directory(monkeypatch, tmp_path):
    """The data directory may be read-only (CI reads a shared copy): the cache lives elsewhere."""
    from aelab.training.classifier import classifier_cache_dir

    monkeypatch.delenv("AELAB_CLASSIFIER_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert classifier_cache_dir() == tmp_path / "aelab" / "classifiers"
    monkeypatch.setenv("AELAB_CLASSIFIER_DIR", str(tmp_path / "mine"))
    assert classifier_cache_dir() == tmp_path / "mine"
    assert classifier_cache_dir(tmp_path / "arg") == tmp_path / "arg"
