"""The per-epoch evaluations that model families name in their registry entries.

Each is ``f(model, split, cfg) -> dict[str, float]`` with ``cfg`` the trainer's settings (read for
``eval_batch_size``, ``eval_limit``, ``diagnostics``, ``iwae_k``, ``iwae_limit``), registered in
:data:`aelab.registry.EPOCH_EVALUATIONS`. What applies is decided by the model's declared
:class:`~aelab.protocol.Capabilities`. The metrics draw from their own seeded RNG streams, so the
numbers are comparable across epochs and evaluation never touches the training stream.
"""

from __future__ import annotations

from typing import Any

import torch

from aelab.data.base import Split, random_subset
from aelab.data.batches import eval_batches
from aelab.metrics.codebook import codebook_metrics
from aelab.metrics.latent import latent_diagnostics
from aelab.metrics.likelihood import likelihood_metric
from aelab.metrics.reconstruction import evaluate_reconstruction
from aelab.nn.modes import eval_mode
from aelab.protocol import Model
from aelab.registry import EPOCH_EVALUATIONS

__all__ = ["autoencoder_evaluation", "code_prior_evaluation", "evaluate_loss_terms"]


@EPOCH_EVALUATIONS.register("autoencoder")
def autoencoder_evaluation(model: Model, data: Split, cfg: Any) -> dict[str, float]:
    """The image families' evaluation on the test split.

    Reconstruction metrics for every model; for models with discrete codes also the codebook
    health (:func:`aelab.metrics.codebook.codebook_metrics`); for models with a prior over
    continuous latents also the latent diagnostics (``cfg.diagnostics``) and the IWAE NLL with
    its ELBO (``cfg.iwae_k`` samples on a random ``cfg.iwae_limit`` test examples).
    """
    caps = model.capabilities
    out = evaluate_reconstruction(model, data, cfg.eval_batch_size, cfg.eval_limit)
    if caps.codes:  # discrete codes: no p(z) to score, codebook health instead
        return out | codebook_metrics(model, data, cfg.eval_batch_size, cfg.eval_limit)
    if not caps.latent_prior:
        return out
    if cfg.diagnostics:
        out |= latent_diagnostics(model, data, cfg.eval_batch_size, limit=cfg.eval_limit)
    if cfg.iwae_k > 0:
        limit = min(cfg.iwae_limit, cfg.eval_limit or cfg.iwae_limit)
        out |= likelihood_metric(model, data, k=cfg.iwae_k, limit=limit)
    return out


@torch.no_grad()
def evaluate_loss_terms(model: Model, data: Split, batch_size: int = 500, limit: int | None = None) -> dict[str, float]:
    """The example-weighted mean of ``model.loss``'s per-example values (``nll``) and of each
    other term over a split, in evaluation mode on the model's device; ``limit`` evaluates a
    seeded random subset (never the first N: splits may be sorted by label)."""
    data = random_subset(data, limit, seed=0)
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    n = 0
    with eval_mode(model):
        for batch in eval_batches(data, batch_size):
            out = model.loss(batch.to(device))
            b = len(batch)
            sums["nll"] = sums.get("nll", 0.0) + out.per_example.double().sum().item()
            for k, v in out.terms.items():
                if k != "nll":
                    sums[k] = sums.get(k, 0.0) + v.item() * b
            n += b
    return {k: v / max(n, 1) for k, v in sums.items()}


@EPOCH_EVALUATIONS.register("code_prior")
def code_prior_evaluation(model: Model, data: Split, cfg: Any) -> dict[str, float]:
    """Test NLL of a code prior: ``nll`` in nats per code grid (both grids for ``vqvae2``),
    ``bits_per_code`` and the prior's other terms (``nll_top``, ``nll_bottom``)."""
    return evaluate_loss_terms(model, data, cfg.eval_batch_size, cfg.eval_limit)
