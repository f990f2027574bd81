"""The k-sparse autoencoder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aelab.latents.heads import TopKHead
from aelab.losses.terms import ReconstructionNLL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.protocol import register_model
from aelab.schedules import constant, linear


@dataclass
class KSparseAEConfig(AEConfig):
    """Attributes:
    k: number of codes kept per example at the end of training.
    k_start: if set, k decreases linearly from ``k_start`` to ``k`` over ``k_steps`` steps
        (Makhzani & Frey start with a large k so that no code dies early).
    k_steps: length of that schedule in steps.
    alpha: at encoding time (features for downstream use) ``ceil(alpha * k)`` codes are kept.
    """

    latent_dim: int = 64
    k: int = 16
    k_start: int | None = None
    k_steps: int = 1000
    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.latent_dim:
            raise ValueError(f"k must be in [1, latent_dim={self.latent_dim}], got {self.k}")
        if self.alpha < 1.0:
            raise ValueError(f"alpha must be >= 1, got {self.alpha}")


@register_model("ksparse_ae", KSparseAEConfig)
def ksparse_ae(cfg: KSparseAEConfig) -> Autoencoder:
    """k-sparse autoencoder: linear codes of which only the k largest are kept.

    References:
        Makhzani & Frey, "k-Sparse Autoencoders", ICLR 2014.
    """
    k = constant(cfg.k) if cfg.k_start is None else linear(cfg.k_start, cfg.k, cfg.k_steps)
    head = partial(TopKHead, latent_dim=cfg.latent_dim, k=k, alpha=cfg.alpha)
    return build_autoencoder(cfg, head, {"recon": (ReconstructionNLL(), 1.0)})
