"""Typed outputs passed from models to objectives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.distributions import Distribution


@dataclass
class ModelOutput:
    """What a model's ``forward`` returns; objectives read only this.

    Attributes:
        x: the target the likelihood scores (the clean input), (B, C, H, W).
        x_in: what the encoder saw (corrupted for a denoising AE), (B, C, H, W).
        z: the latent code or sample fed to the decoder, (B, D).
        qz_x: the encoder's distribution q(z|x) (a point mass for deterministic AEs).
        px_z: the decoder's distribution p(x|z) with event shape (C, H, W).
        pz: the prior p(z), or ``None`` for models without one.
        aux: model-specific extras (e.g. pre-sparsity activations).
    """

    x: Tensor
    x_in: Tensor
    z: Tensor
    qz_x: Distribution
    px_z: Distribution
    pz: Distribution | None = None
    aux: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossOutput:
    """The objective's result: the scalar to minimise and each term's batch mean (detached)."""

    loss: Tensor
    terms: dict[str, Tensor]
    per_example: Tensor
