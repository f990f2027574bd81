"""The pinwheel: 2-D points on k curved arms, with the arm of every point as its label.

A standard test of whether a latent space separates clusters (Johnson et al. 2016; used by
Mathieu et al. 2019 for the mixture prior). Points are drawn from an elongated Gaussian per arm
and swirled: each point is rotated by its arm's angle plus ``rate * exp(radial coordinate)``.
Served as float tensors of shape ``(1, 1, 2)`` (train with a Gaussian likelihood and an MLP).

References:
    Johnson, Duvenaud, Wiltschko, Datta & Adams, "Composing graphical models with neural networks
    for structured representations and fast inference", NeurIPS 2016.

Example:
    >>> x, y = pinwheel(arms=3, per_arm=4, seed=0)
    >>> x.shape, y.tolist()
    (torch.Size([12, 2]), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aelab.data.base import DataConfig, DatasetInfo, DataSplits, FloatTensorDataset
from aelab.registry import DATASETS

ARMS, TRAIN_PER_ARM, TEST_PER_ARM = 5, 2000, 400


def pinwheel(arms: int = ARMS, per_arm: int = 1000, radial_std: float = 0.3, tangential_std: float = 0.05,
             rate: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Draw ``arms * per_arm`` points ``(N, 2)`` and their arm labels ``(N,)``, deterministically."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(arms).repeat_interleave(per_arm)
    feats = torch.randn(arms * per_arm, 2, generator=g, dtype=torch.float64)
    feats = feats * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
    feats[:, 0] += 1.0
    angles = 2 * math.pi * labels.double() / arms + rate * feats[:, 0].exp()
    c, s = angles.cos(), angles.sin()
    x = torch.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], dim=1)
    return x.float(), labels


@DATASETS.register("pinwheel")
def build_pinwheel(cfg: DataConfig) -> DataSplits:
    """Pinwheel: 5 curved arms of 2-D points (10,000 train / 2,000 test), the arm as label."""
    x_tr, y_tr = pinwheel(per_arm=TRAIN_PER_ARM, seed=cfg.seed)
    x_te, y_te = pinwheel(per_arm=TEST_PER_ARM, seed=cfg.seed + 10_000)
    info = DatasetInfo(name="pinwheel", shape=(1, 1, 2), num_classes=ARMS,
                       class_names=tuple(f"arm {i}" for i in range(ARMS)))
    return DataSplits(FloatTensorDataset(x_tr.view(-1, 1, 1, 2), y_tr),
                      FloatTensorDataset(x_te.view(-1, 1, 1, 2), y_te), info)
