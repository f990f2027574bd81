"""Latent-space diagnostics of VAE-family models: KL per dimension, active units, I(x; z).

Pure functions take tensors (and, for the mutual information, the posterior distributions
themselves, which are this library's currency) and return ``dict[str, float]``;
:func:`collect_latent_statistics` does the encoding and sampling, and :func:`latent_diagnostics`
is the registered wrapper. Only ``rsample``, ``log_prob`` and ``mean`` of the distributions are
used (``mean`` falls back to a Monte-Carlo average where a family has none, e.g. flows).

The three numbers answer different questions about posterior collapse:

* ``kl_dim_j``: how many nats each latent dimension costs, ``E_x KL(q(z_j|x) || p(z_j))``;
* ``active_units``: how many dimensions' posterior means vary with the input at all;
* ``mutual_info``: how much the code says about the input, ``I_q(x; z)``. By Hoffman & Johnson's
  decomposition ``E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z))``, so ``kl_total`` minus
  ``mutual_info`` estimates how far the aggregate posterior is from the prior.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016 (active units).
    Hoffman & Johnson, "ELBO surgery: yet another way to carve up the variational evidence lower
    bound", NeurIPS Workshop on Advances in Approximate Bayesian Inference, 2016.
    He et al., "Lagging Inference Networks and Posterior Collapse in Variational Autoencoders",
    ICLR 2019 (the minibatch mutual-information estimator).
    Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

from aelab.data.base import DataSplits, ImageDataset
from aelab.data.batches import eval_batches
from aelab.losses.terms import kl_per_dimension, kl_per_example
from aelab.metrics.likelihood import random_subset
from aelab.nn.modes import evaluation
from aelab.protocol import require
from aelab.registry import METRICS

__all__ = [
    "LatentStatistics",
    "active_units",
    "aggregate_posterior_log_prob",
    "collect_latent_statistics",
    "kl_summary",
    "kl_to_prior",
    "latent_diagnostics",
    "mutual_information",
    "posterior_mean",
    "latent_diagnostics_metric",
]


# --- pure functions -----------------------------------------------------------------------------
def kl_summary(kl: Tensor) -> dict[str, float]:
    """Average KL to the prior over the data, per latent dimension where available.

    Args:
        kl: ``(N, D)`` per example and dimension (factorised q and p), or ``(N,)`` totals.

    Returns:
        ``kl_dim_0 .. kl_dim_{D-1}`` (for ``(N, D)`` input) and ``kl_total``, their sum, in nats.

    Example:
        >>> kl_summary(torch.tensor([[1.0, 0.0], [3.0, 0.5]]))
        {'kl_dim_0': 2.0, 'kl_dim_1': 0.25, 'kl_total': 2.25}
    """
    if kl.dim() == 1:
        return {"kl_total": kl.double().mean().item()}
    if kl.dim() != 2:
        raise ValueError(f"kl must have shape (N,) or (N, D), got {tuple(kl.shape)}")
    per_dim = kl.double().mean(0)
    out = {f"kl_dim_{j}": v for j, v in enumerate(per_dim.tolist())}
    out["kl_total"] = per_dim.sum().item()
    return out


def active_units(codes: Tensor, threshold: float = 0.01) -> dict[str, float]:
    """Number of active latent units: ``A_u = Cov_x(E_q[z_u | x]) > threshold``.

    Args:
        codes: posterior means ``E_q[z|x]``, ``(N, D)``.
        threshold: Burda et al. use 0.01 (for a unit-variance prior).

    Returns:
        ``{"active_units": count}``.

    References:
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> codes = torch.randn(1000, 3, generator=g) * torch.tensor([1.0, 0.3, 0.01])
        >>> active_units(codes)
        {'active_units': 2.0}
    """
    if codes.dim() != 2 or codes.shape[0] < 2:
        raise ValueError(f"codes must have shape (N, D) with N >= 2, got {tuple(codes.shape)}")
    return {"active_units": float((codes.double().var(0) > threshold).sum().item())}


def aggregate_posterior_log_prob(posteriors: Sequence[Distribution], z: Tensor, chunk: int = 256) -> Tensor:
    """``log q(z)`` under the mixture ``q(z) = (1/M) sum_m q(z|x_m)`` of the given posteriors.

    Args:
        posteriors: distributions with one batch dimension (e.g. one per minibatch); together
            they hold the M mixture components.
        z: points ``(N, *event_shape)``.
        chunk: points evaluated against all components at a time (memory ``chunk * batch``).

    Returns:
        ``(N,)`` log densities, via a running logsumexp over the component batches.
    """
    m = sum(int(q.batch_shape[0]) for q in posteriors)
    out = []
    for rows in z.split(chunk):
        acc: Tensor | None = None
        for q in posteriors:
            lp = q.log_prob(rows.unsqueeze(1)).double()  # (r, B_q): every point under every component
            # Far outside a flow posterior's support its exact inverse overflows (float32) to inf/nan;
            # the density there is zero to working precision, so those components contribute nothing.
            lp = torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -math.inf))
            part = torch.logsumexp(lp, 1)
            acc = part if acc is None else torch.logaddexp(acc, part)
        out.append(acc)
    return torch.cat(out) - math.log(m)


def mutual_information(posteriors: Sequence[Distribution], samples: Sequence[Tensor],
                       chunk: int = 256) -> dict[str, float]:
    """The minibatch estimate of ``I_q(x; z) = E_x KL(q(z|x) || q(z))``.

    With one sample ``z_n ~ q(z|x_n)`` per example and the aggregate posterior replaced by the
    mixture of the M posteriors given,

        ``I ~= (1/M) sum_n [log q(z_n|x_n) - log (1/M) sum_m q(z_n|x_m)]``

    (Hoffman & Johnson, 2016; the estimator of He et al., 2019). Bias: relative to the empirical
    distribution of exactly these M examples the mixture *is* the aggregate posterior and the
    estimate is unbiased up to Monte-Carlo noise. As an estimate for the data distribution it is
    the InfoNCE lower bound with critic ``log q(z|x)`` (Poole et al., 2019): biased low and never
    above ``log M``, which is also the largest mutual information any code can have with M
    distinct inputs. A near-deterministic encoder therefore reads close to ``log M``, returned as
    ``mutual_info_max``; compare estimates only at equal M.

    Args:
        posteriors: ``q(z|x_m)`` with one batch dimension each (e.g. per minibatch).
        samples: one sample per example from each of them, ``(B_q, *event_shape)``.
        chunk: see :func:`aggregate_posterior_log_prob`.

    Returns:
        ``{"mutual_info", "mutual_info_max"}`` in nats.

    References:
        Hoffman & Johnson, "ELBO surgery", NeurIPS AABI workshop 2016;
        He et al., "Lagging Inference Networks and Posterior Collapse in Variational
        Autoencoders", ICLR 2019; Poole et al., "On Variational Bounds of Mutual Information",
        ICML 2019.

    Example:
        >>> from torch.distributions import Independent, Normal
        >>> q = Independent(Normal(torch.zeros(50, 2), torch.ones(50, 2)), 1)  # ignores x
        >>> round(mutual_information([q], [q.sample()])["mutual_info"], 6)
        0.0
    """
    if len(posteriors) != len(samples) or not posteriors:
        raise ValueError("need one sample tensor per posterior batch, and at least one batch")
    log_own = torch.cat([q.log_prob(z).double() for q, z in zip(posteriors, samples)])  # (M,)
    if not torch.isfinite(log_own).all():
        raise ValueError("log q(z|x) of a posterior's own sample is not finite: the model is broken")
    log_agg = aggregate_posterior_log_prob(posteriors, torch.cat(list(samples)), chunk)
    return {"mutual_info": (log_own - log_agg).mean().item(), "mutual_info_max": math.log(log_own.shape[0])}


# --- distribution helpers ------------------------------------------------------------------------
def posterior_mean(qz_x: Distribution, n_samples: int = 64) -> Tensor:
    """``E_q[z|x]``: the family's ``mean``, or a Monte-Carlo average where it has none (flows)."""
    try:
        return qz_x.mean
    except NotImplementedError:
        return qz_x.rsample((n_samples,)).mean(0)


def kl_to_prior(qz_x: Distribution, pz: Distribution, n_samples: int = 1) -> Tensor:
    """``KL(q(z|x) || p(z))`` per example and dimension, ``(B, D)``, or per example, ``(B,)``.

    Per dimension wherever q and p factorise (``Independent`` of one-dimensional laws), in closed
    form where torch has one for the pair, else the Monte-Carlo estimate averaged over
    ``n_samples``; for non-factorised laws (flows) only the total is defined.
    """
    z = qz_x.rsample((n_samples,))
    try:
        return kl_per_dimension(qz_x, pz, z).mean(0)
    except ValueError:  # not factorised: total only
        kl = kl_per_example(qz_x, pz, z)
        return torch.broadcast_to(kl, (n_samples, *qz_x.batch_shape)).mean(0)


@dataclass
class LatentStatistics:
    """What :func:`collect_latent_statistics` gathers from one pass over a split.

    Attributes:
        posteriors: ``q(z|x)`` per minibatch.
        samples: one ``z ~ q(z|x)`` per example, per minibatch.
        codes: posterior means ``(N, D)``.
        kl: KL to the prior, ``(N, D)`` when factorised, else ``(N,)``.
        labels: the split's labels ``(N,)`` or factors ``(N, K)``; ``None`` for unlabelled data.
    """

    posteriors: list[Distribution]
    samples: list[Tensor]
    codes: Tensor
    kl: Tensor
    labels: Tensor | None


def collect_latent_statistics(model: nn.Module, data: ImageDataset, batch_size: int = 500,
                              limit: int | None = None, seed: int = 0, kl_samples: int = 1) -> LatentStatistics:
    """Encode a split (or a seeded random subset of ``limit`` examples) in evaluation mode.

    The model needs a prior. Sampling uses a private RNG stream seeded with ``seed``.
    """
    require(model, "latent_prior", what="latent diagnostics")
    data = random_subset(data, limit, seed)
    posteriors, samples, codes, kls, labels = [], [], [], [], []
    with evaluation(model, seed) as device:
        pz = model.prior()
        for batch in eval_batches(data, batch_size):
            x, y = batch.x, batch.y
            qz_x = model.encode(x.to(device), encoding=False)
            posteriors.append(qz_x)
            samples.append(qz_x.rsample())
            codes.append(posterior_mean(qz_x))
            kls.append(kl_to_prior(qz_x, pz, kl_samples))
            labels.append(y)
    known = [y for y in labels if y is not None]
    return LatentStatistics(posteriors, samples, torch.cat(codes), torch.cat(kls),
                            torch.cat(known) if len(known) == len(labels) else None)


def latent_diagnostics(model: nn.Module, data: ImageDataset, batch_size: int = 500, limit: int | None = None,
                       mi_limit: int | None = 2000, threshold: float = 0.01, kl_samples: int = 1,
                       seed: int = 0, flow_mi_limit: int = 250) -> dict[str, float]:
    """KL per latent dimension, active units and the mutual information I(x; z) under q.

    Args:
        model: an autoencoder with a prior.
        data: the split (usually test).
        batch_size: examples per encoder pass.
        limit: use a seeded random subset of this many examples for KL and active units.
        mi_limit: examples in the mutual-information estimate (its cost grows as ``mi_limit^2``;
            it is capped at ``log mi_limit``: see :func:`mutual_information`).
        flow_mi_limit: the cap on ``mi_limit`` for posteriors that are not factorised Gaussians
            (flows), whose log-density at another example's sample needs an exact sequential inverse.
        threshold: the active-unit variance threshold.
        kl_samples: Monte-Carlo samples for KLs with no closed form.
        seed: seeds the subsets and the samples.

    Returns:
        ``kl_dim_0 ..`` (factorised models), ``kl_total``, ``active_units``, ``mutual_info``,
        ``mutual_info_max``.

    References:
        Burda et al., ICLR 2016 (active units); Hoffman & Johnson, 2016 and He et al., ICLR 2019
        (mutual information).
    """
    stats = collect_latent_statistics(model, data, batch_size, limit, seed, kl_samples)
    out = kl_summary(stats.kl) | active_units(stats.codes, threshold)
    if not isinstance(stats.posteriors[0], Independent):
        # a flow posterior scores each cross term through its sequential (D-pass) inverse
        mi_limit = min(mi_limit or flow_mi_limit, flow_mi_limit)
    if mi_limit is not None and mi_limit < stats.codes.shape[0]:
        stats = collect_latent_statistics(model, data, batch_size, mi_limit, seed + 1)
    with torch.no_grad():  # the cross terms must not build a graph (B^2 log-densities)
        return out | mutual_information(stats.posteriors, stats.samples)


@METRICS.register("latent_diagnostics")
def latent_diagnostics_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """KL per latent dimension, active units and the mutual information I(x; z) on the test split.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`latent_diagnostics`, which scores one split.
    """
    return latent_diagnostics(model, splits.test, **options)
