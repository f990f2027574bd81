"""Sample quality without downloads: a Frechet distance and a classifier score on aelab's own classifier.

The recipe is the one of FID and the Inception score, with the ImageNet Inception network replaced
by a small convolutional classifier that aelab trains on the data set itself (its train split and
class labels) and caches on disk. Nothing is downloaded, any image shape and channel count works,
and the features mean something for the data at hand (Inception features of 28x28 grey clothing
are a poor fit anyway).

This module holds the statistics and the registered metric; the classifier model is
:mod:`aelab.models.classifier` (registered as ``feature_classifier``) and training-or-loading it
from the cache is :mod:`aelab.training.classifier`, which the metric reaches through
:data:`aelab.registry.CLASSIFIER_LOADERS` (imports point down the layers).

* :func:`frechet_distance` is the squared Wasserstein-2 distance between two Gaussians fitted to
  feature vectors: ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)``.
* :func:`classifier_score` is ``exp(E_x KL(p(y|x) || p(y)))``, in ``[1, num_classes]``: high when
  each sample is classified confidently and the classes are used evenly.

.. note::
    This is **not** Inception-FID or the Inception score: the numbers are not comparable to those
    in papers, nor between data sets or classifier configs. Compare models on the same data set,
    with the same classifier (same cache entry) and the same number of samples ``n`` (the plug-in
    Frechet distance is biased upwards at small ``n``). ``frechet_distance_train_vs_test``, the
    distance between real train and real test images, is the floor to read the others against.

References:
    Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter, "GANs Trained by a Two Time-Scale Update
    Rule Converge to a Local Nash Equilibrium", NeurIPS 2017 (the Frechet Inception distance).
    Salimans, Goodfellow, Zaremba, Cheung, Radford & Chen, "Improved Techniques for Training GANs",
    NeurIPS 2016 (the Inception score).
    Dowson & Landau, "The Frechet distance between multivariate normal distributions", Journal of
    Multivariate Analysis, 1982.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.data.batches import eval_batches
from aelab.models.classifier import ClassifierConfig, FeatureClassifier, classifier_outputs
from aelab.nn.modes import evaluation, model_device
from aelab.protocol import require
from aelab.registry import CLASSIFIER_LOADERS, METRICS

__all__ = [
    "ClassifierConfig",
    "FeatureClassifier",
    "classifier_outputs",
    "classifier_score",
    "feature_statistics",
    "frechet_distance",
    "generative_metric",
]

ArrayLike = Tensor | np.ndarray


# --- pure functions -------------------------------------------------------------------------------
def _float64(a: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(a).detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds non-finite values")
    return t


def _sqrt_psd(m: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (clamped at 0) and square root of a symmetric positive semi-definite matrix."""
    evals, evecs = torch.linalg.eigh((m + m.T) / 2)
    evals = evals.clamp_min(0.0)  # rounding makes tiny negative eigenvalues of singular covariances
    return evals, (evecs * evals.sqrt()) @ evecs.T


def frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """The Frechet (Wasserstein-2) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``, squared.

    ``|mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)``. The trace term equals
    ``tr sqrtm(cov1 cov2)`` but is computed from the symmetric matrix ``cov1^1/2 cov2 cov1^1/2``
    with two symmetric eigendecompositions in float64 (tiny negative eigenvalues clamped to 0), so
    singular covariances (fewer samples than dimensions, dead ReLU features) are handled and no
    complex parts appear. The result is clamped at 0.

    Args:
        mu1, mu2: means ``(D,)``.
        cov1, cov2: symmetric positive semi-definite covariances ``(D, D)``.

    Returns:
        The squared distance, ``>= 0``; 0 for identical statistics.

    References:
        Dowson & Landau, J. Multivariate Analysis, 1982 (closed form);
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule ...", NeurIPS 2017 (FID).

    Example:
        >>> frechet_distance(np.zeros(2), np.eye(2), np.array([3.0, 4.0]), np.eye(2))
        25.0
        >>> round(frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), 4 * np.eye(1)), 12)  # (2 - 1)^2
        1.0
    """
    m1, m2 = _float64(mu1, "mu1"), _float64(mu2, "mu2")
    c1, c2 = _float64(cov1, "cov1"), _float64(cov2, "cov2")
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"expected means (D,) and covariances (D, D) of one D, got {tuple(m1.shape)}, "
                         f"{tuple(c1.shape)}, {tuple(m2.shape)}, {tuple(c2.shape)}")
    _, s1 = _sqrt_psd(c1)
    evals, _ = _sqrt_psd(s1 @ c2 @ s1)
    trace_sqrt = evals.sqrt().sum()
    dist = (m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * trace_sqrt
    return max(0.0, float(dist))


def feature_statistics(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased, ``N - 1``) covariance of feature vectors, in float64.

    Args:
        features: ``(N, D)`` with ``N >= 2``.

    Returns:
        ``mu`` ``(D,)`` and ``cov`` ``(D, D)``.

    Example:
        >>> mu, cov = feature_statistics(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> mu.tolist(), cov.tolist()
        ([1.0, 1.0], [[2.0, 0.0], [0.0, 0.0]])
    """
    f = _float64(features, "features")
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def classifier_score(probs: ArrayLike) -> float:
    """The Inception-score analogue ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y) = E_x p(y|x)``.

    It equals ``exp(H(y) - E_x H(y|x))``: ``num_classes`` when every prediction is certain and the
    classes are used equally often, 1 when all predictions are the same distribution.

    Args:
        probs: class probabilities ``(N, K)``, rows summing to 1.

    Returns:
        The score, in ``[1, K]``.

    References:
        Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016.

    Example:
        >>> classifier_score(torch.eye(4))
        4.0
        >>> classifier_score(torch.full((5, 4), 0.25))
        1.0
    """
    p = _float64(probs, "probs")
    if p.dim() != 2 or p.shape[0] < 1:
        raise ValueError(f"probs must have shape (N, K), got {tuple(p.shape)}")
    if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ValueError("probs must be non-negative with rows summing to 1")
    p = p / p.sum(1, keepdim=True)
    py = p.mean(0, keepdim=True)
    kl = (torch.xlogy(p, p) - torch.xlogy(p, py)).sum(1)  # 0 log 0 = 0
    return float(min(p.shape[1], max(1.0, math.exp(float(kl.mean())))))


# --- the feature classifier's outputs on a data set -----------------------------------------------
def _dataset_outputs(classifier: FeatureClassifier, data: ImageDataset,
                     batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    feats, probs, ys = [], [], []
    for batch in eval_batches(data, batch_size):
        f, p = classifier_outputs(classifier, batch.x, batch_size)
        feats.append(f)
        probs.append(p)
        ys.append(batch.y)
    return torch.cat(feats), torch.cat(probs), torch.cat(ys)


def _classifier(splits: DataSplits, config: ClassifierConfig | dict[str, Any] | None,
                cache_dir: str | os.PathLike | None, label_factor: str | None,
                device: torch.device) -> FeatureClassifier:
    """The data set's feature classifier from the loader the training layer registers
    (:func:`aelab.training.classifier.load_or_train_classifier`: trained once, then cached)."""
    if "default" not in CLASSIFIER_LOADERS:
        raise RuntimeError("no feature-classifier loader is registered: import aelab (or aelab.training), or pass "
                           "classifier=")
    return CLASSIFIER_LOADERS.get("default")(splits, config, cache_dir, label_factor, device)


# --- the registered wrapper -----------------------------------------------------------------------
def _draw_samples(model: nn.Module, n: int, batch_size: int, shape: tuple[int, ...]) -> Tensor:
    out = []
    for i in range(0, n, batch_size):
        x = model.sample(min(batch_size, n - i))
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"model samples have shape {tuple(x.shape[1:])}, the data set's images {shape}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"model {model.name!r} drew non-finite samples")
        out.append(x.float().cpu())
    return torch.cat(out)


@METRICS.register("frechet")
def generative_metric(model: nn.Module, splits: DataSplits, n: int = 10000, batch_size: int = 500, seed: int = 0,
                      classifier: FeatureClassifier | None = None,
                      classifier_config: ClassifierConfig | dict[str, Any] | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      label_factor: str | None = None) -> dict[str, float]:
    """Sample quality: Frechet distance and classifier score of model samples (NOT Inception-FID).

    Draws ``n`` samples with ``model.sample`` (under a private RNG stream seeded with ``seed``; the
    caller's stream is left untouched) and compares the feature statistics of aelab's own
    classifier (:func:`aelab.training.classifier.load_or_train_classifier`, registered as the
    ``"default"`` of :data:`aelab.registry.CLASSIFIER_LOADERS`: trained on this data set once,
    then cached) with
    those of ``min(n, len(test))`` real test images. Works for every model whose ``sample(n)``
    returns images of the data set's shape: VAEs with any prior, flows, code-prior models.

    The numbers are comparable only between models on the same data set, classifier and ``n``,
    never with published FID/IS values (see the module notes).

    Args:
        model: a model that can sample (a prior); models without one are refused.
        splits: the data set: train (classifier, reference floor) and test (real statistics).
        n: samples drawn; also the number of real test and train images used (at most the split).
        batch_size: samples per ``model.sample`` call and images per classifier pass.
        seed: seeds the samples and the real subsets.
        classifier: a ready classifier (skips the cache).
        classifier_config: the classifier to load or train (default :class:`ClassifierConfig`).
        cache_dir: the classifier cache (see :func:`aelab.training.classifier.classifier_cache_dir`).
        label_factor: the factor the classifier learns on factor data sets (default ``"shape"``).

    Returns:
        ``frechet_distance`` (samples vs real test), ``frechet_distance_train_vs_test`` (real train vs
        real test: the floor a perfect model would reach at this ``n``; the classifier has seen
        these train images, which biases it slightly low), ``classifier_score`` (samples) and
        ``classifier_score_real`` (test images), in ``[1, num_classes]``, and
        ``frechet_classifier_acc``, the classifier's test accuracy.

    References:
        Heusel et al., NeurIPS 2017 (FID); Salimans et al., NeurIPS 2016 (Inception score).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    require(model, "images", "sample", what="the frechet metric (it scores samples: a VAE, or a VQ model with code "
            "priors attached)")
    device = model_device(model)
    if classifier is None:
        classifier = _classifier(splits, classifier_config, cache_dir, label_factor, device)
    classifier = classifier.to(device)
    with evaluation(model, seed):
        fake = _draw_samples(model, n, batch_size, tuple(splits.test.shape))
    f_fake, p_fake = classifier_outputs(classifier, fake, batch_size)
    f_test, p_test, _ = _dataset_outputs(classifier, random_subset(splits.test, n, seed), batch_size)
    f_train, _, _ = _dataset_outputs(classifier, random_subset(splits.train, n, seed + 1), batch_size)
    mu_test, cov_test = feature_statistics(f_test)
    meta = getattr(classifier, "meta", {})
    return {"frechet_distance": frechet_distance(*feature_statistics(f_fake), mu_test, cov_test),
            "frechet_distance_train_vs_test": frechet_distance(*feature_statistics(f_train), mu_test, cov_test),
            "classifier_score": classifier_score(p_fake),
            "classifier_score_real": classifier_score(p_test),
            "frechet_classifier_acc": float(meta.get("test_accuracy", float("nan")))}
