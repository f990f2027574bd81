"""Likelihood metrics of latent-variable models: ELBO, importance-weighted log p(x), bits/dim.

Everything here is written against the distribution interface only: ``q(z|x)`` must offer
``rsample`` and ``log_prob``, ``p(z)`` ``log_prob``, and ``p(x|z)`` ``log_prob`` with event shape
``(C, H, W)``. No family is special-cased, so flow posteriors and flow priors are scored by the same
code as the diagonal Gaussian.

With ``w_k = p(x|z_k) p(z_k) / q(z_k|x)`` and ``z_k ~ q(z|x)``:

* the ELBO is ``E_q[log w]``, estimated by the mean of ``log w_k``;
* the IWAE bound ``log (1/K) sum_k w_k`` is a stochastic lower bound on ``log p(x)`` whose
  expectation increases with ``K`` and converges to ``log p(x)`` (Burda et al., 2016); at ``K = 1``
  it is the one-sample ELBO.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.data.batches import eval_batches
from aelab.nn.modes import evaluation
from aelab.protocol import require
from aelab.registry import METRICS

__all__ = [
    "bits_per_dim",
    "elbo",
    "is_discrete_8bit",
    "iwae_and_elbo",
    "iwae_log_likelihood",
    "likelihood_metric",
    "log_importance_weights",
    "likelihood",
]

#: decoder evaluations per forward pass when ``chunk`` is left to :func:`iwae_log_likelihood`
MAX_DECODE = 16384


def _log_weights(model: nn.Module, x: Tensor, z: Tensor, qz_x: Distribution, pz: Distribution) -> Tensor:
    """``log p(x|z) + log p(z) - log q(z|x)`` for samples ``z`` of shape ``(K, B, *event)`` -> ``(K, B)``."""
    k, b = z.shape[0], z.shape[1]
    px_z = model.decode(z.reshape(k * b, *z.shape[2:]))  # one decoder pass over all K * B samples
    x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    log_px_z = px_z.log_prob(x_rep).view(k, b)
    return log_px_z + pz.log_prob(z) - qz_x.log_prob(z)


def _prior(model: nn.Module) -> Distribution:
    require(model, "latent_prior", what="a likelihood bound")
    return model.prior()


def log_importance_weights(model: nn.Module, x: Tensor, k: int = 1) -> Tensor:
    """Log importance weights ``log p(x|z_k) + log p(z_k) - log q(z_k|x)``, ``z_k ~ q(z|x)``.

    Args:
        model: an autoencoder with ``encode``, ``decode`` and a ``prior``.
        x: images ``(B, C, H, W)``.
        k: samples per example.

    Returns:
        ``(K, B)`` log weights (differentiable if gradients are enabled: the samples are
        reparameterised).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    qz_x = model.encode(x, encoding=False)
    return _log_weights(model, x, qz_x.rsample((k,)), qz_x, _prior(model))


def elbo(model: nn.Module, x: Tensor, n_samples: int = 1) -> Tensor:
    """The evidence lower bound per example, ``E_q[log p(x|z) + log p(z) - log q(z|x)]``.

    The generic Monte-Carlo form (mean of ``n_samples`` log weights): valid for any posterior
    and prior, and the same samples give :func:`iwae_log_likelihood` at ``k=1``. (The training
    objective may use an analytic KL instead; both estimate the same number.)

    Args:
        model: an autoencoder with a prior.
        x: images ``(B, C, H, W)``.
        n_samples: Monte-Carlo samples per example.

    Returns:
        ``(B,)`` ELBO estimates in nats.

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.

    Example:
        >>> from aelab.models import build_model
        >>> m = build_model("vae", image_shape=(1, 4, 4), latent_dim=2, backbone={"hidden": (8,)})
        >>> elbo(m, torch.rand(3, 1, 4, 4), n_samples=5).shape
        torch.Size([3])
    """
    return log_importance_weights(model, x, n_samples).mean(0)


def iwae_and_elbo(model: nn.Module, x: Tensor, k: int, chunk: int | None) -> tuple[Tensor, Tensor]:
    """The K-sample IWAE bound and the K-sample ELBO estimate from the same weights, ``(B,)`` each."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    chunk = chunk if chunk is not None else max(1, MAX_DECODE // max(1, x.shape[0]))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    qz_x, pz = model.encode(x, encoding=False), _prior(model)
    lse: Tensor | None = None  # running logsumexp over the chunks, in float64
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    done = 0
    while done < k:
        m = min(chunk, k - done)
        log_w = _log_weights(model, x, qz_x.rsample((m,)), qz_x, pz).double()  # (m, B)
        part = torch.logsumexp(log_w, 0)
        lse = part if lse is None else torch.logaddexp(lse, part)
        total = total + log_w.sum(0)
        done += m
    # in the inputs' float dtype; token ids (text) are integers, and casting to them would truncate
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return (lse - math.log(k)).to(dtype), (total / k).to(dtype)


def iwae_log_likelihood(model: nn.Module, x: Tensor, k: int, chunk: int | None = None) -> Tensor:
    """The importance-weighted estimate of ``log p(x)``: ``logsumexp_k(log w_k) - log K``.

    Samples are drawn ``chunk`` at a time and combined with a running logsumexp, so memory stays
    bounded for any ``k`` (thousands of samples are fine). A lower bound in expectation, tightening
    with ``k``; ``k=1`` is the one-sample ELBO.

    Args:
        model: an autoencoder with a prior.
        x: images ``(B, C, H, W)``.
        k: importance samples per example.
        chunk: samples per example per decoder pass (default: ``MAX_DECODE // B``, at least 1).

    Returns:
        ``(B,)`` estimates of ``log p(x)`` in nats.

    References:
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.

    Example:
        >>> from aelab.models import build_model
        >>> m = build_model("vae", image_shape=(1, 4, 4), latent_dim=2, backbone={"hidden": (8,)})
        >>> with torch.no_grad():
        ...     ll = iwae_log_likelihood(m, torch.rand(3, 1, 4, 4), k=50, chunk=7)
        >>> ll.shape
        torch.Size([3])
    """
    return iwae_and_elbo(model, x, k, chunk)[0]


def bits_per_dim(nll_nats: float | Tensor, num_dims: int) -> float | Tensor:
    """Convert a negative log-likelihood in nats per example to bits per dimension.

    Only a code length when the likelihood is a normalised distribution over the discrete
    pixel values (see :func:`is_discrete_8bit`).

    Example:
        >>> round(bits_per_dim(784 * math.log(2), 784), 6)
        1.0
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return nll_nats / (num_dims * math.log(2))


def is_discrete_8bit(px_z: Distribution, atol: float = 1e-2) -> bool:
    """Whether ``p(x|z)`` is a normalised distribution over the 256 levels ``k/255`` of each pixel.

    Checked numerically, not by type: the per-pixel masses of all 256 levels must sum to one.
    Needs per-pixel factors (an ``Independent`` over the image); anything else answers ``False``.
    The discretised logistic passes; a Bernoulli scoring grey values and Gaussian or Laplace
    densities do not (their "likelihoods" of 8-bit data are not code lengths).

    Example:
        >>> from aelab.distributions import DiscretizedLogistic
        >>> is_discrete_8bit(Independent(DiscretizedLogistic(torch.rand(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)), 3))
        True
    """
    if not isinstance(px_z, Independent):
        return False
    base = px_z.base_dist
    levels = torch.arange(256, dtype=torch.float32, device=_device_of(base)) / 255
    levels = levels.view(256, *([1] * len(base.batch_shape)))
    with torch.no_grad():
        try:
            mass = torch.logsumexp(base.log_prob(levels), 0)
        except (ValueError, RuntimeError):  # a support check or a shape the family cannot broadcast
            return False
    return bool(torch.isfinite(mass).all() and (mass.exp() - 1).abs().max() <= atol)


def _device_of(d: Distribution) -> torch.device:
    for v in vars(d).values():
        if isinstance(v, Tensor):
            return v.device
    return torch.device("cpu")


def likelihood_metric(model: nn.Module, data: ImageDataset, k: int = 100, limit: int | None = None,
                      batch_size: int = 100, chunk: int | None = None, seed: int = 0) -> dict[str, float]:
    """Test ELBO, IWAE negative log-likelihood and, where meaningful, bits/dim.

    On the same examples and importance samples: ``neg_elbo`` is minus the K-sample ELBO
    estimate (the mean of the log weights), ``nll_iwae_k{K}`` minus the IWAE bound. Both are
    upper bounds on ``-log p(x)`` in expectation, the IWAE one tighter. ``bits_per_dim`` (from the
    IWAE NLL) is reported only when ``p(x|z)`` is a normalised distribution over 8-bit pixel levels
    (``discretized_logistic``; see :func:`is_discrete_8bit`). A Bernoulli likelihood scoring grey
    values in [0, 1] is not normalised over the 256 levels (nor over [0, 1]), and Gaussian or
    Laplace likelihoods are densities, so for them the nats are comparable between models with the
    same likelihood only, and no bits/dim is given.

    Args:
        model: an autoencoder with a prior.
        data: the split to score (usually test).
        k: importance samples per example.
        limit: score a seeded random subset of this many examples (``None``: all).
        batch_size: examples per encoder pass.
        chunk: samples per example per decoder pass (default: bounded by ``MAX_DECODE``).
        seed: seeds the subset and the samples (the caller's RNG is left untouched).

    Returns:
        ``{"neg_elbo", "nll_iwae_k{K}"[, "bits_per_dim"]}``, nats per example.

    References:
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016;
        Salimans et al., "PixelCNN++", ICLR 2017 (discretised logistic, bits/dim).
    """
    data = random_subset(data, limit, seed)
    nll = neg_elbo = 0.0
    n, discrete = 0, None
    with evaluation(model, seed) as device:
        for batch in eval_batches(data, batch_size):
            x = batch.x
            x = x.to(device)
            iwae, elbo_k = iwae_and_elbo(model, x, k, chunk)
            nll -= iwae.double().sum().item()
            neg_elbo -= elbo_k.double().sum().item()
            n += x.shape[0]
            if discrete is None:
                qz_x = model.encode(x[:1], encoding=False)
                discrete = is_discrete_8bit(model.decode(qz_x.rsample()))
    out = {"neg_elbo": neg_elbo / n, f"nll_iwae_k{k}": nll / n}
    if discrete:
        out["bits_per_dim"] = bits_per_dim(nll / n, math.prod(data.shape))
    return out


@METRICS.register("likelihood")
def likelihood(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Test ELBO, IWAE negative log-likelihood and, where meaningful, bits/dim.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`likelihood_metric`, which scores one split.
    """
    return likelihood_metric(model, splits.test, **options)
