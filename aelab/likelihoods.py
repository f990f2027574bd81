"""Decoder likelihoods p(x|z): "mse vs bce" is a choice of distribution, not a string switch.

A likelihood module turns the decoder's raw output, shaped ``(B, C * num_params, H, W)``, into a
``torch.distributions`` object whose event shape is the whole image ``(C, H, W)``, so
``px_z.log_prob(x)`` is one value per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Laplace, Normal
from torch.nn import functional as F

from aelab.distributions import DiscretizedLogistic
from aelab.registry import LIKELIHOODS


@dataclass
class LikelihoodConfig:
    """Which p(x|z) the decoder parametrises.

    Attributes:
        name: a registered likelihood (``bernoulli``, ``gaussian``, ``laplace``,
            ``discretized_logistic``).
        scale: the Gaussian's standard deviation or the Laplace's scale (initial value if learned).
        learn_scale: learn one scale per channel instead of keeping it fixed.
    """

    name: str = "bernoulli"
    scale: float = 1.0
    learn_scale: bool = False


class Likelihood(nn.Module):
    """Base: ``forward(params) -> Distribution`` with event shape (C, H, W)."""

    #: how many decoder output channels each image channel needs
    num_params: int = 1

    def __init__(self, channels: int, cfg: LikelihoodConfig) -> None:
        super().__init__()
        self.channels = channels
        self.cfg = cfg


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """Bernoulli pixels with logits from the decoder; scores grey values in [0, 1] as soft targets

    (the usual binary cross-entropy; then it is not a normalised density over grey values).
    """

    def forward(self, params: Tensor) -> Distribution:
        return BernoulliImage(Bernoulli(logits=params, validate_args=False), 3, validate_args=False)


class BernoulliImage(Independent):
    """``Independent(Bernoulli(logits), n)`` whose ``log_prob`` is one fused cross-entropy.

    The same distribution as torch's; ``log_prob`` skips ``Bernoulli.log_prob``'s broadcasting and
    its negation of every pixel (a few microseconds a call, a measurable share of a small model's
    step). Values of another shape than the logits take torch's general path.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return -self.nll(value)

    def nll(self, value: Tensor) -> Tensor:
        """``-log_prob(value)`` computed directly (the reconstruction term asks for this)."""
        logits = self.base_dist.logits
        if value.shape != logits.shape:
            return -super().log_prob(value)
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return bce.sum(dim=tuple(range(-self.reinterpreted_batch_ndims, 0)))


class _LocationScaleLikelihood(Likelihood):
    """Decoder gives the location; the scale is fixed or learned per channel."""

    family: type[Distribution]

    def __init__(self, channels: int, cfg: LikelihoodConfig) -> None:
        super().__init__(channels, cfg)
        if cfg.scale <= 0:
            raise ValueError(f"likelihood.scale must be > 0, got {cfg.scale}")
        log_scale = torch.full((channels, 1, 1), math.log(cfg.scale))
        if cfg.learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    def forward(self, params: Tensor) -> Distribution:
        scale = self.log_scale.exp().expand_as(params)
        return Independent(self.family(params, scale, validate_args=False), 3)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocationScaleLikelihood):
    """Gaussian pixels: decoder gives the mean; the scale is fixed or learned per channel.

    With ``scale=1`` the negative log-likelihood is half the summed squared error plus a constant.
    """

    family = Normal


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocationScaleLikelihood):
    """Laplace pixels (an L1 reconstruction loss); the scale is fixed or learned per channel."""

    family = Laplace


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """8-bit pixels: a logistic per pixel (mean and log-scale from the decoder) integrated over
    each of the 256 bins, so the NLL is a code length and bits/dim is meaningful.
    """

    num_params = 2

    def forward(self, params: Tensor) -> Distribution:
        loc, log_scale = params.chunk(2, dim=1)
        return Independent(DiscretizedLogistic(loc, log_scale), 3)


def build_likelihood(channels: int, cfg: LikelihoodConfig) -> Likelihood:
    return LIKELIHOODS.get(cfg.name)(channels, cfg)


def mean_image(px_z: Distribution) -> Tensor:
    """The mean of p(x|z) as an image in [0, 1] (for pictures and squared error)."""
    return px_z.mean.clamp(0.0, 1.0)
