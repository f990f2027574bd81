"""Seeded train/test splits of a data set's indices.

Example:
    >>> train, test = split_indices(10, seed=0, test_size=3)
    >>> len(train), len(test), sorted(train.tolist() + test.tolist()) == list(range(10))
    (7, 3, True)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["split_indices"]


def split_indices(n: int, seed: int, test_size: int) -> tuple[Tensor, Tensor]:
    """A seeded random train/test split of ``range(n)``: int64 ``(n - test_size,)`` and ``(test_size,)``.

    The test part is the first ``test_size`` entries of ``torch.randperm(n)`` drawn from a fresh
    generator seeded with ``seed`` (never torch's global RNG), the train part the rest; each part
    is sorted.

    Args:
        n: the number of examples.
        seed: seeds the permutation.
        test_size: examples held out, ``0 <= test_size <= n``.
    """
    if not 0 <= test_size <= n:
        raise ValueError(f"test_size must be in [0, {n}], got {test_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[test_size:].sort().values, perm[:test_size].sort().values
