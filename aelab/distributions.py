"""Distributions torch does not ship, used as the common currency between parts."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal, constraints, register_kl


class PointMass(Distribution):
    """A deterministic "distribution" at ``loc``: what a deterministic encoder returns.

    ``rsample`` returns ``loc`` itself, so gradients flow straight through, and a deterministic
    autoencoder fits the same ``q(z|x) -> z -> p(x|z)`` pipeline as a VAE.

    Args:
        loc: the point, with batch shape ``loc.shape[:-event_dim]``.
        event_dim: how many trailing dimensions form one event.

    Example:
        >>> q = PointMass(torch.ones(2, 3))
        >>> q.rsample().shape, q.mean.sum().item()
        (torch.Size([2, 3]), 6.0)
    """

    arg_constraints = {"loc": constraints.real}
    has_rsample = True

    def __init__(self, loc: Tensor, event_dim: int = 1, validate_args: bool | None = False) -> None:
        self.loc = loc
        cut = loc.dim() - event_dim
        super().__init__(loc.shape[:cut], loc.shape[cut:], validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self.loc.expand(torch.Size(sample_shape) + self.loc.shape)

    def log_prob(self, value: Tensor) -> Tensor:
        eq = (value == self.loc).flatten(start_dim=value.dim() - len(self.event_shape)).all(-1)
        return torch.where(eq, 0.0, float("-inf"))

    def entropy(self) -> Tensor:
        return torch.zeros(self.batch_shape, device=self.loc.device)


class DiscretizedLogistic(Distribution):
    """A logistic density integrated over the 256 bins of 8-bit pixel values in [0, 1].

    Value ``k/255`` gets the logistic mass of ``[k/255 - 1/510, k/255 + 1/510]``; the end bins
    take the tails, so the 256 probabilities sum to one and ``-log_prob`` is a code length:
    dividing by ``log(2) * C * H * W`` gives bits per dimension.

    Args:
        loc: mean ``mu`` per pixel.
        log_scale: ``log s`` per pixel (clamped below at -7 for stability).

    References:
        Salimans et al., "PixelCNN++", ICLR 2017; Kingma et al., "Improved Variational Inference
        with Inverse Autoregressive Flow", NeurIPS 2016.

    Example:
        >>> d = DiscretizedLogistic(torch.tensor(0.5), torch.tensor(-2.0))
        >>> probs = d.log_prob(torch.arange(256) / 255).exp()
        >>> round(probs.sum().item(), 5)
        1.0
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval
    bins = 255

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = False) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale.clamp_min(-7.0))
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.loc.clamp(0.0, 1.0)

    def log_prob(self, value: Tensor) -> Tensor:
        half = 0.5 / self.bins
        inv_s = torch.exp(-self.log_scale)
        centered = value - self.loc
        plus, minus = inv_s * (centered + half), inv_s * (centered - half)
        log_cdf_plus = plus - nn.functional.softplus(plus)  # log sigmoid(plus): lowest bin
        log_sf_minus = -nn.functional.softplus(minus)  # log (1 - sigmoid(minus)): highest bin
        delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * centered  # where the bin mass underflows, use density * bin width
        log_pdf_mid = mid - self.log_scale - 2.0 * nn.functional.softplus(mid)
        log_mid = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)),
                              log_pdf_mid + math.log(2 * half))
        return torch.where(value < half, log_cdf_plus, torch.where(value > 1 - half, log_sf_minus, log_mid))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc.expand(shape) + self.log_scale.exp().expand(shape) * (torch.log(u) - torch.log1p(-u))
            return (x.clamp(0.0, 1.0) * self.bins).round() / self.bins


class DiagonalNormal(Normal):
    """``Normal(loc, scale)`` that also keeps ``log_scale``, for Gaussian latent heads.

    The same distribution as torch's ``Normal`` (every method is inherited); knowing
    ``log sigma`` lets the KL to a :class:`UnitNormal` skip a log, and the constructor skips
    ``Normal``'s argument broadcasting (a head's ``loc``, ``scale`` and ``log_scale`` already
    share a shape). Such per-call savings are a measurable share of a small model's step.
    """

    def __init__(self, loc: Tensor, scale: Tensor, log_scale: Tensor, validate_args: bool | None = False) -> None:
        if not (loc.shape == scale.shape == log_scale.shape):
            raise ValueError(f"loc, scale and log_scale must share a shape; got {tuple(loc.shape)}, "
                             f"{tuple(scale.shape)}, {tuple(log_scale.shape)}")
        self.loc, self.scale, self.log_scale = loc, scale, log_scale
        Distribution.__init__(self, loc.shape, validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        eps = torch.randn(self._extended_shape(torch.Size(sample_shape)), dtype=self.loc.dtype, device=self.loc.device)
        return torch.addcmul(self.loc, eps, self.scale)  # loc + eps * scale in one operation

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance=None) -> DiagonalNormal:
        shape = torch.Size(batch_shape)
        return DiagonalNormal(self.loc.expand(shape), self.scale.expand(shape), self.log_scale.expand(shape))


class UnitNormal(Normal):
    """A ``Normal`` whose ``loc`` is all zeros and ``scale`` all ones (the caller's promise), so
    that the KL to it has its short form. Built by the ``standard_normal`` prior from its buffers."""


def _kl_to_unit(q: Normal, p: UnitNormal, log_scale: Tensor) -> Tensor:
    # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1) / 2 - log s
    kl = 0.5 * torch.addcmul(q.scale * q.scale, q.loc, q.loc).sub_(1.0) - log_scale
    if p.loc.dim() <= kl.dim() and all(a in (1, b) for a, b in zip(p.loc.shape[::-1], kl.shape[::-1])):
        return kl  # p's batch shape broadcasts into q's (the usual case: p is (D,), q is (B, D))
    return kl.expand(torch.broadcast_shapes(kl.shape, p.loc.shape))


@register_kl(Normal, UnitNormal)
def _kl_normal_unit(q: Normal, p: UnitNormal) -> Tensor:
    return _kl_to_unit(q, p, q.scale.log())


@register_kl(DiagonalNormal, UnitNormal)
def _kl_diagonal_unit(q: DiagonalNormal, p: UnitNormal) -> Tensor:
    return _kl_to_unit(q, p, q.log_scale)
