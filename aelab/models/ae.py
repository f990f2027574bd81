"""The plain autoencoder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aelab.latents.heads import DeterministicHead
from aelab.losses.terms import ReconstructionNLL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.protocol import register_model


@dataclass
class AEModelConfig(AEConfig):
    """Attributes:
    code_activation: activation on the codes (``None``: linear codes).
    """

    code_activation: str | None = None


@register_model("ae", AEModelConfig)
def ae(cfg: AEModelConfig) -> Autoencoder:
    """Autoencoder: deterministic codes, trained on -log p(x|z).

    References:
        Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural Networks",
        Science 2006.
    """
    head = partial(DeterministicHead, latent_dim=cfg.latent_dim, activation=cfg.code_activation)
    return build_autoencoder(cfg, head, {"recon": (ReconstructionNLL(), 1.0)})
