"""The variational autoencoder and beta-VAE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from aelab.config import ConfigError
from aelab.latents.heads import SCALE_PARAMS, DiagonalGaussianHead, LatentHead
from aelab.losses.terms import KLDivergence, ReconstructionNLL
from aelab.models.base import AEConfig, Autoencoder, build_autoencoder
from aelab.priors.base import PriorConfig, build_prior
from aelab.protocol import register_model
from aelab.schedules import parse_schedule


@dataclass
class VAEConfig(AEConfig):
    """Attributes:
    latent_dim: code size D.
    beta: weight of the KL term: a number or a schedule of the step, e.g. ``"linear(0, 1, 10000)"``
        (KL annealing) or ``"cyclical(0, 1, 5000, 0.5)"`` (cyclical annealing).
    monte_carlo_kl: use the one-sample KL estimate even where an analytic form exists.
    free_bits: free-bits threshold lambda in nats (0: off).
    free_bits_mode: ``dim`` (per latent dimension) or ``total``.
    prior: p(z).
    posterior_scale: how the encoder's head parameterises the posterior scale: ``log_sigma``
        (sigma = exp(output)) or ``log_var`` (sigma = exp(output / 2), as in Kingma & Welling's
        code and pythae); same family, different training dynamics under Adam.
    """

    latent_dim: int = 16
    beta: str = "1.0"
    monte_carlo_kl: bool = False
    free_bits: float = 0.0
    free_bits_mode: str = "dim"
    prior: PriorConfig = field(default_factory=PriorConfig)
    posterior_scale: str = "log_sigma"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_schedule(self.beta)  # fail at config time, naming the spec
        except ValueError as e:
            raise ConfigError(f"model.beta: {e}") from None
        if not self.free_bits >= 0:
            raise ConfigError(f"model.free_bits must be >= 0, got {self.free_bits}")
        if self.posterior_scale not in SCALE_PARAMS:
            raise ConfigError(f"model.posterior_scale: expected one of {', '.join(SCALE_PARAMS)}, "
                              f"got {self.posterior_scale!r}")


def variational_autoencoder(cfg: VAEConfig, head: Callable[[int], LatentHead],
                            extra_terms: dict | None = None) -> Autoencoder:
    """The VAE recipe around any posterior head: -ELBO with a (scheduled) beta and the configured prior.

    The KL is analytic where torch registers one for (q, p) and Monte Carlo otherwise, so flow
    posteriors and non-Gaussian priors need nothing special here. ``extra_terms`` adds weighted
    terms (name -> (term, weight)), e.g. the decomposition objective's divergence.
    """
    kl = KLDivergence(cfg.monte_carlo_kl, cfg.free_bits, cfg.free_bits_mode)
    terms = {"recon": (ReconstructionNLL(), 1.0), "kl": (kl, parse_schedule(cfg.beta)), **(extra_terms or {})}
    return build_autoencoder(cfg, head, terms, prior=build_prior(cfg.latent_dim, cfg.prior))


@register_model("vae", VAEConfig)
def vae(cfg: VAEConfig) -> Autoencoder:
    """Variational autoencoder: Gaussian q(z|x), prior p(z), loss -ELBO = -E log p(x|z) + beta KL.

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014;
        Rezende et al., "Stochastic Backpropagation and Approximate Inference in Deep Generative
        Models", ICML 2014.
    """
    return variational_autoencoder(cfg, partial(DiagonalGaussianHead, latent_dim=cfg.latent_dim,
                                                       scale=cfg.posterior_scale))


@dataclass
class BetaVAEConfig(VAEConfig):
    beta: str = "4.0"


@register_model("beta_vae", BetaVAEConfig)
def beta_vae(cfg: BetaVAEConfig) -> Autoencoder:
    """beta-VAE: the VAE with the KL weighted by beta (default 4), constant or scheduled.

    References:
        Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
        Framework", ICLR 2017.
    """
    return vae(cfg)
