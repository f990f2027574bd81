"""Pictures of sequence models: rollout strips of frames, sampled trajectories of signals.

* :func:`rollout_strip`: for each sequence, a row of the context and the true future frames, then
  rows of sampled futures (each jump as :meth:`aelab.models.tdvae.TDVAE.rollout` makes it);
* :func:`plot_trajectories`: for 1-D signals, the observations, the true state and sampled
  rollouts (chains of jumps) with their spread (the central 80%) and their mean;
* ``sequence`` per-epoch figures: one of the two, for a fixed spread of test sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aelab.data.base import Split
from aelab.nn.modes import eval_mode
from aelab.protocol import Model, require
from aelab.registry import EPOCH_FIGURES
from aelab.report.figures import _figure, _save, plot_image_rows

__all__ = ["plot_trajectories", "rollout_strip", "sequence_figures", "write_rollout"]


def _offsets(steps: Sequence[int]) -> list[int]:
    out, t = [], 0
    for dt in steps:
        t += int(dt)
        out.append(t)
    return out


@torch.no_grad()
def rollout_strip(model: Model, x: Tensor, context: int, steps: Sequence[int], samples: int,
                  path: str | Path, title: str | None = None) -> Path:
    """Draw sequences ``x`` ``(B, T, C, H, W)``: per sequence a row ``truth`` (the ``context``
    frames, then the true frames at the rolled-out times, blank past the data) and ``samples``
    rows of sampled futures after the context (blank under it)."""
    require(model, "sequence", what="a rollout strip")
    b, t = x.shape[:2]
    pred = model.rollout(x[:, :context], steps, samples).clamp(0, 1).cpu()  # (S, B, J, C, H, W)
    times = [context - 1 + o for o in _offsets(steps)]
    blank = torch.full(x.shape[2:], 0.5)
    rows, labels = [], []
    for i in range(b):
        truth = [x[i, j].cpu() for j in range(context)] + [x[i, j].cpu() if j < t else blank for j in times]
        rows.append(torch.stack(truth))
        labels.append(f"seq {i + 1}: truth")
        for s in range(samples):
            rows.append(torch.stack([blank] * context + list(pred[s, i])))
            labels.append(f"sample {s + 1}")
    cols = [f"{j + 1}" for j in range(context)] + [f"+{o}" for o in _offsets(steps)]
    title = title or (f"TD-VAE rollouts: {context} context frames, then jumps of {', '.join(map(str, steps))}")
    return plot_image_rows(torch.stack(rows), path, title, row_labels=labels, col_labels=cols,
                           xlabel="frame (context) and steps after the last context frame")


@torch.no_grad()
def plot_trajectories(model: Model, x: Tensor, context: int, steps: Sequence[int], samples: int, path: str | Path,
                      truth: Tensor | None = None, title: str | None = None, level: float = 0.8) -> Path:
    """Signals ``x`` ``(B, T, 1, 1, D)``: a panel per sequence (and per dimension, the first 3 of
    ``D > 1``) with the observations, the true state (``truth`` ``(B, T)`` of a 1-D signal,
    optional) and ``samples`` sampled futures after the context, each one chain of jumps by
    ``steps`` (:meth:`~aelab.models.tdvae.TDVAE.rollout`), with their mean and central ``level``
    band."""
    require(model, "sequence", what="a trajectory plot")
    b, t = x.shape[:2]
    obs = x.reshape(b, t, -1).cpu()
    dims = min(obs.shape[-1], 3)
    preds = model.rollout(x[:, :context], steps, samples).reshape(samples, b, len(steps), -1).cpu()
    lo = torch.quantile(preds, (1 - level) / 2, dim=0).numpy()
    hi = torch.quantile(preds, (1 + level) / 2, dim=0).numpy()
    mean = preds.mean(0).numpy()
    future = np.array([context - 1 + o for o in _offsets(steps)])
    cols = 3 if dims == 1 else dims
    rows = (b + 2) // 3 if dims == 1 else b
    fig = _figure(420 * min(b * dims, cols), 320 * rows)
    for n, (i, d) in enumerate((i, d) for i in range(b) for d in range(dims)):
        ax = fig.add_subplot(rows, cols, n + 1)
        ax.plot(np.arange(t), obs[i, :, d].numpy(), ".", color="0.5", label="observations")
        if truth is not None and dims == 1:
            ax.plot(np.arange(t), truth[i].cpu().numpy(), "-", color="k", lw=1, label="true position")
        for s in range(min(samples, 10)):
            ax.plot(future, preds[s, i, :, d].numpy(), "-", color="tab:blue", lw=0.5, alpha=0.5)
        ax.fill_between(future, lo[i, :, d], hi[i, :, d], color="tab:blue", alpha=0.2,
                        label=f"central {level:.0%} of rollouts")
        ax.plot(future, mean[i, :, d], "-", color="tab:blue", lw=2, label="rollout mean")
        ax.axvline(context - 1, color="tab:red", lw=0.8, ls="--")
        ax.set_xlabel("step")
        if dims > 1:
            ax.set_title(f"sequence {i + 1}, dimension {d + 1}", fontsize=9)
        if n == 0:
            ax.legend(fontsize=7, loc="upper left")
    jumps = ", ".join(map(str, steps)) if len(set(steps)) > 1 else f"{len(steps)} jumps of {steps[0]}"
    fig.suptitle(title or f"TD-VAE rollouts after {context} observed steps ({samples} samples; {jumps})", fontsize=11)
    return _save(fig, path)


def write_rollout(model: Model, data: Split, path: str | Path, context: int, steps: Sequence[int],
                  samples: int, n: int = 4, seed: int = 0) -> Path:
    """A rollout picture of ``n`` test sequences spread over ``data``: a strip for frames, a
    trajectory plot for signals ``(1, 1, D)``."""
    idx = torch.linspace(0, len(data) - 1, min(n, len(data))).long()
    batch = data.get_batch(idx)
    device = next(model.parameters()).device
    x = batch.x.to(device)
    if context < 1 or context >= x.shape[1]:
        raise ValueError(f"--context must be 1..{x.shape[1] - 1} (the sequences have {x.shape[1]} frames), "
                         f"got {context}")
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if x.shape[2:4] == (1, 1):  # signals (B, T, 1, 1, D): trajectories
            truth = batch.state[..., 0] if batch.state is not None else None
            return plot_trajectories(model, x, context, steps, samples, path, truth)
        return rollout_strip(model, x, context, steps, samples, path)


@EPOCH_FIGURES.register("sequence")
def sequence_figures(model: Model, test: Split, out_dir: str | Path, epoch: int,
                     class_names: Sequence[str] | None = None) -> None:
    """Per epoch: a rollout picture of 4 test sequences (half the frames as context, jumps of 1
    to the end), ``rollout_epoch{epoch + 1:03d}.png``."""
    t = test.get_batch(torch.arange(1)).x.shape[1]
    context = max(1, t // 2)
    steps = [1] * min(t - context, 10)
    write_rollout(model, test, Path(out_dir) / f"rollout_epoch{epoch + 1:03d}.png", context, steps, samples=3)
