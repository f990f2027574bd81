"""Clustering quality of a code: adjusted Rand index and normalised mutual information.

The pure functions compare two labelings through their contingency table (exact, no
sampling); :func:`~aelab.nn.kmeans.kmeans` (re-exported here) and :func:`mixture_assignments`
turn codes into cluster labels; and the registered wrapper :func:`clustering_metric` encodes a
split and clusters ``E[z|x]`` with the model's own mixture prior when it has one (each code goes
to its most responsible component), or with k-means otherwise.

References:
    Hubert & Arabie, "Comparing partitions", Journal of Classification, 1985 (ARI).
    Vinh, Epps & Bailey, "Information Theoretic Measures for Clusterings Comparison",
    JMLR 2010 (NMI and its normalisations).
    Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MixtureSameFamily

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.metrics.reconstruction import encode_dataset
from aelab.nn.kmeans import kmeans
from aelab.nn.modes import evaluation
from aelab.registry import METRICS

__all__ = [
    "adjusted_rand_index",
    "clustering_metric",
    "clustering_scores",
    "contingency_matrix",
    "entropy_from_counts",
    "kmeans",
    "mixture_assignments",
    "mutual_info_from_contingency",
    "normalized_mutual_info",
    "clustering",
]


# --- contingency tables -------------------------------------------------------------------------
def _labels(a: Tensor | np.ndarray) -> Tensor:
    a = torch.as_tensor(a)
    if a.dim() != 1 or a.is_floating_point() or a.is_complex():
        raise ValueError(f"labels must be a 1-D integer array, got {a.dtype} {tuple(a.shape)}")
    return a.long()


def contingency_matrix(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Counts ``n_ij`` of examples with label ``i`` in ``a`` and ``j`` in ``b``.

    Labels may be any integers (negative or sparse); each labeling's distinct values are mapped
    to rows/columns in sorted order, and empty rows/columns never appear.

    Args:
        a, b: integer labels ``(N,)``.

    Returns:
        int64 counts ``(A, B)`` for ``A`` and ``B`` distinct labels.

    Example:
        >>> contingency_matrix(torch.tensor([0, 0, 1, 7]), torch.tensor([5, 5, 5, 2])).tolist()
        [[0, 2], [0, 1], [1, 0]]
    """
    a, b = _labels(a), _labels(b)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.shape[0]} and {b.shape[0]}")
    _, ia = torch.unique(a, return_inverse=True)
    _, ib = torch.unique(b, return_inverse=True)
    n_a = int(ia.max()) + 1 if a.numel() else 0
    n_b = int(ib.max()) + 1 if b.numel() else 0
    flat = torch.bincount(ia * n_b + ib, minlength=n_a * n_b)
    return flat.view(n_a, n_b)


def entropy_from_counts(counts: Tensor) -> float:
    """Shannon entropy (nats) of the distribution proportional to ``counts``.

    Example:
        >>> import math
        >>> round(entropy_from_counts(torch.tensor([1, 1, 0, 2])), 6) == round(1.5 * math.log(2), 6)
        True
    """
    c = counts.double().flatten()
    c = c[c > 0]
    p = c / c.sum()
    return float(-(p * p.log()).sum())


def mutual_info_from_contingency(table: Tensor) -> float:
    """Mutual information (nats) of the empirical joint distribution given by a contingency table.

    The plug-in estimate ``sum_ij p_ij log(p_ij / (p_i p_j))``, exact for the table itself.

    Example:
        >>> import math
        >>> round(mutual_info_from_contingency(torch.tensor([[2, 0], [0, 2]])), 6) == round(math.log(2), 6)
        True
    """
    t = table.double()
    n = t.sum()
    p = t / n
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * (p[nz].log() - (pa * pb)[nz].log())).sum().clamp_min(0.0))


# --- pure functions -----------------------------------------------------------------------------
def adjusted_rand_index(labels_true: Tensor | np.ndarray, labels_pred: Tensor | np.ndarray) -> dict[str, float]:
    """Adjusted Rand index between two labelings: pair agreement corrected for chance.

    ``ARI = (index - E[index]) / (max_index - E[index])`` with ``index = sum_ij C(n_ij, 2)``,
    ``E[index] = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2)`` under the permutation model and
    ``max_index = (sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2`` (``a``, ``b`` the row and column sums).
    It is 1 for identical partitions (up to relabelling), about 0 for independent ones, and
    can be negative. Where the denominator vanishes (both labelings put everything in one
    cluster, or everything in its own) the partitions are identical and the score is 1.

    Args:
        labels_true, labels_pred: integer labels ``(N,)``; the index is symmetric in them.

    Returns:
        ``{"ari": value}``.

    References:
        Hubert & Arabie, "Comparing partitions", Journal of Classification, 1985.

    Example:
        >>> adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0]))
        {'ari': 1.0}
        >>> round(adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))["ari"], 12)
        -0.5
    """
    t = contingency_matrix(labels_true, labels_pred).double()
    n = t.sum()

    def pairs(x: Tensor) -> Tensor:
        return (x * (x - 1) / 2).sum()

    index, sum_a, sum_b = pairs(t), pairs(t.sum(1)), pairs(t.sum(0))
    expected = sum_a * sum_b / (n * (n - 1) / 2) if n > 1 else torch.zeros((), dtype=torch.float64)
    maximum = (sum_a + sum_b) / 2
    if float(maximum - expected) == 0.0:
        return {"ari": 1.0}
    return {"ari": float((index - expected) / (maximum - expected))}


def normalized_mutual_info(labels_true: Tensor | np.ndarray, labels_pred: Tensor | np.ndarray) -> dict[str, float]:
    """Normalised mutual information ``I(U; V) / ((H(U) + H(V)) / 2)`` between two labelings.

    The arithmetic-mean normalisation (scikit-learn's default, and the one Vinh et al. call
    ``NMI_sum``); in ``[0, 1]``, 1 for identical partitions up to relabelling. It is not
    adjusted for chance: many small clusters score above 0 even when independent of the truth,
    which is what the ARI reported beside it corrects. Two single-cluster labelings are
    identical and score 1.

    Args:
        labels_true, labels_pred: integer labels ``(N,)``; the measure is symmetric in them.

    Returns:
        ``{"nmi": value}``.

    References:
        Vinh, Epps & Bailey, "Information Theoretic Measures for Clusterings Comparison", JMLR 2010.

    Example:
        >>> normalized_mutual_info(torch.tensor([0, 0, 1, 1]), torch.tensor([5, 5, 3, 3]))
        {'nmi': 1.0}
    """
    t = contingency_matrix(labels_true, labels_pred)
    h_u, h_v = entropy_from_counts(t.sum(1)), entropy_from_counts(t.sum(0))
    if h_u == 0.0 and h_v == 0.0:
        return {"nmi": 1.0}
    mi = mutual_info_from_contingency(t)
    return {"nmi": min(1.0, mi / ((h_u + h_v) / 2))}


def clustering_scores(labels_true: Tensor | np.ndarray, labels_pred: Tensor | np.ndarray) -> dict[str, float]:
    """ARI and NMI together, as ``cluster_ari`` and ``cluster_nmi``.

    Example:
        >>> clustering_scores(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0]))
        {'cluster_ari': 1.0, 'cluster_nmi': 1.0}
    """
    return {"cluster_ari": adjusted_rand_index(labels_true, labels_pred)["ari"],
            "cluster_nmi": normalized_mutual_info(labels_true, labels_pred)["nmi"]}


# --- from codes to cluster labels ---------------------------------------------------------------
def mixture_assignments(z: Tensor, mixture: MixtureSameFamily) -> Tensor:
    """The most responsible component of a mixture for each point: ``argmax_k log pi_k + log p_k(z)``.

    Args:
        z: points ``(N, D)`` in the mixture's event space (event shape ``(D,)``; an event shape
            ``()`` takes ``(N,)`` points).
        mixture: a ``MixtureSameFamily`` with no batch shape (a prior p(z)).

    Returns:
        int64 component indices ``(N,)``.

    Example:
        >>> from torch.distributions import Categorical, Independent, Normal
        >>> comps = Independent(Normal(torch.tensor([[-5.0, 0.0], [5.0, 0.0]]), torch.ones(2, 2)), 1)
        >>> prior = MixtureSameFamily(Categorical(logits=torch.zeros(2)), comps)
        >>> mixture_assignments(torch.tensor([[4.0, 1.0], [-6.0, 0.0]]), prior).tolist()
        [1, 0]
    """
    if mixture.batch_shape != torch.Size():
        raise ValueError(f"expected a mixture with no batch shape, got batch shape {tuple(mixture.batch_shape)}")
    log_pi = torch.log_softmax(mixture.mixture_distribution.logits, -1)  # (K,)
    # insert the component axis just before the event axes, as MixtureSameFamily.log_prob does
    zc = z.to(log_pi.dtype).unsqueeze(-1 - len(mixture.event_shape))
    log_resp = log_pi + mixture.component_distribution.log_prob(zc)  # (N, K)
    return log_resp.argmax(-1)


# --- registered wrapper -------------------------------------------------------------------------
def clustering_metric(model: nn.Module, data: ImageDataset, limit: int | None = 5000,
                      n_clusters: int | None = None, factor: int | None = None, batch_size: int = 500,
                      n_init: int = 3, seed: int = 0, assign: str = "auto") -> dict[str, float]:
    """Adjusted Rand index and NMI between clusters of the codes E[z|x] and the true labels.

    With a mixture prior (``model.prior()`` a ``MixtureSameFamily``) each code goes to its most
    responsible component, so the score measures the clusters the model itself defines; otherwise
    k-means (k-means++ seeding, ``n_init`` restarts) clusters the codes into ``n_clusters``
    groups, by default as many as there are distinct true labels.

    Args:
        model: an autoencoder (``model.encode(x).mean`` gives the codes).
        data: a labelled split; for factor data sets (labels ``(N, K)``) name the ``factor``.
        limit: a seeded random subset of this many examples (``None``: the whole split).
        n_clusters: k for k-means (ignored with a mixture prior).
        factor: which factor column to use as the labels when the split has factors.
        batch_size: examples per encoder pass.
        n_init: k-means restarts.
        seed: seeds the subset and the k-means seeding.
        assign: ``auto`` (the mixture prior's components when there is one, else k-means),
            ``prior`` (require a mixture prior) or ``kmeans`` (always k-means, to compare models
            with different priors on the same footing).

    Returns:
        ``cluster_ari``, ``cluster_nmi`` and ``cluster_count`` (the number of non-empty clusters).

    References:
        Hubert & Arabie, 1985 (ARI); Vinh, Epps & Bailey, JMLR 2010 (NMI).
    """
    if assign not in ("auto", "prior", "kmeans"):
        raise ValueError(f"assign must be 'auto', 'prior' or 'kmeans', got {assign!r}")
    subset = random_subset(data, limit, seed)
    with evaluation(model, seed):
        z, y = encode_dataset(model, subset, batch_size=batch_size)
        pz: Distribution | None = model.prior() if model.capabilities.latent_prior else None
        if y.dim() == 2:
            if factor is None:
                raise ValueError(f"this data set has {y.shape[1]} factors per example; name one with factor=")
            y = y[:, factor]
        keep = y >= 0  # -1 marks unlabelled examples
        if not bool(keep.any()):
            raise ValueError("clustering needs labels; this split has none")
        z, y = z[keep], y[keep]
        if assign == "prior" and not isinstance(pz, MixtureSameFamily):
            raise ValueError("assign='prior' needs a model with a mixture prior")
        if isinstance(pz, MixtureSameFamily) and assign != "kmeans":
            pred = mixture_assignments(z.to(pz.mixture_distribution.logits.device), pz).cpu()
        else:
            k = n_clusters if n_clusters is not None else int(torch.unique(y).numel())
            gen = torch.Generator().manual_seed(seed)
            # float64 and torch.cdist: the nearest centres (and the scores) of earlier releases
            pred, _, _ = kmeans(z.cpu().double(), min(k, z.shape[0]), gen, n_init=n_init, distances=torch.cdist)
    out = clustering_scores(y.cpu(), pred)
    out["cluster_count"] = float(torch.unique(pred).numel())
    return out


@METRICS.register("clustering")
def clustering(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Adjusted Rand index and NMI between clusters of the test codes and the true labels.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`clustering_metric`, which scores one split.
    """
    return clustering_metric(model, splits.test, **options)
