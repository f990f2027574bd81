"""k-means: Lloyd's algorithm from random rows or k-means++ seeding, with seeded restarts.

One implementation for every caller: the vector quantizer initialises its codebook with it
(``init="random"``, a fixed number of iterations, no restarts) and the clustering metric turns
codes into cluster labels with it (k-means++ seeding, restarts, stop once assignments are
stable).

References:
    Lloyd, "Least squares quantization in PCM", IEEE Trans. Information Theory, 1982.
    Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["kmeans", "kmeans_plus_plus", "squared_distances"]


def squared_distances(z: Tensor, centres: Tensor) -> Tensor:
    """``||z_n - e_k||^2`` for all pairs, ``(N, D), (K, D) -> (N, K)``.

    Expanded as ``||z||^2 - 2 z E^T + ||e||^2``: one matrix product, never the ``(N, K, D)``
    broadcast (which for a 128-image batch of 7x7 codes and K=512, D=64 would be 200M floats).

    Example:
        >>> squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0]])).tolist()
        [[0.0], [25.0]]
    """
    z2 = z.pow(2).sum(1, keepdim=True)  # (N, 1)
    e2 = centres.pow(2).sum(1)  # (K,)
    return torch.addmm(e2 + z2, z, centres.t(), alpha=-2.0)


def kmeans_plus_plus(z: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` starting centres drawn by k-means++ seeding, ``(N, D) -> (k, D)``.

    The first centre is a uniformly drawn row; each next one a row drawn with probability
    proportional to its squared distance to the nearest centre so far (uniformly when every row
    coincides with a centre, i.e. there are fewer distinct rows than ``k``).

    References:
        Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.
    """
    n = z.shape[0]
    idx = [int(torch.randint(0, n, (1,), generator=generator))]
    d2 = (z - z[idx[0]]).pow(2).sum(1)
    for _ in range(1, k):
        # fewer distinct points than k: any remaining point is as good as another
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        j = int(torch.multinomial(weights, 1, generator=generator))
        idx.append(j)
        d2 = torch.minimum(d2, (z - z[j]).pow(2).sum(1))
    return z[idx].clone()


def _random_rows(z: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` distinct random rows of ``z`` (with repeats when ``z`` has fewer than ``k`` rows)."""
    n = z.shape[0]
    if n >= k:
        start = torch.randperm(n, generator=generator, device=z.device)[:k]
    else:
        start = torch.randint(n, (k,), generator=generator, device=z.device)
    return z[start].clone()


@torch.no_grad()
def kmeans(z: Tensor, k: int, generator: torch.Generator | None = None, n_init: int = 3, max_iter: int = 100,
           init: str = "k-means++", until_stable: bool = True,
           distances: Callable[[Tensor, Tensor], Tensor] = squared_distances) -> tuple[Tensor, Tensor, float]:
    """Lloyd's k-means; the best of ``n_init`` seeded restarts, ``(N, D) -> (N,), (k, D), float``.

    Each restart assigns every row to its nearest centre and moves each centre to the mean of its
    rows, ``max_iter`` times. A cluster that loses all its rows keeps its previous centre (rather
    than becoming NaN). Computes in ``z``'s dtype and on its device.

    Args:
        z: points ``(N, D)``.
        k: number of clusters (``k >= 1``; with ``init="k-means++"`` also ``k <= N``).
        generator: the only source of randomness (the seeding); ``None`` draws from torch's
            global RNG (on ``z``'s device for ``init="random"``).
        n_init: restarts; the one with the least within-cluster sum of squares is returned.
        max_iter: centre updates per restart (0: the seeding itself).
        init: ``"k-means++"`` (:func:`kmeans_plus_plus`) or ``"random"`` (``k`` distinct random
            rows, drawn with repeats when ``N < k``).
        until_stable: stop a restart early once an update leaves the assignments unchanged
            (the centres then no longer move).
        distances: ``(N, D), (k, D) -> (N, k)``, any increasing function of the Euclidean
            distance (its argmin is the nearest centre): :func:`squared_distances` (one matrix
            product) or ``torch.cdist``. Both find the same nearest centres up to rounding.

    Returns:
        int64 labels ``(N,)`` (each row's nearest final centre), centres ``(k, D)`` and the
        within-cluster sum of squares.

    References:
        Lloyd, "Least squares quantization in PCM", IEEE Trans. Information Theory, 1982.
        Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007.

    Example:
        >>> z = torch.tensor([[0.0], [0.1], [5.0], [5.1]], dtype=torch.float64)
        >>> labels, centres, inertia = kmeans(z, 2, torch.Generator().manual_seed(0))
        >>> labels[0] == labels[1] != labels[2] == labels[3], round(inertia, 4)
        (tensor(True), 0.01)
    """
    if z.dim() != 2:
        raise ValueError(f"z must have shape (N, D), got {tuple(z.shape)}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"init must be 'k-means++' or 'random', got {init!r}")
    n = z.shape[0]
    if k < 1 or (init == "k-means++" and k > n):
        raise ValueError(f"k must be in [1, {n}], got {k}")
    best: tuple[Tensor, Tensor, float] | None = None
    for _ in range(max(1, n_init)):
        centres = kmeans_plus_plus(z, k, generator) if init == "k-means++" else _random_rows(z, k, generator)
        labels = distances(z, centres).argmin(1)
        for _ in range(max_iter):
            sums = torch.zeros_like(centres).index_add_(0, labels, z)
            counts = torch.bincount(labels, minlength=k).unsqueeze(1)  # (k, 1)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
            new = distances(z, centres).argmin(1)
            if until_stable and torch.equal(new, labels):
                break
            labels = new
        inertia = float((z - centres[labels]).pow(2).sum())
        if best is None or inertia < best[2]:
            best = (labels, centres, inertia)
    assert best is not None
    return best
