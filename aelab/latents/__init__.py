"""Latent heads: encoder features -> q(z|x)."""

from aelab.latents.heads import DeterministicHead, LatentHead, TopKHead

__all__ = ["DeterministicHead", "LatentHead", "TopKHead"]
