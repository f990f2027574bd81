"""Priors p(z): modules whose ``forward()`` returns a ``torch.distributions`` object."""

from aelab.priors import flow, pixelcnn, structured, vqvae2  # noqa: F401  (registration)
from aelab.priors.base import PriorConfig, StandardNormal, build_prior

__all__ = ["PriorConfig", "StandardNormal", "build_prior"]
