"""The decomposition objective of Mathieu et al. (2019): a VAE with a structured prior and one more term."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aelab.config import ConfigError
from aelab.latents.heads import DiagonalGaussianHead
from aelab.losses.terms import AggregatePosteriorDivergence
from aelab.models.base import Autoencoder
from aelab.models.vae import VAEConfig, variational_autoencoder
from aelab.protocol import register_model
from aelab.schedules import parse_schedule


@dataclass
class DecompositionConfig(VAEConfig):
    """Attributes:
    alpha: weight of D(q(z), p(z)): a number or a schedule spec.
    divergence: ``mmd`` (dimension-wise IMQ MMD) or ``aggregate_kl`` (minibatch KL estimate).
    mmd_scales: IMQ kernel scales.
    """

    alpha: str = "0.0"
    divergence: str = "mmd"
    mmd_scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_schedule(self.alpha)
        except ValueError as e:
            raise ConfigError(f"model.alpha: {e}") from None
        AggregatePosteriorDivergence(self.divergence, self.mmd_scales)  # validates the name


@register_model("decomposition_vae", DecompositionConfig)
def decomposition_vae(cfg: DecompositionConfig) -> Autoencoder:
    """VAE trained on E[log p(x|z)] - beta KL(q(z|x) || p(z)) - alpha D(q(z), p(z)).

    q(z) is the aggregate posterior. With alpha = 0 and beta = 1 this is exactly the VAE; pair it
    with a structured prior (``model.prior.name`` = anisotropic, student_t, mixture, sparse).

    References:
        Mathieu, Rainforth, Siddharth & Teh, "Disentangling Disentanglement in Variational
        Autoencoders", ICML 2019.
    """
    divergence = AggregatePosteriorDivergence(cfg.divergence, cfg.mmd_scales)
    return variational_autoencoder(cfg, partial(DiagonalGaussianHead, latent_dim=cfg.latent_dim,
                                                              scale=cfg.posterior_scale),
                                   {"divergence": (divergence, parse_schedule(cfg.alpha))})
