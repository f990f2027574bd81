"""Input corruptions for denoising autoencoders (the loss is always against the clean input)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aelab.registry import Registry

CORRUPTIONS: Registry = Registry("corruption")


@dataclass
class CorruptionConfig:
    """Attributes:
    kind: ``gaussian`` (additive N(0, level^2)), ``masking`` (each pixel set to 0 with
        probability ``level``) or ``salt_pepper`` (each pixel set to 0 or 1, equally likely,
        with probability ``level``).
    level: the noise standard deviation or the corrupted fraction.
    """

    kind: str = "gaussian"
    level: float = 0.3


@CORRUPTIONS.register("gaussian")
def gaussian_noise(x: Tensor, level: float) -> Tensor:
    """Additive isotropic Gaussian noise with standard deviation ``level``."""
    return x + level * torch.randn_like(x)


@CORRUPTIONS.register("masking")
def masking_noise(x: Tensor, level: float) -> Tensor:
    """Each pixel is set to 0 with probability ``level`` (Vincent et al. 2010)."""
    return x * (torch.rand_like(x) >= level)


@CORRUPTIONS.register("salt_pepper")
def salt_and_pepper(x: Tensor, level: float) -> Tensor:
    """Each pixel is set to its minimum or maximum (0 or 1), each with probability ``level / 2``."""
    u = torch.rand_like(x)
    x = torch.where(u < level / 2, torch.zeros_like(x), x)
    return torch.where((u >= level / 2) & (u < level), torch.ones_like(x), x)


class Corruption(nn.Module):
    """Applies a registered corruption in training mode only.

    References:
        Vincent et al., "Stacked Denoising Autoencoders", JMLR 2010.
    """

    def __init__(self, cfg: CorruptionConfig) -> None:
        super().__init__()
        self.fn = CORRUPTIONS.get(cfg.kind)
        if cfg.level < 0 or (cfg.kind != "gaussian" and cfg.level > 1):
            raise ValueError(f"corruption level for {cfg.kind!r} must be in [0, 1], got {cfg.level}")
        self.level = cfg.level

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.level) if self.training else x
