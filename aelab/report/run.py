"""All figures of a trained run, chosen by the model's declared capabilities."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aelab.data.base import DataSplits
from aelab.nn.modes import evaluation
from aelab.protocol import Capabilities, Model
from aelab.report.figures import plot_training_curves, write_run_figures
from aelab.report.images import reconstruction_grid, save_image_grid
from aelab.report.sequence import write_rollout
from aelab.report.text import write_text_figures
from aelab.runs import attach_code_prior

__all__ = ["write_figures"]


def write_figures(run_dir: str | Path, model: nn.Module, data: DataSplits,
                  out: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Write every figure that applies to a run's model into ``out`` (default ``RUN_DIR/figures``).

    Text models get the training curves and, text VAEs, the KL per latent dimension
    (:func:`aelab.report.text.write_text_figures`). Sequence models get rollouts after a context
    (steps of 1, and jumps of ``max_jump`` where it is larger) and the training curves. Image
    models with a continuous prior get traversals, KL per dimension, latent scatter, manifold and training curves
    (:func:`aelab.report.figures.write_run_figures`); models with discrete codes get
    reconstructions, samples (with a code prior) and training curves; other models the training
    curves only.

    Returns:
        The paths written, and notes on the figures that were not drawn and why.
    """
    caps = model.capabilities if isinstance(model, Model) else Capabilities()
    out_dir = Path(out) if out else Path(run_dir) / "figures"
    metrics = Path(run_dir) / "metrics.jsonl"
    if caps.text:
        return write_text_figures(model, data.test, out_dir, metrics)
    if caps.sequence:
        return _write_sequence_figures(model, data, out_dir, metrics), []
    if caps.codes:
        return _write_code_figures(run_dir, model, data, out_dir, metrics)
    if caps.latent_prior:
        return write_run_figures(model, data.test, out_dir, class_names=data.info.class_names, metrics=metrics), []
    return ([plot_training_curves(metrics, out_dir / "training_curves.png")] if metrics.is_file() else []), []


def _write_sequence_figures(model: Model, data: DataSplits, out_dir: Path, metrics: Path) -> list[Path]:
    """Rollouts of 4 test sequences after ``min(10, T // 2)`` frames: steps of 1 to the end (at most
    10), and jumps of ``max_jump`` as far as the sequence reaches; the training curves."""
    frames = data.test.get_batch(torch.arange(1)).x.shape[1]
    context = min(10, frames // 2)
    written = [write_rollout(model, data.test, out_dir / "rollout.png", context, [1] * min(frames - context, 10), 8)]
    jump = model.max_jump
    if jump > 1 and frames - context >= jump:
        written.append(write_rollout(model, data.test, out_dir / f"rollout_jumps_of_{jump}.png", context,
                                     [jump] * ((frames - context) // jump), 8))
    if metrics.is_file():
        written.append(plot_training_curves(metrics, out_dir / "training_curves.png"))
    return written


def _write_code_figures(run_dir: str | Path, model: Model, data: DataSplits, out_dir: Path,
                        metrics: Path) -> tuple[list[Path], list[str]]:
    """Reconstructions, samples (with a code prior) and training curves; traversals do not apply to codes."""
    notes = []
    if not model.capabilities.sample:
        attach_code_prior(run_dir, model, required=False)
    idx = torch.linspace(0, len(data.test) - 1, min(32, len(data.test))).long()  # a spread of test images
    x = data.test.get_batch(idx).x
    written = [save_image_grid(reconstruction_grid(x, model.reconstruct(x)), out_dir / "reconstructions.png",
                               nrow=8)]
    if model.capabilities.sample:
        with evaluation(model, 0):
            written.append(save_image_grid(model.sample(64), out_dir / "samples.png", nrow=8))
    else:
        notes.append(f"no samples: the run has no code prior yet (`aelab train-prior {run_dir}`)")
    if metrics.is_file():
        written.append(plot_training_curves(metrics, out_dir / "training_curves.png"))
    notes.append("no latent traversals: they sweep continuous latents, and a VQ model's latents are discrete codes")
    return written, notes
