"""Latent heads: encoder features -> q(z|x)."""

from aelab.latents.heads import DeterministicHead, DiagonalGaussianHead, LatentHead, TopKHead
from aelab.latents.iaf import IAFHead

__all__ = ["DeterministicHead", "DiagonalGaussianHead", "IAFHead", "LatentHead", "TopKHead"]
