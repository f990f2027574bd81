"""The sparse autoencoder (KL sparsity penalty on the mean code activation)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aelab.latents.heads import DeterministicHead
from aelab.losses.terms import ReconstructionNLL, SparsityKL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.protocol import register_model


@dataclass
class SparseAEConfig(AEConfig):
    """Attributes:
    rho: target mean activation of each sigmoid code.
    sparsity_weight: weight (beta) of ``sum_j KL(rho || rho_hat_j)``.
    """

    rho: float = 0.05
    sparsity_weight: float = 1.0


@register_model("sparse_ae", SparseAEConfig)
def sparse_ae(cfg: SparseAEConfig) -> Autoencoder:
    """Sparse autoencoder: sigmoid codes pulled to a mean activation rho by a KL penalty.

    References:
        Ng, "Sparse autoencoder", CS294A lecture notes, Stanford, 2011.
    """
    head = partial(DeterministicHead, latent_dim=cfg.latent_dim, activation="sigmoid")
    terms = {"recon": (ReconstructionNLL(), 1.0), "sparsity": (SparsityKL(cfg.rho), cfg.sparsity_weight)}
    return build_autoencoder(cfg, head, terms)
