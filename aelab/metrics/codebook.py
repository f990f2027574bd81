"""Codebook health of vector-quantised models over a data split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.data.batches import eval_batches
from aelab.latents.vq import codebook_usage
from aelab.registry import METRICS


@torch.no_grad()
def codebook_metrics(model, data: ImageDataset, batch_size: int = 500, limit: int | None = None) -> dict[str, float]:
    """Usage of each codebook of a VQ model (``model.encode_codes``) on a split.

    Per level (suffixed ``_top`` / ``_bottom`` for VQ-VAE-2): ``perplexity`` and ``codes_used`` of
    the code counts over all positions of all examples (:func:`aelab.latents.vq.codebook_usage`),
    ``dead_codes``, the codes the training has not chosen for the quantizer's ``dead_after`` steps
    (restarted at once, so 0, when ``restart_dead`` is on), and ``restarted_codes``, how many
    restarts training has made so far. ``limit`` evaluates a seeded random subset.
    """
    data = random_subset(data, limit, seed=0)
    counts = [torch.zeros(k, dtype=torch.long) for k in model.num_codes]
    for batch in eval_batches(data, batch_size):
        x = batch.x
        codes = model.encode_codes(x)
        for i, c in enumerate([codes] if isinstance(codes, torch.Tensor) else codes):
            counts[i] += torch.bincount(c.flatten(), minlength=len(counts[i])).cpu()
    out: dict[str, float] = {}
    names = model.level_names
    for i, (n, q) in enumerate(zip(counts, model.quantizers)):
        suffix = f"_{names[i]}" if len(names) > 1 else ""
        dead = int((q.steps_unused >= q.cfg.dead_after).sum()) if q.cfg.dead_after else 0
        stats = codebook_usage(n) | {"dead_codes": float(dead), "restarted_codes": float(q.restarts)}
        out |= {f"{k}{suffix}": v for k, v in stats.items()}
    return out


@METRICS.register("codebook")
def codebook_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Usage of each codebook of a VQ model on the test split (perplexity, codes used, dead codes).

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`codebook_metrics`, which scores one split.
    """
    return codebook_metrics(model, splits.test, **options)
