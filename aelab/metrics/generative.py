"""Sample quality without downloads: a Frechet distance and a classifier score on aelab's own classifier.

The recipe is the one of FID and the Inception score, with the ImageNet Inception network replaced
by a small convolutional classifier that aelab trains on the data set itself (its train split and
class labels) and caches on disk. Nothing is downloaded, any image shape and channel count works,
and the features mean something for the data at hand (Inception features of 28x28 grey clothing
are a poor fit anyway).

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

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from aelab.config import ConfigError, from_dict, load_json, save_json, to_dict
from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.data.batches import epoch_order, eval_batches, steps_per_epoch
from aelab.io import atomic_write_bytes, sha256_file
from aelab.nn.linear import Linear
from aelab.nn.modes import eval_mode, evaluation, model_device
from aelab.protocol import require
from aelab.registry import METRICS

__all__ = [
    "CACHE_ENV",
    "ClassifierConfig",
    "FeatureClassifier",
    "classifier_cache_dir",
    "classifier_outputs",
    "classifier_score",
    "feature_statistics",
    "frechet_distance",
    "generative_metric",
    "load_or_train_classifier",
    "train_classifier",
]

#: environment variable naming the classifier cache (default: ``~/.cache/aelab/classifiers``)
CACHE_ENV = "AELAB_CLASSIFIER_DIR"
_FORMAT = "aelab-feature-classifier"
_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

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


# --- the feature classifier -----------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    """The feature classifier and how it is trained; part of the cache key.

    Attributes:
        channels: output channels of the conv layers (3x3, ReLU, stride 2 along each side that is
            still at least 2 pixels long).
        pool: the conv features are average-pooled to ``pool x pool`` before the feature layer.
        feature_dim: width of the feature layer (after ReLU) whose statistics the distance uses.
        epochs: passes over the (limited) train split.
        batch_size: examples per step.
        lr: peak Adam learning rate (cosine decay to 0 over training).
        weight_decay: AdamW weight decay.
        train_limit: train on a seeded random subset of at most this many images (``None``: all).
        test_limit: measure the recorded test accuracy on at most this many test images.
        seed: seeds initialisation, the subset and the batch order.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    pool: int = 4
    feature_dim: int = 128
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    train_limit: int | None = 60000
    test_limit: int | None = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"classifier channels must be positive, got {self.channels}")
        for key in ("pool", "feature_dim", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"classifier {key} must be >= 1, got {getattr(self, key)}")
        for key in ("train_limit", "test_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"classifier {key} must be >= 1 or None, got {getattr(self, key)}")


class FeatureClassifier(nn.Module):
    """A small conv net: strided convs -> average pool -> feature layer (ReLU) -> linear head.

    Inputs are images ``(B, C, H, W)`` in ``[0, 1]``, standardised per channel with the training
    split's statistics (stored as buffers, so they travel with the weights).

    Args:
        image_shape: ``(C, H, W)``; any size, down to 1 x 1.
        num_classes: outputs of the head.
        config: the architecture (the training fields are ignored here).

    Example:
        >>> net = FeatureClassifier((1, 12, 10), 3, ClassifierConfig(channels=(4, 8), feature_dim=16))
        >>> x = torch.rand(5, 1, 12, 10)
        >>> net.features(x).shape, net(x).shape
        (torch.Size([5, 16]), torch.Size([5, 3]))
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, config: ClassifierConfig) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (int(c), int(h), int(w))
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for ch in config.channels:
            # strided convolutions: a quarter of the cost of conv + max-pool, which matters on CPU
            sh, sw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            layers += [nn.Conv2d(c, ch, 3, stride=(sh, sw), padding=1), nn.ReLU()]
            h, w, c = -(-h // sh), -(-w // sw), ch
        layers.append(nn.AdaptiveAvgPool2d(config.pool))
        self.conv = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Flatten(), Linear(c * config.pool**2, config.feature_dim), nn.ReLU())
        self.head = Linear(config.feature_dim, num_classes)
        self.register_buffer("input_mean", torch.zeros(image_shape[0]))
        self.register_buffer("input_std", torch.ones(image_shape[0]))

    def features(self, x: Tensor) -> Tensor:
        """Feature-layer activations ``(B, feature_dim)``: the space the Frechet distance lives in."""
        x = (x - self.input_mean[:, None, None]) / self.input_std[:, None, None]
        return self.feature(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.features(x))


@torch.no_grad()
def classifier_outputs(classifier: FeatureClassifier, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Features ``(N, feature_dim)`` and class probabilities ``(N, K)`` of images ``(N, C, H, W)``.

    Runs in evaluation mode on the classifier's device, ``batch_size`` images at a time; returns
    float32 CPU tensors.
    """
    device = next(classifier.parameters()).device
    feats, probs = [], []
    with eval_mode(classifier):
        for i in range(0, x.shape[0], batch_size):
            f = classifier.features(x[i : i + batch_size].to(device))
            feats.append(f.float().cpu())
            probs.append(torch.softmax(classifier.head(f), -1).float().cpu())
    return torch.cat(feats), torch.cat(probs)


def _dataset_outputs(classifier: FeatureClassifier, data: ImageDataset,
                     batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    feats, probs, ys = [], [], []
    for batch in eval_batches(data, batch_size):
        x, y = batch.x, batch.y
        f, p = classifier_outputs(classifier, x, batch_size)
        feats.append(f)
        probs.append(p)
        ys.append(y)
    return torch.cat(feats), torch.cat(probs), torch.cat(ys)


# --- labels ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Labels:
    """Which labels the classifier learns: the class, or one factor column (``column``)."""

    name: str
    num_classes: int
    column: int | None = None

    def __call__(self, y: Tensor) -> Tensor:
        return y[:, self.column] if self.column is not None else y


def _labels(splits: DataSplits, label_factor: str | None) -> _Labels:
    info = splits.info
    if info.factor_names:
        factor = label_factor if label_factor is not None else ("shape" if "shape" in info.factor_names else None)
        if factor is None or factor not in info.factor_names:
            raise ValueError(f"data set {info.name!r} has factors {list(info.factor_names)} instead of class labels: "
                             "name the one the feature classifier should learn with label_factor=")
        column = info.factor_names.index(factor)
        sizes = info.factor_sizes
        if sizes is None:
            raise ValueError(f"data set {info.name!r} does not record its factor sizes")
        return _Labels(f"factor:{factor}", int(sizes[column]), column)
    if label_factor is not None:
        raise ValueError(f"data set {info.name!r} has class labels, not factors: leave label_factor=None")
    if not info.num_classes or info.num_classes < 2:
        raise ValueError(f"data set {info.name!r} has no class labels: the frechet metric needs them to train its "
                         "feature classifier (give the images labels, e.g. one sub-folder per class)")
    return _Labels("class", int(info.num_classes))


def _fingerprint(splits: DataSplits, count: int = 16) -> dict[str, Any]:
    """Sizes of both splits and a checksum of ``count`` evenly spread examples of each (images and labels)."""
    out: dict[str, Any] = {}
    h = hashlib.sha256()
    for split, ds in (("train", splits.train), ("test", splits.test)):
        n = len(ds)
        out[f"num_{split}"] = n
        idx = torch.linspace(0, n - 1, min(count, n)).round().long().unique()
        batch = ds.get_batch(idx)
        x, y = batch.x, batch.y
        h.update(x.contiguous().float().numpy().tobytes())
        h.update(y.contiguous().long().numpy().tobytes())
    out["checksum"] = h.hexdigest()[:16]
    return out


# --- training and the cache -----------------------------------------------------------------------
def _channel_stats(data: ImageDataset, c: int, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for batch in eval_batches(data, batch_size):
        x = batch.x
        x = x.double().transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += x.pow(2).sum(1)
        n += x.shape[1]
    mean = s / n
    std = (s2 / n - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.float(), std.float()


def _accuracy(classifier: FeatureClassifier, data: ImageDataset, labels: _Labels, batch_size: int = 500) -> float:
    _, probs, y = _dataset_outputs(classifier, data, batch_size)
    y = labels(y)
    keep = y >= 0
    return float((probs[keep].argmax(1) == y[keep]).double().mean()) if bool(keep.any()) else float("nan")


def train_classifier(splits: DataSplits, config: ClassifierConfig | None = None, label_factor: str | None = None,
                     device: str | torch.device = "cpu") -> tuple[FeatureClassifier, dict[str, Any]]:
    """Train the feature classifier on ``splits.train`` with cross-entropy on its labels.

    Deterministic given ``config.seed`` (on one machine, device and thread count): the caller's
    RNG is forked and restored. AdamW with a cosine-decayed learning rate, no augmentation.

    Args:
        splits: the data set; its class labels, or for factor data sets (dSprites) the factor
            ``label_factor`` (default ``"shape"`` where there is one), are the targets.
        config: architecture and training (default :class:`ClassifierConfig`).
        label_factor: which factor to learn on factor data sets.
        device: where to train.

    Returns:
        The classifier (evaluation mode, on ``device``) and a summary: ``label``, ``num_classes``,
        ``train_accuracy`` (last epoch, running), ``test_accuracy``, ``num_train``, ``train_seconds``.

    Raises:
        ValueError: the data set has no labels to learn.
    """
    config = config or ClassifierConfig()
    labels = _labels(splits, label_factor)
    shape = tuple(splits.train.shape)
    train = random_subset(splits.train, config.train_limit, config.seed)
    test = random_subset(splits.test, config.test_limit, config.seed + 1)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = FeatureClassifier(shape, labels.num_classes, config)  # type: ignore[arg-type]
        mean, std = _channel_stats(train, shape[0])
        net.input_mean.copy_(mean)
        net.input_std.copy_(std)
        net.to(device).train()
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        per_epoch = steps_per_epoch(len(train), config.batch_size)
        total, step = config.epochs * per_epoch, 0
        correct = seen = 0
        for epoch in range(config.epochs):
            order = epoch_order(len(train), config.seed, epoch)
            correct = seen = 0
            for i in range(per_epoch):
                batch = train.get_batch(order[i * config.batch_size : (i + 1) * config.batch_size])
                x, y = batch.x, batch.y
                y = labels(y).to(device)
                keep = y >= 0  # -1 marks unlabelled examples
                x, y = x.to(device)[keep], y[keep]
                if y.numel() == 0:
                    continue
                for group in opt.param_groups:
                    group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                logits = net(x)
                loss = nn.functional.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                correct += int((logits.detach().argmax(1) == y).sum())
                seen += int(y.numel())
    net.eval()
    summary = {"label": labels.name, "num_classes": labels.num_classes,
               "train_accuracy": correct / max(seen, 1), "test_accuracy": _accuracy(net, test, labels),
               "num_train": len(train), "num_test": len(test), "train_seconds": time.perf_counter() - start}
    return net, summary


def classifier_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where classifiers are cached: ``cache_dir``, else ``$AELAB_CLASSIFIER_DIR``, else
    ``$XDG_CACHE_HOME/aelab/classifiers`` (``~/.cache/aelab/classifiers``). Not beside the data:
    a data directory may be read-only (a shared copy, as in CI)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "aelab" / "classifiers"


def _load_cached(directory: Path, key: dict[str, Any], config: ClassifierConfig,
                 shape: tuple[int, int, int]) -> FeatureClassifier | None:
    """The cached classifier when ``directory`` holds a complete entry for ``key``; ``None`` when
    there is none; a warning and ``None`` when the entry is corrupt or belongs to other data."""
    cfg_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file():
        return None
    try:
        meta = load_json(cfg_path)
        if not isinstance(meta, dict) or {k: meta.get(k) for k in key} != key:
            raise ValueError("it was made for another data set or classifier config")
        if not weights.is_file() or sha256_file(weights) != meta.get("weights_sha256"):
            raise ValueError(f"{WEIGHTS_NAME} is missing or does not match its config.json")
        net = FeatureClassifier(shape, int(meta["num_classes"]), config)
        net.load_state_dict(load_file(str(weights)))
    except (ConfigError, ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        warnings.warn(f"feature classifier cache {directory} is unusable ({e}); retraining", stacklevel=3)
        return None
    net.meta = meta  # type: ignore[assignment]
    return net.eval()


def load_or_train_classifier(splits: DataSplits, config: ClassifierConfig | dict[str, Any] | None = None,
                             cache_dir: str | os.PathLike | None = None, label_factor: str | None = None,
                             device: str | torch.device = "cpu") -> FeatureClassifier:
    """The feature classifier of a data set, from the cache or trained once and cached.

    An entry is keyed by the data set's name, image shape, label choice, a hash of ``config`` and a
    fingerprint of the data (split sizes and a checksum of a few examples), and lives in
    ``classifier_cache_dir(cache_dir) / "{name}-{C}x{H}x{W}-{hash}"`` as ``config.json`` and
    ``model.safetensors`` (no pickle), each written atomically, the weights first; ``config.json``
    records the weights' SHA-256, the test accuracy and the training time. An entry that is corrupt
    or does not match (its config, or weights written by a concurrent run) is retrained with a
    warning.

    Args:
        splits: the data set (see :func:`train_classifier` for the labels used).
        config: a :class:`ClassifierConfig` or a mapping of its fields (default: the defaults).
        cache_dir: the cache root (see :func:`classifier_cache_dir`).
        label_factor: which factor to learn on factor data sets (default ``"shape"``).
        device: where to train and where the returned classifier lives.

    Returns:
        The classifier in evaluation mode; its ``meta`` attribute is the cached ``config.json``.
    """
    if config is None:
        config = ClassifierConfig()
    elif isinstance(config, dict):
        config = from_dict(ClassifierConfig, config, "classifier")
    labels = _labels(splits, label_factor)
    shape = tuple(int(s) for s in splits.train.shape)
    key = {"format": _FORMAT, "version": _VERSION, "data": splits.info.name, "image_shape": list(shape),
           "label": labels.name, "classifier_config": to_dict(config), "data_fingerprint": _fingerprint(splits)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    directory = classifier_cache_dir(cache_dir) / f"{splits.info.name}-{'x'.join(map(str, shape))}-{digest}"
    net = _load_cached(directory, key, config, shape)  # type: ignore[arg-type]
    if net is not None:
        return net.to(device)
    net, summary = train_classifier(splits, config, label_factor, device)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    # serialised in memory and written by atomic_write_bytes, which keeps ordinary file permissions
    atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": _FORMAT}))
    meta = {**key, **summary, "weights_sha256": sha256_file(directory / WEIGHTS_NAME),
            "torch_version": torch.__version__}
    save_json(directory / CONFIG_NAME, meta)  # written last: a complete entry has both files
    net.meta = meta  # type: ignore[assignment]
    return net


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
    classifier (:func:`load_or_train_classifier`: trained on this data set once, then cached) with
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
        cache_dir: the classifier cache (see :func:`classifier_cache_dir`).
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
    require(model, "sample", what="the frechet metric (it scores samples: a VAE, or a VQ model with code "
            "priors attached)")
    device = model_device(model)
    if classifier is None:
        classifier = load_or_train_classifier(splits, classifier_config, cache_dir, label_factor, device)
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
