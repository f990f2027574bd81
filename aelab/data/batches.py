"""Mini-batches of a data set: shuffled for training, in order for evaluation.

The training order is a pure function of (seed, epoch): resuming at any step replays it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from aelab.data.base import ImageDataset


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def train_batches(data: ImageDataset, batch_size: int, seed: int, epoch: int,
                  start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches of epoch ``epoch``, skipping the first ``start`` (for resume)."""
    order = epoch_order(len(data), seed, epoch)
    for i in range(start, steps_per_epoch(len(data), batch_size)):
        yield data.get_batch(order[i * batch_size : (i + 1) * batch_size])


def eval_batches(data: ImageDataset, batch_size: int,
                 limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(data) if limit is None else min(limit, len(data))
    for i in range(0, n, batch_size):
        yield data.get_batch(torch.arange(i, min(i + batch_size, n)))
