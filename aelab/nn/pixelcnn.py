"""The gated PixelCNN over grids of discrete codes, with vertical and horizontal stacks.

A PixelCNN models a grid autoregressively in raster order: the logits at ``(r, c)`` may depend
on the codes at ``(r', c')`` with ``r' < r``, or ``r' == r`` and ``c' < c``, and on nothing else.
The original masked 3x3 convolution has a blind spot (it never sees the upper-right region); the
gated PixelCNN removes it with two stacks:

* the **vertical stack** sees whole rows above: its features at row ``r`` depend on rows
  ``< r`` only (every column within the receptive field, to the right as well);
* the **horizontal stack** sees the current row to the left: its features at ``(r, c)`` depend
  on ``(r, < c)`` and, through a 1x1 link from the vertical stack, on the rows above.

Causality comes from padding and cropping instead of zeroed weights: a convolution padded only
on the top (or left) and cropped to the grid cannot see below (or to the right), whatever its
weights, so nothing is masked at run time and no gradient reaches a weight that must stay zero.
The first layer (mask type A) excludes the current row from the vertical kernel and the current
column from the horizontal kernel and has no residual connection (the residual would carry the
current code to its own logits); later layers (mask type B) include them, which is safe because
their inputs already depend only on earlier positions.

Sampling uses the split between the stacks: the vertical stack at row ``r`` does not depend on
row ``r``, so it runs once per row (on that row only, from cached rows above), and each position
of the row then needs the horizontal stack over that row's columns ``<= c`` only (:meth:`GatedPixelCNN.start_row`,
:meth:`GatedPixelCNN.logits_at`).

References:
    van den Oord et al., "Pixel Recurrent Neural Networks", ICML 2016;
    van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["GatedMaskedConv", "GatedPixelCNN", "check_kernel_size", "gate"]


def gate(x: Tensor) -> Tensor:
    """The gated activation ``tanh(a) * sigmoid(b)`` with ``a, b`` the two channel halves of ``x``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def check_kernel_size(kernel_size: int) -> None:
    # an even kernel has no centre column, so "left of" and "right of" the current code are ambiguous
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")


class GatedMaskedConv(nn.Module):
    """One gated layer acting on the vertical and horizontal stacks ``(B, C, H, W)`` each.

    ``v' = gate(V * v + cond_v)``, ``h' = h + W_out gate(H * h + W_vh (V * v) + cond_h)``, where
    the conditioning ``cond`` is the sum of a per-class bias (label embedding) and a 1x1 projection
    of a spatial conditioning map, added inside both gates (van den Oord et al. 2016, eq. 4-5).

    Args:
        channels: C, the width of both stacks.
        kernel_size: k, odd; the vertical kernel spans ``k // 2`` rows above (type A) or ``k // 2 + 1``
            rows ending at the current one (type B), ``k`` columns; the horizontal kernel spans the
            ``k // 2`` columns to the left, plus the current one for type B.
        first: mask type A (the first layer): strictly earlier positions, no residual.
        num_classes: size of the label embedding (0: no class conditioning).
        cond_channels: channels of the spatial conditioning map (0: none).

    References:
        van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016.

    Example:
        >>> layer = GatedMaskedConv(8, 3, first=True, num_classes=2)
        >>> x = torch.randn(4, 8, 5, 6)
        >>> v, h = layer(x, x, y=torch.tensor([0, 1, 1, 0]))
        >>> v.shape, h.shape
        (torch.Size([4, 8, 5, 6]), torch.Size([4, 8, 5, 6]))
    """

    def __init__(self, channels: int, kernel_size: int, first: bool, num_classes: int = 0,
                 cond_channels: int = 0) -> None:
        super().__init__()
        check_kernel_size(kernel_size)
        self.first = first
        self.pad = p = kernel_size // 2
        extra = 0 if first else 1  # type B also sees the current row (vertical) / column (horizontal)
        self.vertical = nn.Conv2d(channels, 2 * channels, (p + extra, kernel_size))
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, p + extra))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        # one bias for each stack's gate: 4C = (v: tanh, sigmoid) + (h: tanh, sigmoid)
        self.class_bias = nn.Embedding(num_classes, 4 * channels) if num_classes else None
        self.cond_proj = nn.Conv2d(cond_channels, 4 * channels, 1, bias=False) if cond_channels else None

    def vertical_step(self, v: Tensor, cond: Tensor | None = None,
                      y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The vertical stack's update and what it feeds the horizontal gate.

        Returns ``v'`` and ``W_vh (V * v) + cond_h`` ``(B, 2C, H, W)``; both depend on rows above only,
        so while a row is being sampled they are computed once for the whole row.
        """
        height = v.shape[-2]
        p = self.pad
        # top padding only, crop to H rows: row r sees rows r-p..r-1 (type A) or r-p..r (type B)
        v_feat = self.vertical(F.pad(v, (p, p, p, 0)))[:, :, :height]
        bias_v = bias_h = 0.0
        if self.class_bias is not None:
            if y is None:
                raise ValueError("this layer is class-conditional: pass labels y")
            bv, bh = self.class_bias(y)[:, :, None, None].chunk(2, dim=1)
            bias_v, bias_h = bias_v + bv, bias_h + bh
        if self.cond_proj is not None:
            if cond is None:
                raise ValueError("this layer takes a spatial conditioning map: pass cond")
            cv, ch = self.cond_proj(cond).chunk(2, dim=1)
            bias_v, bias_h = bias_v + cv, bias_h + ch
        return gate(v_feat + bias_v), self.v_to_h(v_feat) + bias_h

    def horizontal_step(self, h: Tensor, from_v: Tensor) -> Tensor:
        """The horizontal stack's update given :meth:`vertical_step`'s ``from_v`` (same H, W)."""
        width = h.shape[-1]
        # left padding only, crop to W columns: column c sees c-p..c-1 (type A) or c-p..c (type B)
        h_feat = self.horizontal(F.pad(h, (self.pad, 0, 0, 0)))[:, :, :, :width]
        out = self.h_out(gate(h_feat + from_v))
        # no residual in the first layer: h is the embedding of the current code itself
        return out if self.first else h + out

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None = None,
                y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Both stacks ``(B, C, H, W)``; ``cond`` ``(B, C_cond, H, W)``; ``y`` int64 ``(B,)``."""
        v_new, from_v = self.vertical_step(v, cond, y)
        return v_new, self.horizontal_step(h, from_v)


class GatedPixelCNN(nn.Module):
    """Codes ``(B, H, W)`` in ``[0, K)`` -> logits ``(B, K, H, W)`` of p(code_i | codes_<i).

    Embedding, one type-A gated layer, ``layers - 1`` type-B gated layers with residual connections
    on the horizontal stack, and a ReLU-1x1-ReLU-1x1 head on the horizontal stack. Fully
    convolutional: any grid size works.

    The receptive field of position ``(r, c)`` is exactly the positions ``(r', c')`` with
    ``r - L p <= r' < r`` and ``|c' - c| <= L p``, or ``r' = r`` and ``c - L p <= c' < c``, where
    ``L`` is the number of layers and ``p = kernel_size // 2``: a causal field without blind spot.

    Args:
        num_codes: K.
        channels: width of both stacks.
        layers: number of gated layers (>= 1).
        kernel_size: odd convolution size (>= 3).
        num_classes: class conditioning: size of the label embedding (0: none).
        cond_channels: spatial conditioning: channels of the map passed as ``cond`` (0: none).

    References:
        van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016.

    Example:
        >>> net = GatedPixelCNN(num_codes=16, channels=8, layers=2)
        >>> net(torch.randint(0, 16, (3, 7, 5))).shape
        torch.Size([3, 16, 7, 5])
    """

    def __init__(self, num_codes: int, channels: int = 128, layers: int = 10, kernel_size: int = 5,
                 num_classes: int = 0, cond_channels: int = 0) -> None:
        super().__init__()
        if num_codes < 1 or channels < 1 or layers < 1:
            raise ValueError(f"GatedPixelCNN needs num_codes, channels and layers >= 1, "
                             f"got {num_codes}, {channels}, {layers}")
        self.num_codes = num_codes
        self.embed = nn.Embedding(num_codes, channels)
        self.layers = nn.ModuleList(
            GatedMaskedConv(channels, kernel_size, first=i == 0, num_classes=num_classes,
                            cond_channels=cond_channels)
            for i in range(layers)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_codes, 1))

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Embedded codes ``(B, C, H, W)``: the network's input (differentiable, for causality checks)."""
        return self.embed(codes).permute(0, 3, 1, 2)

    def from_embedding(self, e: Tensor, cond: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """Logits ``(B, K, H, W)`` from embedded codes ``(B, C, H, W)``."""
        v, h = e, e
        for layer in self.layers:
            v, h = layer(v, h, cond, y)
        return self.head(h)

    def forward(self, codes: Tensor, cond: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        return self.from_embedding(self.embed_codes(codes), cond, y)

    # --- sampling: one row at a time --------------------------------------------------------
    def start_row(self, codes: Tensor, r: int, cond: Tensor | None = None, y: Tensor | None = None,
                  state: dict[str, list[Tensor]] | None = None) -> dict[str, list[Tensor]]:
        """What every position of row ``r`` needs from the rows above; reads ``codes[:, :r]`` only.

        The vertical stack at row ``r`` needs each layer's input at rows ``r - p .. r`` alone, and
        the rows above were computed when they were started: ``state`` (this method's result for
        row ``r - 1``; ``None`` for row 0) keeps each layer's last ``p + 1`` vertical rows, so a row
        costs one row of vertical work per layer.

        Returns:
            ``{"v": cached vertical rows, "from_v": each layer's input to the horizontal gate at
            row r, (B, 2C, 1, W)}``.
        """
        if (state is None) != (r == 0):
            raise ValueError("start the rows in order: pass the state of row r - 1 (None for row 0)")
        p = self.layers[0].pad
        lo = max(0, r - p)
        v = self.embed_codes(codes[:, lo : r + 1])  # row r's codes are read by no vertical kernel at row r
        cond = cond[:, :, lo : r + 1] if cond is not None else None
        previous = state["v"] if state is not None else [None] * len(self.layers)
        cached, from_v = [], []
        for layer, old in zip(self.layers, previous):
            out, f = layer.vertical_step(v, cond, y)  # the last row is row r (the window starts at r - p or 0)
            from_v.append(f[:, :, -1:])
            rows = out[:, :, -1:] if old is None else torch.cat([old, out[:, :, -1:]], dim=2)[:, :, -(p + 1) :]
            cached.append(rows)
            v = rows  # the next layer's input at rows lo .. r
        return {"v": cached, "from_v": from_v}

    def logits_at(self, codes: Tensor, r: int, c: int, state: dict[str, list[Tensor]]) -> Tensor:
        """Logits ``(B, K)`` at ``(r, c)`` from :meth:`start_row`'s ``state`` and ``codes[:, r, :c]``:
        the horizontal stack on one row, cropped to the columns ``<= c``."""
        h = self.embed_codes(codes[:, r : r + 1, : c + 1])
        for layer, from_v in zip(self.layers, state["from_v"]):
            h = layer.horizontal_step(h, from_v[..., : c + 1])
        return self.head(h[..., -1:]).flatten(1)
