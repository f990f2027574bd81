"""Batches as typed structures: what a data split hands out and what ``Model.loss`` receives.

The trainer moves a batch to the device with :meth:`Batch.to` and never looks inside; each model
reads the fields it needs. Images, variable-length token sequences and ``[T, C, H, W]`` sequences
fit the same structure; generated sequences also carry their true per-step ``state``, for
evaluation. A family with more fields subclasses it: :meth:`Batch.to` moves every tensor field of
any dataclass subclass.

Example:
    >>> import torch
    >>> b = Batch(x=torch.zeros(3, 5, dtype=torch.long), lengths=torch.tensor([5, 2, 4]))
    >>> b = b.with_mask()  # True where a token is real, from the lengths
    >>> len(b), b.mask.sum(1).tolist()
    (3, [5, 2, 4])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch"]


@dataclass
class Batch:
    """One mini-batch; the batch dimension is first in every tensor.

    Attributes:
        x: the inputs: images ``(B, C, H, W)`` in ``[0, 1]``, token ids ``(B, T)``, frames
            ``(B, T, C, H, W)``, code grids ``(B, h, w)``, ...
        y: class labels ``(B,)`` (``-1`` where unknown) or factor indices ``(B, K)``, or ``None``.
        lengths: the true length of each sequence ``(B,)`` for padded sequences, or ``None``.
        mask: ``True`` where ``x`` holds a real element (e.g. ``(B, T)``), or ``None``.
        cond: what the model is conditioned on (e.g. VQ-VAE-2's top codes for the bottom prior).
        state: per-step ground truth of a sequence ``(B, T, K)`` (positions of moving digits, an
            oscillator's position and velocity), for evaluation only: a model never trains on it.
    """

    x: Tensor
    y: Tensor | None = None
    lengths: Tensor | None = None
    mask: Tensor | None = None
    cond: Tensor | None = None
    state: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch with every tensor field on ``device`` (no copy where it already is)."""
        moved: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v
        return dataclasses.replace(self, **moved)

    def with_mask(self) -> Batch:
        """The batch with ``mask`` filled from ``lengths`` (positions ``t < length``) along dim 1."""
        if self.lengths is None:
            raise ValueError("with_mask needs lengths")
        t = torch.arange(self.x.shape[1], device=self.x.device)
        return dataclasses.replace(self, mask=t.unsqueeze(0) < self.lengths.unsqueeze(1))
