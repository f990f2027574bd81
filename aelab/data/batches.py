"""Mini-batch order as a pure function of (seed, epoch): resuming at any step replays it exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.data.base import Split


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def batch_indices(data: Split, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator[Tensor]:
    """The example indices of each batch of epoch ``epoch`` (the split's
    :meth:`~aelab.data.base.Split.order` cut into runs of ``batch_size``), skipping the first
    ``start`` (for resume)."""
    order = data.order(seed, epoch, batch_size)
    for i in range(start, steps_per_epoch(len(data), batch_size)):
        yield order[i * batch_size : (i + 1) * batch_size]


def train_batches(data: Split, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator[Batch]:
    """Shuffled batches of epoch ``epoch`` (:func:`batch_indices`), skipping the first ``start``."""
    for idx in batch_indices(data, batch_size, seed, epoch, start):
        yield data.get_batch(idx)


def eval_batches(data: Split, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
    """The first ``limit`` examples (all: ``None``) in order, ``batch_size`` at a time."""
    n = len(data) if limit is None else min(limit, len(data))
    for i in range(0, n, batch_size):
        yield data.get_batch(torch.arange(i, min(i + batch_size, n)))
