"""Splits of discrete code grids (a VQ model's codes), for training and evaluating code priors."""

from __future__ import annotations

import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.data.base import Split

__all__ = ["CodeDataset"]


class CodeDataset(Split):
    """A split of code grids: ``get_batch`` returns a :class:`~aelab.batch.Batch` with ``x`` the
    int64 codes ``(B, H, W)``, ``cond`` the conditioning grids (VQ-VAE-2's top codes for the
    bottom prior) or ``None``, and ``y`` the labels (``-1`` where there are none).

    Tensors stay where they are (put them on the prior's device to train there).

    Args:
        codes: int64 ``(N, H, W)``.
        cond: int64 ``(N, H_c, W_c)`` conditioning codes, or ``None``.
        labels: int64 ``(N,)`` class labels, or ``None``.

    Example:
        >>> ds = CodeDataset(torch.randint(0, 8, (10, 2, 3)), labels=torch.arange(10))
        >>> b = ds.get_batch(torch.tensor([4, 1]))
        >>> b.x.shape, b.y.tolist(), b.cond
        (torch.Size([2, 2, 3]), [4, 1], None)
    """

    def __init__(self, codes: Tensor, cond: Tensor | None = None, labels: Tensor | None = None) -> None:
        if codes.dim() != 3 or codes.is_floating_point():
            raise ValueError(f"codes must be integer (N, H, W), got {codes.dtype} {tuple(codes.shape)}")
        n = codes.shape[0]
        if cond is not None and (cond.dim() != 3 or cond.shape[0] != n or cond.is_floating_point()):
            raise ValueError(f"cond must be integer (N={n}, H_c, W_c), got {cond.dtype} {tuple(cond.shape)}")
        if labels is not None and (labels.shape != (n,) or labels.is_floating_point()):
            raise ValueError(f"labels must be integer (N={n},), got {labels.dtype} {tuple(labels.shape)}")
        self.codes = codes.long()
        self.cond = cond.long() if cond is not None else None
        self.labels = labels.long() if labels is not None else None

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        y = self.labels[idx] if self.labels is not None else torch.full((len(idx),), -1, dtype=torch.long)
        return Batch(self.codes[idx], y, cond=self.cond[idx] if self.cond is not None else None)

    def subset(self, idx: Tensor) -> CodeDataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return CodeDataset(self.codes[idx], None if self.cond is None else self.cond[idx],
                           None if self.labels is None else self.labels[idx])

    def __repr__(self) -> str:
        return f"CodeDataset(n={len(self)}, grid={tuple(self.codes.shape[1:])}, cond={self.cond is not None})"
