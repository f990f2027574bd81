"""The denoising autoencoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from aelab.latents.heads import DeterministicHead
from aelab.losses.terms import ReconstructionNLL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.nn.corruption import Corruption, CorruptionConfig
from aelab.protocol import register_model


@dataclass
class DAEConfig(AEConfig):
    """Attributes:
    corruption: how the input is corrupted during training (gaussian, masking, salt_pepper).
    """

    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)


@register_model("dae", DAEConfig)
def dae(cfg: DAEConfig) -> Autoencoder:
    """Denoising autoencoder: encode a corrupted input, score the clean one.

    References:
        Vincent et al., "Stacked Denoising Autoencoders: Learning Useful Representations in a Deep
        Network with a Local Denoising Criterion", JMLR 2010.
    """
    head = partial(DeterministicHead, latent_dim=cfg.latent_dim)
    return build_autoencoder(cfg, head, {"recon": (ReconstructionNLL(), 1.0)},
                             corruption=Corruption(cfg.corruption))
