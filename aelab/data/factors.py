"""Random draws of the generative factors of a factor data set (dSprites and the like).

Example:
    >>> v = sample_factors((4,), (3, 6), torch.Generator().manual_seed(0))
    >>> v.shape, v.dtype, bool((v < torch.tensor([3, 6])).all())
    (torch.Size([4, 2]), torch.int64, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["sample_factors"]


def sample_factors(shape: tuple[int, ...], factor_sizes: Sequence[int],
                   generator: torch.Generator | None = None) -> Tensor:
    """Factor indices drawn uniformly and independently: int64 ``(*shape, K)`` for ``K`` factors.

    Factor ``k`` takes values in ``[0, factor_sizes[k])``; the factors are drawn one after the
    other (all of factor 0 first), so a seeded generator gives the same draws for a given
    ``shape``.

    Args:
        shape: the batch shape of the draws.
        factor_sizes: the number of values of each factor.
        generator: source of randomness (``None``: torch's global RNG).
    """
    return torch.stack([torch.randint(0, int(s), shape, generator=generator) for s in factor_sizes], -1)
