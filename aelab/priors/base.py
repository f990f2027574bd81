"""Priors are modules (so learnable priors train with the model and move with ``.to``) whose
``forward()`` returns p(z) with event shape ``(D,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent

from aelab.distributions import UnitNormal
from aelab.registry import PRIORS


@dataclass
class PriorConfig:
    """Attributes:
    name: a registered prior (``standard_normal``, ``anisotropic``, ``student_t``, ``mixture``,
        ``sparse``, ``flow``; see ``aelab list``).
    flows: ``flow`` prior only: number of autoregressive (MAF) steps.
    hidden: ``flow`` prior only: width of each step's MADE hidden layers.
    variances: ``anisotropic`` only: relative variances per dimension, rescaled to sum to D
        (the isotropic prior's total); empty: geometric from 1 down to ``variance_ratio``.
    variance_ratio: ``anisotropic`` only: smallest / largest variance of the default profile.
    learn: learn the prior's parameters (``anisotropic`` variances; ``mixture`` weights,
        means and scales) jointly with the model.
    df: ``student_t`` only: degrees of freedom.
    components: ``mixture`` only: number of Gaussian components.
    component_scale: ``mixture`` only: initial standard deviation of each component.
    gamma: ``sparse`` only: weight of the spike N(0, spike_scale^2) in each dimension.
    spike_scale: ``sparse`` only: standard deviation of the spike.
    """

    name: str = "standard_normal"
    flows: int = 2
    hidden: int = 64
    variances: tuple[float, ...] = ()
    variance_ratio: float = 0.1
    learn: bool = False
    df: float = 5.0
    components: int = 10
    component_scale: float = 0.5
    gamma: float = 0.8
    spike_scale: float = 0.05


@PRIORS.register("standard_normal")
class StandardNormal(nn.Module):
    """The isotropic unit Gaussian N(0, I)."""

    def __init__(self, latent_dim: int, cfg: PriorConfig | None = None) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        # the distribution depends only on the buffers: built once, rebuilt when .to() replaces them
        cached = self.__dict__.get("_dist")
        if cached is None or cached.base_dist.loc is not self.loc or cached.base_dist.scale is not self.scale:
            cached = self.__dict__["_dist"] = Independent(UnitNormal(self.loc, self.scale, validate_args=False), 1)
        return cached


def build_prior(latent_dim: int, cfg: PriorConfig) -> nn.Module:
    return PRIORS.get(cfg.name)(latent_dim, cfg)
