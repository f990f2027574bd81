"""Reconstruction metrics over a data split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.data.batches import eval_batches
from aelab.nn.modes import eval_mode, evaluation
from aelab.registry import METRICS


def evaluate_reconstruction(model, data: ImageDataset, batch_size: int = 500,
                            limit: int | None = None, seed: int = 0) -> dict[str, float]:
    """Mean objective, each term, and squared error of the mean reconstruction, per example.

    Runs the model in evaluation mode (no corruption; schedules at their final value) on a
    private RNG stream seeded with ``seed`` (a VAE's objective samples z), so the numbers are
    reproducible. ``mse`` is per pixel; ``loss`` and the terms are per example (nats for NLL
    terms). ``limit`` evaluates a seeded random subset (the built-in splits are sorted by label).
    """
    data = random_subset(data, limit, seed=0)
    totals: dict[str, float] = {}
    n = 0
    with evaluation(model, seed) as device:
        for batch in eval_batches(data, batch_size):
            x = batch.x.to(device)
            out = model(x)
            lo = model.objective(out, model, None)
            b = x.shape[0]
            sums = {"loss": lo.per_example.sum().item()}
            sums |= {k: v.item() * b for k, v in lo.terms.items()}
            # the likelihood's own mean (not clamped to [0, 1]: data need not be images)
            sums["mse"] = (out.px_z.mean - x).pow(2).mean(dim=(1, 2, 3)).sum().item()
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + v
            n += b
    return {k: v / n for k, v in totals.items()}


@torch.no_grad()
def encode_dataset(model, data: ImageDataset, batch_size: int = 1000,
                   limit: int | None = None) -> tuple[Tensor, Tensor]:
    """Codes E[z|x] (encoding mode) and labels for a split (or a seeded random subset of ``limit``)."""
    zs, ys = [], []
    data = random_subset(data, limit, seed=0)
    with eval_mode(model):
        for batch in eval_batches(data, batch_size):
            x, y = batch.x, batch.y
            zs.append(model.encode(x).mean)
            ys.append(y)
    return torch.cat(zs), torch.cat(ys)


@METRICS.register("reconstruction")
def reconstruction_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Mean objective, each term, and squared error of the mean reconstruction on the test split.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`evaluate_reconstruction`, which scores one split.
    """
    return evaluate_reconstruction(model, splits.test, **options)
