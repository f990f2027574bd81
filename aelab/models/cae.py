"""The contractive autoencoder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aelab.latents.heads import DeterministicHead
from aelab.losses.terms import ContractivePenalty, ReconstructionNLL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.protocol import register_model


@dataclass
class CAEConfig(AEConfig):
    """Attributes:
    contractive_weight: weight (lambda) of ``||J_f(x)||_F^2``.
    code_activation: activation on the codes (Rifai et al. use sigmoid).
    """

    contractive_weight: float = 0.1
    code_activation: str | None = "sigmoid"


@register_model("cae", CAEConfig)
def cae(cfg: CAEConfig) -> Autoencoder:
    """Contractive autoencoder: penalises the Frobenius norm of the encoder's Jacobian.

    References:
        Rifai et al., "Contractive Auto-Encoders: Explicit Invariance During Feature Extraction",
        ICML 2011.
    """
    head = partial(DeterministicHead, latent_dim=cfg.latent_dim, activation=cfg.code_activation)
    terms = {"recon": (ReconstructionNLL(), 1.0), "contractive": (ContractivePenalty(), cfg.contractive_weight)}
    return build_autoencoder(cfg, head, terms)
