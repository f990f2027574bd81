"""Mini-batch order as a pure function of (seed, epoch): resuming at any step replays it exactly."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from aelab.batch import Batch
from aelab.data.base import Split


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def train_batches(data: Split, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator[Batch]:
    """Shuffled batches of epoch ``epoch`` (the split's :meth:`~aelab.data.base.Split.order`),
    skipping the first ``start`` (for resume)."""
    order = data.order(seed, epoch, batch_size)
    for i in range(start, steps_per_epoch(len(data), batch_size)):
        yield data.get_batch(order[i * batch_size : (i + 1) * batch_size])


def eval_batches(data: Split, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
    """The first ``limit`` examples (all: ``None``) in order, ``batch_size`` at a time."""
    n = len(data) if limit is None else min(limit, len(data))
    for i in range(0, n, batch_size):
        yield data.get_batch(torch.arange(i, min(i + batch_size, n)))
