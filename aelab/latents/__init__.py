"""Latent heads: encoder features -> q(z|x)."""

from aelab.latents.heads import DeterministicHead, DiagonalGaussianHead, LatentHead, TopKHead

__all__ = ["DeterministicHead", "DiagonalGaussianHead", "LatentHead", "TopKHead"]
