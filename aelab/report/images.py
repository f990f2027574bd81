"""Image grids written as PNG (Pillow only; no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aelab.io import atomic_path


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: float = 0.5) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [0, 1] into one uint8 array ``(H', W', C)`` (C in 1, 3).

    Example:
        >>> make_grid(torch.zeros(6, 1, 4, 5), nrow=3, pad=1).shape
        (11, 19, 1)
    """
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"can only draw 1- or 3-channel images, got {c} channels")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def auto_scale(height: int, width: int) -> int:
    """The enlargement that shows an image at about 56 pixels on its longer side (28 x 28: 2x,
    8 x 8: 7x, 64 x 64 and larger: 1x), at most 8x.

    Example:
        >>> auto_scale(28, 28), auto_scale(8, 8), auto_scale(64, 64), auto_scale(1, 2)
        (2, 7, 1, 8)
    """
    return max(1, min(8, round(56 / max(height, width))))


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None,
                    scale: int | None = None) -> Path:
    """Write a grid of images to ``path`` as PNG (atomically); ``scale`` enlarges small images
    (``None``: :func:`auto_scale` of the image size)."""
    if scale is None:
        scale = auto_scale(images.shape[-2], images.shape[-1])
    arr = make_grid(images, nrow=nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def reconstruction_grid(x: torch.Tensor, x_hat: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Interleave rows of inputs and their reconstructions: input row, reconstruction row, ...

    A last row shorter than ``per_row`` is padded with blank images, so a grid of ``per_row``
    columns keeps inputs and reconstructions on rows of their own.
    """
    rows = []
    for i in range(0, x.shape[0], per_row):
        a, b = x[i : i + per_row], x_hat[i : i + per_row]
        if a.shape[0] < per_row:
            pad = a.new_zeros(per_row - a.shape[0], *a.shape[1:])
            a, b = torch.cat([a, pad]), torch.cat([b, pad])
        rows += [a, b]
    return torch.cat(rows)
