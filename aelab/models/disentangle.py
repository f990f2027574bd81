"""The models of the disentanglement_lib study, each the VAE with one more term or two.

``beta_tcvae``, ``dip_vae`` and ``annealed_vae`` are the VAE recipe
(:func:`aelab.models.vae.variational_autoencoder`) with weighted terms from
:mod:`aelab.losses.terms`; ``factor_vae`` is that VAE beside a discriminator, and the one model
here with a training step of its own (the discriminator has its own optimizer).

References:
    Locatello et al., "Challenging Common Assumptions in the Unsupervised Learning of
    Disentangled Representations", ICML 2019 (the study and disentanglement_lib).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.latents.heads import DiagonalGaussianHead, LatentHead
from aelab.losses.objective import Objective
from aelab.losses.terms import (
    CapacityKL,
    DensityRatioTC,
    DIPCovariancePenalty,
    DiscriminatorLoss,
    KLDecomposition,
)
from aelab.models.base import Autoencoder
from aelab.models.vae import VAEConfig, variational_autoencoder
from aelab.nn.linear import Linear
from aelab.outputs import LossOutput, ModelOutput
from aelab.protocol import Capabilities, Model, StepContext, register_model
from aelab.schedules import linear

__all__ = ["AnnealedVAEConfig", "BetaTCVAEConfig", "DIPVAEConfig", "FactorVAE", "FactorVAEConfig",
           "tc_discriminator"]


def _gaussian_head(cfg: VAEConfig) -> Callable[[int], LatentHead]:
    return partial(DiagonalGaussianHead, latent_dim=cfg.latent_dim, scale=cfg.posterior_scale)


def _check_weights(cfg: object, *names: str) -> None:
    """ConfigError unless each named field is a finite number >= 0 (``None`` passes)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"model.{name} must be a finite number >= 0, got {value}")


# --- beta-TCVAE ---------------------------------------------------------------------------------
@dataclass
class BetaTCVAEConfig(VAEConfig):
    """Attributes:
    tc_beta: Chen et al.'s beta: the objective is ``-ELBO + (tc_beta - 1) TC`` (the VAE's
        ``beta`` stays the KL weight, 1).
    dataset_size: 0: log q(z) on the minibatch mixture (normaliser log B); N: Chen et al.'s
        minibatch-weighted sampling (normaliser log NB). A constant: it moves the logged MI,
        TC and dimension-wise KL, never the gradients (see :func:`aelab.losses.terms.kl_decomposition`).
    """

    tc_beta: float = 6.0
    dataset_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weights(self, "tc_beta")
        if self.dataset_size < 0:
            raise ConfigError(f"model.dataset_size must be >= 0 (0: the minibatch mixture), got {self.dataset_size}")


@register_model("beta_tcvae", BetaTCVAEConfig)
def beta_tcvae(cfg: BetaTCVAEConfig) -> Autoencoder:
    """beta-TCVAE: ``-ELBO + (beta - 1) TC``, TC the total correlation of the aggregate posterior.

    The TC is estimated on each batch (:func:`aelab.losses.terms.kl_decomposition`); the KL's
    other two parts, index-code MI and dimension-wise KL, are logged at evaluation (weight 0).
    This is disentanglement_lib's ``BetaTCVAE`` (Chen et al.'s equation 5 with alpha = gamma = 1,
    the KL analytic); default beta = 6 (the study sweeps 1..10).

    References:
        Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in Variational
        Autoencoders", NeurIPS 2018.

    Example:
        >>> from aelab.protocol import build_model
        >>> m = build_model("beta_tcvae", image_shape=(1, 8, 8), latent_dim=3)
        >>> with torch.no_grad():
        ...     sorted(m.loss(Batch(torch.rand(4, 1, 8, 8))).terms)
        ['dim_kl', 'kl', 'mi', 'recon', 'tc']
    """
    parts = {part: (KLDecomposition(part, cfg.dataset_size), cfg.tc_beta - 1.0 if part == "tc" else 0.0)
             for part in KLDecomposition.PARTS}
    return variational_autoencoder(cfg, _gaussian_head(cfg), parts)


# --- DIP-VAE ------------------------------------------------------------------------------------
#: lambda_d / lambda_od by DIP-VAE kind (disentanglement_lib's study)
DIP_LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}


@dataclass
class DIPVAEConfig(VAEConfig):
    """Attributes:
    kind: ``i`` (match the covariance of the encoder means to I) or ``ii`` (the covariance of q(z)).
    lambda_od: weight of the off-diagonal penalty (the study sweeps 1..100).
    lambda_d_factor: lambda_d = lambda_d_factor * lambda_od; ``None``: 10 for ``i``, 1 for ``ii``.
    """

    kind: str = "i"
    lambda_od: float = 10.0
    lambda_d_factor: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in DIP_LAMBDA_D_FACTOR:
            raise ConfigError(f"model.kind: expected 'i' or 'ii', got {self.kind!r}")
        _check_weights(self, "lambda_od", "lambda_d_factor")

    @property
    def lambda_d(self) -> float:
        factor = self.lambda_d_factor if self.lambda_d_factor is not None else DIP_LAMBDA_D_FACTOR[self.kind]
        return factor * self.lambda_od


@register_model("dip_vae", DIPVAEConfig)
def dip_vae(cfg: DIPVAEConfig) -> Autoencoder:
    """DIP-VAE: ``-ELBO + lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2``.

    C is estimated on each batch: ``Cov[mu(x)]`` for DIP-VAE-I, ``E[Cov_q(z|x)] + Cov[mu(x)]``
    (the covariance of q(z)) for DIP-VAE-II. Defaults are disentanglement_lib's: lambda_od = 10,
    lambda_d = 10 lambda_od (I) or lambda_od (II).

    References:
        Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled Latent Concepts
        from Unlabeled Observations", ICLR 2018.

    Example:
        >>> from aelab.protocol import build_model
        >>> m = build_model("dip_vae", image_shape=(1, 8, 8), latent_dim=3, kind="ii")
        >>> m.objective.weights(0)
        {'recon': 1.0, 'kl': 1.0, 'dip_off_diagonal': 10.0, 'dip_diagonal': 10.0}
    """
    return variational_autoencoder(cfg, _gaussian_head(cfg), {
        "dip_off_diagonal": (DIPCovariancePenalty(cfg.kind, "off_diagonal"), cfg.lambda_od),
        "dip_diagonal": (DIPCovariancePenalty(cfg.kind, "diagonal"), cfg.lambda_d),
    })


# --- AnnealedVAE --------------------------------------------------------------------------------
@dataclass
class AnnealedVAEConfig(VAEConfig):
    """Attributes:
    beta: weight of the plain KL term: 0, so the objective is Burgess et al.'s (the KL is still
        logged at evaluation).
    gamma: weight of ``|KL - C|`` (disentanglement_lib: 1000).
    c_max: the final capacity C in nats (disentanglement_lib: 25).
    c_steps: steps over which C rises linearly from 0 to ``c_max``. disentanglement_lib uses
        100000 (of 300000 steps); the default 5000 suits aelab's short runs (about an epoch of
        dSprites or ten of MNIST at batch 128).
    """

    beta: str = "0.0"
    gamma: float = 1000.0
    c_max: float = 25.0
    c_steps: int = 5000

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weights(self, "gamma", "c_max", "c_steps")


@register_model("annealed_vae", AnnealedVAEConfig)
def annealed_vae(cfg: AnnealedVAEConfig) -> Autoencoder:
    """AnnealedVAE (controlled capacity): ``-E log p(x|z) + gamma |KL(q(z|x) || p(z)) - C(step)|``.

    C rises linearly from 0 to ``c_max`` over ``c_steps`` (``linear(0, c_max, c_steps)``, at
    ``c_max`` at evaluation); the absolute value is of the batch-mean KL, as in
    disentanglement_lib (:class:`aelab.losses.terms.CapacityKL`).

    References:
        Burgess et al., "Understanding disentangling in beta-VAE", NeurIPS workshop 2017
        (arXiv:1804.03599).

    Example:
        >>> from aelab.protocol import build_model
        >>> m = build_model("annealed_vae", image_shape=(1, 8, 8), latent_dim=3, c_max=10, c_steps=100)
        >>> capacity, gamma = m.objective.terms["capacity"]
        >>> capacity.capacity(50), gamma(50), m.objective.weights(50)["kl"]
        (5.0, 1000.0, 0.0)
    """
    capacity = CapacityKL(linear(0.0, cfg.c_max, cfg.c_steps), cfg.monte_carlo_kl)
    return variational_autoencoder(cfg, _gaussian_head(cfg), {"capacity": (capacity, cfg.gamma)})


# --- FactorVAE ----------------------------------------------------------------------------------
@dataclass
class FactorVAEConfig(VAEConfig):
    """Attributes:
    gamma: weight of the discriminator's TC estimate (the study sweeps 10..100; Kim & Mnih use
        35 on dSprites).
    discriminator_hidden: the discriminator MLP's hidden widths (Kim & Mnih and
        disentanglement_lib: six layers of 1000; the default is smaller).
    discriminator_betas: Adam's betas of the discriminator's optimizer (Kim & Mnih: 0.5, 0.9);
        the VAE's are ``trainer.betas``; both use ``trainer.lr``.
    """

    gamma: float = 10.0
    discriminator_hidden: tuple[int, ...] = (256, 256, 256)
    discriminator_betas: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weights(self, "gamma")
        if not self.discriminator_hidden or min(self.discriminator_hidden) < 1:
            raise ConfigError(f"model.discriminator_hidden must be positive widths, got {self.discriminator_hidden}")
        if len(self.discriminator_betas) != 2 or not all(0 <= b < 1 for b in self.discriminator_betas):
            raise ConfigError(f"model.discriminator_betas must be two numbers in [0, 1), "
                              f"got {self.discriminator_betas}")


def tc_discriminator(latent_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """FactorVAE's discriminator: an MLP with leaky ReLUs (slope 0.2) from codes ``(B, D)`` to
    one logit each ``(B, 1)``, positive for "a sample of q(z)".

    Example:
        >>> tc_discriminator(4, (8, 8))(torch.zeros(3, 4)).shape
        torch.Size([3, 1])
    """
    widths = [latent_dim, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [Linear(a, b), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers, Linear(widths[-1], 1))


@register_model("factor_vae", FactorVAEConfig)
class FactorVAE(Model):
    """FactorVAE: ``-ELBO + gamma TC``, the TC estimated by a discriminator (density-ratio trick).

    The model is the VAE recipe's :class:`~aelab.models.base.Autoencoder` (``vae``) with two more
    terms, and a discriminator beside it. The discriminator tells the batch's posterior samples
    from the same samples with each dimension permuted across the batch (disentanglement_lib's
    choice; Kim & Mnih permute a second batch's codes): :class:`~aelab.losses.terms.DiscriminatorLoss`.
    Its logit at the posterior samples is the TC estimate the VAE minimises:
    :class:`~aelab.losses.terms.DensityRatioTC`. Each term reaches only its own player (the TC
    through detached discriminator weights, the discriminator's loss through detached codes),
    so the one loss ``recon + kl + gamma tc + discriminator`` has, for each player, the gradient of
    that player's loss, and one backward pass serves both. The training step then moves each with
    its own optimizer (Adam with ``discriminator_betas`` for the discriminator), simultaneously,
    as disentanglement_lib does.

    References:
        Kim & Mnih, "Disentangling by Factorising", ICML 2018.

    Example:
        >>> from aelab.protocol import build_model
        >>> m = build_model("factor_vae", image_shape=(1, 8, 8), latent_dim=3, discriminator_hidden=(8,))
        >>> sorted(m.optimizer_groups()), m.capabilities.own_step
        (['discriminator', 'vae'], True)
        >>> m.loss(Batch(torch.rand(4, 1, 8, 8))).per_example.shape
        torch.Size([4])
    """

    capabilities = Capabilities(reconstruct=True, latent=True, latent_prior=True, sample=True, images=True,
                                own_step=True)

    def __init__(self, cfg: FactorVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        discriminator = tc_discriminator(cfg.latent_dim, tuple(cfg.discriminator_hidden))
        self.vae = variational_autoencoder(cfg, _gaussian_head(cfg), {
            "tc": (DensityRatioTC(discriminator), cfg.gamma),
            "discriminator": (DiscriminatorLoss(discriminator), 1.0),
        })
        self.discriminator = discriminator

    # --- the VAE's interface ------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.vae.latent_shape

    @property
    def objective(self) -> Objective:
        return self.vae.objective

    @property
    def prior(self) -> nn.Module:
        return self.vae.prior

    def encode(self, x: Tensor, step: int | None = None, encoding: bool = True) -> Distribution:
        """q(z|x) (see :meth:`Autoencoder.encode <aelab.models.base.Autoencoder.encode>`)."""
        return self.vae.encode(x, step, encoding)

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z)."""
        return self.vae.decode(z)

    def forward(self, x: Tensor, step: int | None = None) -> ModelOutput:
        return self.vae(x, step)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        """``recon + kl + gamma tc + discriminator``, each player's gradient from its own loss only."""
        return self.vae.loss(batch, step)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.vae.reconstruct(x)

    def sample(self, n: int) -> Tensor:
        return self.vae.sample(n)

    # --- two players, two optimizers ----------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """``vae`` (encoder, head, decoder, a learned prior) and ``discriminator``."""
        return {"vae": list(self.vae.parameters()), "discriminator": list(self.discriminator.parameters())}

    def train_step(self, batch: Batch, step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   ctx: StepContext) -> dict[str, float]:
        """One simultaneous update of both players on this step's batch (one forward and one
        backward pass), each gradient clipped on its own."""
        for group in optimizers["discriminator"].param_groups:
            if "betas" in group:  # Adam and AdamW: the discriminator's own moments' decay
                group["betas"] = tuple(self.config.discriminator_betas)
        with ctx.autocast():
            lo = self.loss(batch, step)
        ctx.check_finite("loss", lo.loss.item(), lo.terms)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        lo.loss.backward()
        for opt in optimizers.values():
            ctx.finish_gradients([p for group in opt.param_groups for p in group["params"]])
            opt.step()
        return {"loss": lo.loss.item(), **{k: v.item() for k, v in lo.terms.items()}}
