"""Latent heads map encoder features ``(B, F)`` to the encoder distribution q(z|x).

Every head has the same call signature, ``head(h, step=None, encoding=False)``: ``step`` drives
schedules during training (``None`` means "schedule finished", as at evaluation), and
``encoding=True`` asks for the codes used as features downstream (e.g. alpha*k in a k-sparse AE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent
from torch.nn import functional as F

from aelab.distributions import DiagonalNormal, PointMass
from aelab.nn.backbones import ACTIVATIONS
from aelab.nn.linear import Linear
from aelab.schedules import Schedule, constant


class LatentHead(nn.Module):
    """Base class of latent heads (abstract: subclasses implement ``forward``)."""

    latent_dim: int

    def forward(self, h: Tensor, step: int | None = None, encoding: bool = False) -> Distribution:
        raise NotImplementedError  # abstract


class DeterministicHead(LatentHead):
    """A linear map, optionally followed by an activation, as a point mass.

    Args:
        in_features: encoder feature width F.
        latent_dim: code size D.
        activation: a registered activation name (``sigmoid`` for sparse and contractive AEs)
            or ``None`` for linear codes.
    """

    def __init__(self, in_features: int, latent_dim: int, activation: str | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = Linear(in_features, latent_dim)
        self.activation = ACTIVATIONS.get(activation)() if activation else nn.Identity()

    def dense_layers(self) -> list[nn.Module]:
        """The head's layers in order, ``[linear, activation]`` (``nn.Identity`` for linear codes)."""
        return [self.linear, self.activation]

    def forward(self, h: Tensor, step: int | None = None, encoding: bool = False) -> Distribution:
        return PointMass(self.activation(self.linear(h)))


def top_k_mask(codes: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row and zero the rest, ``(B, D) -> (B, D)``.

    Built with ``scatter`` of the kept values, so the gradient reaches only the kept entries.
    """
    k = max(1, min(k, codes.shape[-1]))
    values, index = codes.topk(k, dim=-1)
    return torch.zeros_like(codes).scatter(-1, index, values)


class TopKHead(LatentHead):
    """Linear codes of which only the k largest survive (the k-sparse autoencoder).

    Args:
        in_features: encoder feature width F.
        latent_dim: code size D.
        k: a schedule of the number of kept codes (e.g. from D down to the target k).
        alpha: at encoding time ``round(alpha * k)`` codes are kept (Makhzani & Frey use alpha >= 1
            so features are less sparse than during training).

    References:
        Makhzani & Frey, "k-Sparse Autoencoders", ICLR 2014.
    """

    def __init__(self, in_features: int, latent_dim: int, k: Schedule | int, alpha: float = 1.0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = Linear(in_features, latent_dim)
        self.k = constant(k) if isinstance(k, int) else k
        self.alpha = alpha

    def k_at(self, step: int | None, encoding: bool = False) -> int:
        k = int(round(self.k(step)))
        return int(min(self.latent_dim, math.ceil(self.alpha * k))) if encoding else k

    def forward(self, h: Tensor, step: int | None = None, encoding: bool = False) -> Distribution:
        return PointMass(top_k_mask(self.linear(h), self.k_at(step, encoding)))


SCALE_PARAMS = ("log_sigma", "log_var")


def check_scale_param(scale: str) -> str:
    """``scale`` if it names a parameterisation of sigma (see :func:`diagonal_normal`), else ValueError."""
    if scale not in SCALE_PARAMS:
        raise ValueError(f"scale must be one of {', '.join(SCALE_PARAMS)}, got {scale!r}")
    return scale


def diagonal_normal(mu: Tensor, raw: Tensor, scale: str = "log_sigma") -> Independent:
    """``N(mu, diag sigma^2)`` with the scale read from the head's raw output ``raw``.

    ``scale="log_sigma"``: ``sigma = exp(raw)``; ``"log_var"``: ``sigma = exp(raw / 2)`` (the
    parameterisation of Kingma & Welling's code, pythae and most VAE code bases). The two give
    the same family but not the same training: Adam moves the raw output at the same rate in
    both, i.e. log sigma twice as fast under ``log_sigma``. ``log sigma`` is clamped to
    [-10, 10], a guard against the overflow that turns a bad step into NaN; it never binds in
    healthy training. The clamp is ``hardtanh``, whose backward is one fused kernel, rather than
    ``clamp``, whose backward builds its mask from four separate operations (same values and
    the same gradient, except exactly at the bounds).
    """
    if check_scale_param(scale) == "log_sigma":
        log_sigma = F.hardtanh(raw, -10.0, 10.0)
    else:  # log_var
        log_sigma = 0.5 * F.hardtanh(raw, -20.0, 20.0)
    return Independent(DiagonalNormal(mu, log_sigma.exp(), log_sigma), 1)


class DiagonalGaussianHead(LatentHead):
    """q(z|x) = N(mu(x), diag sigma(x)^2), reparameterised (``rsample``).

    One linear layer gives ``[mu; raw]``; ``scale`` says how ``raw`` parameterises sigma
    (``log_sigma`` or ``log_var``, see :func:`diagonal_normal`; log sigma clamped to [-10, 10]).

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    """

    def __init__(self, in_features: int, latent_dim: int, scale: str = "log_sigma") -> None:
        super().__init__()
        self.latent_dim, self.scale = latent_dim, check_scale_param(scale)
        self.linear = Linear(in_features, 2 * latent_dim)

    def forward(self, h: Tensor, step: int | None = None, encoding: bool = False) -> Distribution:
        mu, raw = self.linear(h).chunk(2, dim=-1)
        return diagonal_normal(mu, raw, self.scale)
