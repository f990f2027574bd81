"""Sparsity of a representation: the normalised Hoyer measure of Mathieu et al. (2019).

References:
    Hoyer, "Non-negative Matrix Factorization with Sparseness Constraints", JMLR 2004.
    Hurley & Rickard, "Comparing Measures of Sparsity", IEEE Trans. Information Theory, 2009.
    Mathieu, Rainforth, Siddharth & Teh, "Disentangling Disentanglement in Variational
    Autoencoders", ICML 2019 (Section 5: the sparsity metric on std-normalised codes).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.metrics.reconstruction import encode_dataset
from aelab.nn.modes import evaluation
from aelab.registry import METRICS

__all__ = ["hoyer", "hoyer_sparsity", "sparsity_metric", "sparsity"]


def hoyer(z: Tensor) -> Tensor:
    """Hoyer's sparseness of each row: ``(sqrt(D) - ||z||_1 / ||z||_2) / (sqrt(D) - 1)``.

    1 for a vector with a single non-zero entry, 0 for one whose entries all have the same
    magnitude; invariant to the vector's scale. Zero rows have no direction and give NaN.

    Args:
        z: vectors ``(..., D)`` with ``D >= 2``.

    Returns:
        ``(...)`` values in ``[0, 1]``.

    Example:
        >>> hoyer(torch.tensor([[0.0, 3.0, 0.0, 0.0], [1.0, -1.0, 1.0, 1.0]])).tolist()
        [1.0, 0.0]
    """
    d = z.shape[-1]
    if d < 2:
        raise ValueError(f"the Hoyer measure needs at least 2 dimensions, got {d}")
    ratio = z.abs().sum(-1) / z.norm(dim=-1)
    root = math.sqrt(d)
    return ((root - ratio) / (root - 1)).clamp(0.0, 1.0)


def hoyer_sparsity(z: Tensor | np.ndarray, normalize: bool = True) -> dict[str, float]:
    """Mean Hoyer sparseness of the codes, each dimension first divided by its std over the data.

    Mathieu et al. (2019) measure how few latent dimensions each encoding uses with the Hoyer
    extent of the posterior mean, averaged over data points, after dividing every dimension by
    its standard deviation over the data set. The division (no centring: centring would turn a
    one-hot code dense) stops a representation from looking sparse merely because some
    dimensions have small scale, e.g. collapsed ones: after it, every varying dimension has unit
    spread, and a code is sparse only if each point activates few of them. Dimensions that are
    exactly constant are left as they are (their std is 0; dividing would blow them up).

    Args:
        z: codes ``(N, D)``, usually E[z|x], with ``D >= 2``.
        normalize: divide each dimension by its std (the paper's metric); ``False`` gives the
            plain mean Hoyer of the raw codes.

    Returns:
        ``{"hoyer": value}`` in ``[0, 1]``: 1 when every code has one active dimension, 0 when
        every code spreads equal magnitude over all (normalised) dimensions. All-zero codes are
        left out of the mean (NaN if there are no others).

    References:
        Mathieu, Rainforth, Siddharth & Teh, "Disentangling Disentanglement in Variational
        Autoencoders", ICML 2019. Hoyer, JMLR 2004.

    Example:
        >>> hoyer_sparsity(torch.eye(4).repeat(5, 1))  # one-hot codes
        {'hoyer': 1.0}
        >>> a = torch.arange(1.0, 9.0)[:, None]
        >>> hoyer_sparsity(a * torch.ones(8, 4))  # equal magnitudes in every dimension
        {'hoyer': 0.0}
    """
    z = torch.as_tensor(z).double()
    if z.dim() != 2:
        raise ValueError(f"z must have shape (N, D), got {tuple(z.shape)}")
    if normalize and z.shape[0] > 1:
        sd = z.std(0)
        z = z / torch.where(sd > 0, sd, torch.ones_like(sd))
    z = z[z.abs().sum(1) > 0]
    if z.shape[0] == 0:
        return {"hoyer": float("nan")}
    return {"hoyer": float(hoyer(z).mean())}


def sparsity_metric(model: nn.Module, data: ImageDataset, limit: int | None = 5000, batch_size: int = 500,
                    seed: int = 0) -> dict[str, float]:
    """Normalised Hoyer sparsity of the codes E[z|x] (Mathieu et al., 2019).

    Args:
        model: an autoencoder (``model.encode(x).mean`` gives the codes).
        data: the split (usually test).
        limit: a seeded random subset of this many examples (``None``: the whole split).
        batch_size: examples per encoder pass.
        seed: seeds the subset.

    Returns:
        ``{"hoyer": value}``: see :func:`hoyer_sparsity`.
    """
    with evaluation(model, seed):
        z, _ = encode_dataset(model, random_subset(data, limit, seed), batch_size=batch_size)
    return hoyer_sparsity(z.cpu())


@METRICS.register("sparsity")
def sparsity(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Normalised Hoyer sparsity of the test codes E[z|x] (Mathieu et al., 2019).

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`sparsity_metric`, which scores one split.
    """
    return sparsity_metric(model, splits.test, **options)
