"""The contractive autoencoder."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from aelab.config import ConfigError
from aelab.latents.heads import DeterministicHead
from aelab.losses.terms import ContractivePenalty, ReconstructionNLL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.protocol import register_model


@dataclass
class CAEConfig(AEConfig):
    """Attributes:
    contractive_weight: weight (lambda) of ``||J_f(x)||_F^2``.
    code_activation: activation on the codes (Rifai et al. use sigmoid).
    jacobian: how ``||J_f(x)||_F^2`` is computed: ``auto`` (closed form when the encoder up to the
        codes is one affine layer and an elementwise activation, i.e. ``backbone.hidden=()``, else
        exact), ``exact`` (automatic differentiation, D VJPs) or ``hutchinson`` (an unbiased
        estimate from ``jacobian_samples`` VJPs while training; exact at evaluation). See
        :class:`aelab.losses.terms.ContractivePenalty`.
    jacobian_samples: Rademacher probes per example for ``hutchinson``; the estimate's variance
        falls as 1 / samples.
    """

    contractive_weight: float = 0.1
    code_activation: str | None = "sigmoid"
    jacobian: Literal["auto", "exact", "hutchinson"] = "auto"
    jacobian_samples: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.jacobian not in ContractivePenalty.MODES:
            raise ConfigError(f"model.jacobian: expected one of {list(ContractivePenalty.MODES)}, "
                              f"got {self.jacobian!r}")
        if self.jacobian_samples < 1:
            raise ConfigError(f"model.jacobian_samples must be >= 1, got {self.jacobian_samples}")


@register_model("cae", CAEConfig)
def cae(cfg: CAEConfig) -> Autoencoder:
    """Contractive autoencoder: penalises the Frobenius norm of the encoder's Jacobian.

    References:
        Rifai et al., "Contractive Auto-Encoders: Explicit Invariance During Feature Extraction",
        ICML 2011.
    """
    head = partial(DeterministicHead, latent_dim=cfg.latent_dim, activation=cfg.code_activation)
    penalty = ContractivePenalty(cfg.jacobian, cfg.jacobian_samples)
    terms = {"recon": (ReconstructionNLL(), 1.0), "contractive": (penalty, cfg.contractive_weight)}
    return build_autoencoder(cfg, head, terms)
