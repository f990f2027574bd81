"""The feature classifier of the sample-quality metric (:mod:`aelab.metrics.generative`), as a model.

A small convolutional classifier whose feature layer is the space the Frechet distance is
measured in (the role Inception plays in FID). It is an ordinary registered model
(``feature_classifier``, family ``classifier``): ``loss(batch, step)`` is the cross-entropy of
its logits on ``batch.x`` against ``batch.y`` (the class labels, or one factor column of them:
``label_column``), so the ordinary :class:`~aelab.training.trainer.Trainer` trains it and
``save_pretrained`` / ``from_pretrained`` store it. Training it on a data set and caching it is
:func:`aelab.training.classifier.load_or_train_classifier`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.nn.linear import Linear
from aelab.nn.modes import eval_mode
from aelab.outputs import LossOutput
from aelab.protocol import Capabilities, Model, register_model

__all__ = ["ClassifierConfig", "FeatureClassifier", "classifier_accuracy", "classifier_outputs",
           "fit_classifier_to_data"]


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
        lr: peak AdamW learning rate (cosine decay to 0 over training).
        weight_decay: AdamW weight decay.
        train_limit: train on a seeded random subset of at most this many images (``None``: all).
        test_limit: measure the recorded test accuracy on at most this many test images.
        seed: seeds initialisation, the subset and the batch order.
        image_shape: ``(C, H, W)`` of the inputs (filled from the data set).
        num_classes: outputs of the head (filled from the data set: its classes, or the size of
            factor ``label_column``).
        label_column: the column of ``batch.y`` that holds the labels (factor data sets);
            ``None``: ``batch.y`` is the class label. Labels ``< 0`` mark unlabelled examples.
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
    image_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    label_column: int | None = None

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"classifier channels must be positive, got {self.channels}")
        for key in ("pool", "feature_dim", "epochs", "batch_size", "num_classes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"classifier {key} must be >= 1, got {getattr(self, key)}")
        for key in ("train_limit", "test_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"classifier {key} must be >= 1 or None, got {getattr(self, key)}")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"classifier image_shape must be (C, H, W), got {self.image_shape}")


def fit_classifier_to_data(cfg: ClassifierConfig, info: Any) -> ClassifierConfig:
    """The registry entry's ``fit_to_data``: ``image_shape`` from the data set, and ``num_classes``
    from its classes (or from the size of factor ``label_column`` on factor data sets) where known."""
    cfg = dataclasses.replace(cfg, image_shape=tuple(int(s) for s in info.shape))
    if cfg.label_column is not None and info.factor_sizes:
        return dataclasses.replace(cfg, num_classes=int(info.factor_sizes[cfg.label_column]))
    if info.num_classes:
        return dataclasses.replace(cfg, num_classes=int(info.num_classes))
    return cfg


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


@torch.no_grad()
def classifier_accuracy(model: FeatureClassifier, data: Any, cfg: Any = None) -> dict[str, float]:
    """The per-epoch evaluation: ``accuracy`` on the labelled examples of ``data`` (NaN if none)."""
    batch_size = getattr(cfg, "eval_batch_size", 500)
    correct = seen = 0
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            batch = data.get_batch(torch.arange(start, min(start + batch_size, len(data))))
            y = model.labels(batch.y).to(device)
            keep = y >= 0
            if bool(keep.any()):
                pred = model(batch.x.to(device)[keep]).argmax(1)
                correct += int((pred == y[keep]).sum())
                seen += int(keep.sum())
    return {"accuracy": correct / seen if seen else float("nan")}


@register_model("feature_classifier", ClassifierConfig, family="classifier", evaluation=classifier_accuracy,
                figures=None, fit_to_data=fit_classifier_to_data)
class FeatureClassifier(Model):
    """A small conv net: strided convs -> average pool -> feature layer (ReLU) -> linear head.

    Inputs are images ``(B, C, H, W)`` in ``[0, 1]``, standardised per channel with the training
    split's statistics (stored as buffers, so they travel with the weights).

    Args:
        config: the architecture, ``image_shape`` (any size, down to 1 x 1) and ``num_classes``
            (the training fields are the trainer's business).

    Example:
        >>> net = FeatureClassifier(ClassifierConfig(channels=(4, 8), feature_dim=16, image_shape=(1, 12, 10),
        ...                                          num_classes=3))
        >>> x = torch.rand(5, 1, 12, 10)
        >>> net.features(x).shape, net(x).shape
        (torch.Size([5, 16]), torch.Size([5, 3]))
        >>> net.loss(Batch(x, torch.tensor([0, 1, 2, -1, 0]))).per_example.shape
        torch.Size([5])
    """

    capabilities = Capabilities(images=True)

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = (int(s) for s in config.image_shape)
        self.image_shape = (c, h, w)
        self.num_classes = config.num_classes
        layers: list[nn.Module] = []
        for ch in config.channels:
            # strided convolutions: a quarter of the cost of conv + max-pool, which matters on CPU
            sh, sw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            layers += [nn.Conv2d(c, ch, 3, stride=(sh, sw), padding=1), nn.ReLU()]
            h, w, c = -(-h // sh), -(-w // sw), ch
        layers.append(nn.AdaptiveAvgPool2d(config.pool))
        self.conv = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Flatten(), Linear(c * config.pool**2, config.feature_dim), nn.ReLU())
        self.head = Linear(config.feature_dim, config.num_classes)
        self.register_buffer("input_mean", torch.zeros(self.image_shape[0]))
        self.register_buffer("input_std", torch.ones(self.image_shape[0]))

    def labels(self, y: Tensor) -> Tensor:
        """The labels this classifier learns: ``y`` itself, or its column ``config.label_column``."""
        return y[:, self.config.label_column] if self.config.label_column is not None else y

    def features(self, x: Tensor) -> Tensor:
        """Feature-layer activations ``(B, feature_dim)``: the space the Frechet distance lives in."""
        x = (x - self.input_mean[:, None, None]) / self.input_std[:, None, None]
        return self.feature(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.features(x))

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        """Cross-entropy on the labelled examples (labels ``< 0`` count 0 and are left out of the mean)."""
        logits = self(batch.x)
        y = self.labels(batch.y).to(logits.device).long()
        keep = y >= 0
        per_example = nn.functional.cross_entropy(logits, y.clamp_min(0), reduction="none") * keep
        n = keep.sum()
        loss = per_example.sum() / n.clamp_min(1)
        acc = ((logits.detach().argmax(1) == y) & keep).sum() / n.clamp_min(1)
        return LossOutput(loss, {"cross_entropy": loss.detach(), "accuracy": acc.float()}, per_example.detach())

    def sample(self, n: int) -> Tensor:
        """Refused: a classifier has no prior to sample from."""
        raise ValueError(f"model {self.name!r} is a classifier: it has no prior to sample from")
