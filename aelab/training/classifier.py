"""Train-or-load the feature classifier of the sample-quality metric, cached per data set.

The classifier (:class:`aelab.models.classifier.FeatureClassifier`, registered as
``feature_classifier``) is trained by the ordinary :class:`~aelab.training.trainer.Trainer` and
stored with the ordinary ``save_pretrained`` / ``from_pretrained``; this module adds the labels a
data set offers, the cache key (data set, image shape, labels, config, a fingerprint of the data)
and the cache directory. Importing it registers :func:`load_or_train_classifier` as the loader
``"default"`` of :data:`aelab.registry.CLASSIFIER_LOADERS`, which
:func:`aelab.metrics.generative.generative_metric` uses when it is given no classifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from aelab.config import ConfigError, from_dict, load_json, save_json, to_dict
from aelab.data.base import DataSplits, ImageDataset, Split, random_subset
from aelab.data.batches import eval_batches
from aelab.io import sha256_file
from aelab.models.classifier import ClassifierConfig, FeatureClassifier, classifier_accuracy
from aelab.protocol import CONFIG_NAME, WEIGHTS_NAME, build_model, from_pretrained, model_spec
from aelab.registry import CLASSIFIER_LOADERS
from aelab.training.trainer import Trainer, TrainerConfig

__all__ = ["CACHE_ENV", "classifier_cache_dir", "load_or_train_classifier", "train_classifier"]

#: environment variable naming the classifier cache (default: ``~/.cache/aelab/classifiers``)
CACHE_ENV = "AELAB_CLASSIFIER_DIR"
_FORMAT = "aelab-feature-classifier"
_VERSION = 2


def _label_config(splits: DataSplits, config: ClassifierConfig,
                  label_factor: str | None) -> tuple[str, ClassifierConfig]:
    """The label name (``class`` or ``factor:NAME``) and ``config`` fitted to the data set."""
    info = splits.info
    column = None
    if info.factor_names:
        factor = label_factor if label_factor is not None else ("shape" if "shape" in info.factor_names else None)
        if factor is None or factor not in info.factor_names:
            raise ValueError(f"data set {info.name!r} has factors {list(info.factor_names)} instead of class labels: "
                             "name the one the feature classifier should learn with label_factor=")
        if info.factor_sizes is None:
            raise ValueError(f"data set {info.name!r} does not record its factor sizes")
        column, name = info.factor_names.index(factor), f"factor:{factor}"
    else:
        if label_factor is not None:
            raise ValueError(f"data set {info.name!r} has class labels, not factors: leave label_factor=None")
        if not info.num_classes or info.num_classes < 2:
            raise ValueError(f"data set {info.name!r} has no class labels: the frechet metric needs them to train "
                             "its feature classifier (give the images labels, e.g. one sub-folder per class)")
        name = "class"
    fit = model_spec("feature_classifier").fit_to_data
    return name, fit(dataclasses.replace(config, label_column=column), info)


def _fingerprint(splits: DataSplits, count: int = 16) -> dict[str, Any]:
    """Sizes of both splits and a checksum of ``count`` evenly spread examples of each (images and labels)."""
    out: dict[str, Any] = {}
    h = hashlib.sha256()
    for split, ds in (("train", splits.train), ("test", splits.test)):
        n = len(ds)
        out[f"num_{split}"] = n
        idx = torch.linspace(0, n - 1, min(count, n)).round().long().unique()
        batch = ds.get_batch(idx)
        h.update(batch.x.contiguous().float().numpy().tobytes())
        h.update(batch.y.contiguous().long().numpy().tobytes())
    out["checksum"] = h.hexdigest()[:16]
    return out


def _channel_stats(data: ImageDataset, c: int, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for batch in eval_batches(data, batch_size):
        x = batch.x.double().transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += x.pow(2).sum(1)
        n += x.shape[1]
    mean = s / n
    std = (s2 / n - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.float(), std.float()


def _as_config(config: ClassifierConfig | dict[str, Any] | None) -> ClassifierConfig:
    if config is None:
        return ClassifierConfig()
    if isinstance(config, dict):
        return from_dict(ClassifierConfig, config, "classifier")
    return config


def train_classifier(splits: DataSplits, config: ClassifierConfig | dict[str, Any] | None = None,
                     label_factor: str | None = None,
                     device: str | torch.device = "cpu") -> tuple[FeatureClassifier, dict[str, Any]]:
    """Train the feature classifier on ``splits.train`` with the ordinary :class:`Trainer`.

    Cross-entropy on the labels (see :class:`~aelab.models.classifier.FeatureClassifier`), AdamW
    with a cosine-decayed learning rate, no augmentation, no run directory. Deterministic given
    ``config.seed`` (on one machine, device and thread count): the caller's RNG is forked and
    restored.

    Args:
        splits: the data set; its class labels, or for factor data sets (dSprites) the factor
            ``label_factor`` (default ``"shape"`` where there is one), are the targets.
        config: architecture and training (default :class:`ClassifierConfig`).
        label_factor: which factor to learn on factor data sets.
        device: where to train.

    Returns:
        The classifier (evaluation mode, on ``device``) and a summary: ``label``, ``num_classes``,
        ``test_accuracy``, ``num_train``, ``num_test``, ``train_seconds``.

    Raises:
        ValueError: the data set has no labels to learn.
    """
    label, cfg = _label_config(splits, _as_config(config), label_factor)
    train = random_subset(splits.train, cfg.train_limit, cfg.seed)
    test = random_subset(splits.test, cfg.test_limit, cfg.seed + 1)
    start = time.perf_counter()
    trainer_cfg = TrainerConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="adamw", lr=cfg.lr,
                                weight_decay=cfg.weight_decay, lr_schedule="cosine", seed=cfg.seed,
                                device=str(device), images=False, progress=False, diagnostics=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net: FeatureClassifier = build_model("feature_classifier", cfg)  # type: ignore[assignment]
        mean, std = _channel_stats(train, cfg.image_shape[0])
        net.input_mean.copy_(mean)
        net.input_std.copy_(std)
        trainer = Trainer(net, _labelled(train, net), test, trainer_cfg)
        metrics = trainer.fit()
    net.eval()
    accuracy = metrics.get("accuracy")
    if accuracy is None:
        accuracy = classifier_accuracy(net, test)["accuracy"]
    summary = {"label": label, "num_classes": cfg.num_classes, "test_accuracy": float(accuracy),
               "num_train": len(train), "num_test": len(test), "train_seconds": time.perf_counter() - start}
    return net, summary


def _labelled(data: Split, net: FeatureClassifier) -> Split:
    """``data`` without its unlabelled examples (``label < 0``), so no training batch is empty of labels."""
    ys = [net.labels(b.y) for b in eval_batches(data, 5000)]
    index = torch.nonzero(torch.cat(ys) >= 0).flatten() if ys else torch.zeros(0, dtype=torch.long)
    return data if len(index) == len(data) else data.subset(index)


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


def _load_cached(directory: Path, key: dict[str, Any]) -> FeatureClassifier | None:
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
        net = from_pretrained(directory)
        if not isinstance(net, FeatureClassifier):
            raise ValueError(f"it holds a {meta.get('model')!r} model")
    except (ConfigError, ValueError, KeyError, TypeError, RuntimeError, OSError) as e:
        warnings.warn(f"feature classifier cache {directory} is unusable ({e}); retraining", stacklevel=3)
        return None
    net.meta = meta  # type: ignore[assignment]
    return net.eval()


def _save_entry(net: FeatureClassifier, directory: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """``save_pretrained`` into a temporary sibling directory, then the weights and (last) the
    ``config.json`` recording their SHA-256 renamed into ``directory``: a reader never sees a
    config.json without its weights."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        net.save_pretrained(tmp, extra_config=extra)
        meta = load_json(tmp / CONFIG_NAME)
        meta["weights_sha256"] = sha256_file(tmp / WEIGHTS_NAME)
        meta["torch_version"] = torch.__version__
        save_json(tmp / CONFIG_NAME, meta)
        directory.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / WEIGHTS_NAME, directory / WEIGHTS_NAME)
        os.replace(tmp / CONFIG_NAME, directory / CONFIG_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


@CLASSIFIER_LOADERS.register("default")
def load_or_train_classifier(splits: DataSplits, config: ClassifierConfig | dict[str, Any] | None = None,
                             cache_dir: str | os.PathLike | None = None, label_factor: str | None = None,
                             device: str | torch.device = "cpu") -> FeatureClassifier:
    """The feature classifier of a data set, from the cache or trained once and cached.

    An entry is keyed by the data set's name, image shape, label choice, the classifier config
    (fitted to the data set) and a fingerprint of the data (split sizes and a checksum of a few
    examples), and lives in ``classifier_cache_dir(cache_dir) / "{name}-{C}x{H}x{W}-{hash}"`` as an
    ordinary saved model (``config.json`` + ``model.safetensors``, :func:`aelab.protocol.from_pretrained`
    loads it); the key, the weights' SHA-256, the test accuracy and the training time are extra
    entries of ``config.json``, which is written last. An entry that is corrupt or does not match
    (its config, or weights written by a concurrent run) is retrained with a warning.

    Args:
        splits: the data set (see :func:`train_classifier` for the labels used).
        config: a :class:`ClassifierConfig` or a mapping of its fields (default: the defaults).
        cache_dir: the cache root (see :func:`classifier_cache_dir`).
        label_factor: which factor to learn on factor data sets (default ``"shape"``).
        device: where to train and where the returned classifier lives.

    Returns:
        The classifier in evaluation mode; its ``meta`` attribute is the cached ``config.json``.
    """
    config = _as_config(config)
    label, fitted = _label_config(splits, config, label_factor)
    shape = list(fitted.image_shape)
    key = {"format": _FORMAT, "version": _VERSION, "data": splits.info.name, "image_shape": shape,
           "label": label, "classifier_config": to_dict(fitted), "data_fingerprint": _fingerprint(splits)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    directory = classifier_cache_dir(cache_dir) / f"{splits.info.name}-{'x'.join(map(str, shape))}-{digest}"
    net = _load_cached(directory, key)
    if net is not None:
        return net.to(device)
    net, summary = train_classifier(splits, config, label_factor, device)
    meta = _save_entry(net, directory, {**key, **summary})
    net.meta = meta  # type: ignore[assignment]
    return net
