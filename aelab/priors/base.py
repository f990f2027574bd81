"""Priors are modules (so learnable priors train with the model and move with ``.to``) whose
``forward()`` returns p(z) with event shape ``(D,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from aelab.registry import PRIORS


@dataclass
class PriorConfig:
    """Attributes:
    name: a registered prior (``standard_normal``; see ``aelab list``).
    flows: ``flow`` prior only: number of autoregressive (MAF) steps.
    hidden: ``flow`` prior only: width of each step's MADE hidden layers.
    """

    name: str = "standard_normal"
    flows: int = 2
    hidden: int = 64


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """The isotropic unit Gaussian N(0, I)."""

    def __init__(self, latent_dim: int, cfg: PriorConfig | None = None) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)


def build_prior(latent_dim: int, cfg: PriorConfig) -> nn.Module:
    return PRIORS.get(cfg.name)(latent_dim, cfg)
