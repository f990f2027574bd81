"""Causal self-attention over the raster-scan sequence of a code grid, and a PixelSNAIL-like net.

Masked convolutions see a bounded neighbourhood; attention lets every position read every earlier
one, which is what a small top-level VQ-VAE-2 grid needs to model global structure.

Causality is kept by a single invariant: the feature stream ``h`` at position ``i`` (raster index
``i = r W + c``) depends on the codes at positions ``< i`` only. The gated PixelCNN layers
(:mod:`aelab.nn.pixelcnn`) keep it; the attention adds, at query ``i``, values computed from
``h_j`` *and the embedding of code j itself*, so it must read keys ``j < i`` strictly ("strictly
before"): reading ``j = i`` would hand position ``i`` its own code. Query 0 has no earlier key; it
attends to a learned null key/value instead, which keeps the softmax well defined (no row of
``-inf``) and gives the first position a learnable output.

References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017;
    Chen et al., "PixelSNAIL: An Improved Autoregressive Generative Model", ICML 2018;
    Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aelab.nn.linear import Linear
from aelab.nn.pixelcnn import GatedMaskedConv, gate

__all__ = ["CausalSelfAttention", "LearnedPositionalEncoding2d", "PixelSNAIL", "PixelSNAILBlock",
           "sinusoidal_encoding_2d", "strictly_causal_mask"]


def strictly_causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(L, 1 + L)``: query ``i`` may read the null slot (column 0) and keys ``j < i``.

    Example:
        >>> strictly_causal_mask(3).int()
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [1, 1, 1, 0]], dtype=torch.int32)
    """
    keys = torch.ones(length, length, dtype=torch.bool, device=device).tril(diagonal=-1)
    null = torch.ones(length, 1, dtype=torch.bool, device=device)
    return torch.cat([null, keys], dim=1)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where output ``i`` reads the keys/values of positions ``j < i`` only.

    Queries and keys/values come from separate inputs (PixelSNAIL's keys/values also carry the
    raw code embedding). Output ``i`` depends on ``query[:, i]`` and on ``memory[:, :i]``.

    Args:
        query_dim: features of the query input.
        memory_dim: features of the key/value input.
        heads: number of attention heads.
        head_dim: features per head (default ``query_dim // heads``).
        out_dim: output features (default ``query_dim``).

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017.

    Example:
        >>> attn = CausalSelfAttention(query_dim=8, memory_dim=12, heads=2)
        >>> attn(torch.randn(3, 5, 8), torch.randn(3, 5, 12)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, query_dim: int, memory_dim: int, heads: int, head_dim: int | None = None,
                 out_dim: int | None = None) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        self.heads = heads
        self.head_dim = head_dim or max(query_dim // heads, 1)
        inner = heads * self.head_dim
        self.to_q = Linear(query_dim, inner)
        self.to_kv = Linear(memory_dim, 2 * inner)
        # the null slot every query may read (the only one query 0 has)
        self.null_kv = nn.Parameter(torch.randn(2, heads, 1, self.head_dim) * 0.02)
        self.out = Linear(inner, out_dim or query_dim)

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        """``query`` ``(B, L, D_q)`` and ``memory`` ``(B, L, D_m)`` -> ``(B, L, out_dim)``."""
        b, n, _ = query.shape
        q = self.to_q(query).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, L, d)
        k, v = self.to_kv(memory).view(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        null_k, null_v = self.null_kv.unsqueeze(1).expand(2, b, self.heads, 1, self.head_dim)
        k, v = torch.cat([null_k, k], dim=2), torch.cat([null_v, v], dim=2)  # (B, heads, 1 + L, d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=strictly_causal_mask(n, query.device))
        return self.out(a.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


def sinusoidal_encoding_2d(channels: int, height: int, width: int, device: torch.device | None = None,
                           dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed 2-D positional encoding ``(channels, H, W)``: sines and cosines of the row in the first
    half of the channels, of the column in the second (any grid size; zeros pad odd remainders).

    References:
        Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the 1-D form).

    Example:
        >>> sinusoidal_encoding_2d(8, 3, 4).shape
        torch.Size([8, 3, 4])
    """
    quarter = channels // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=dtype) / max(quarter, 1))

    def encode(n: int) -> Tensor:  # (n, 2 quarter)
        angle = torch.arange(n, device=device, dtype=dtype)[:, None] * freqs
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    rows = encode(height)[:, None, :].expand(height, width, 2 * quarter)
    cols = encode(width)[None, :, :].expand(height, width, 2 * quarter)
    pe = torch.cat([rows, cols], dim=2).permute(2, 0, 1)
    return F.pad(pe, (0, 0, 0, 0, 0, channels - 4 * quarter))


class LearnedPositionalEncoding2d(nn.Module):
    """A learned ``(channels, H, W)`` table; ``forward(h, w)`` returns its top-left ``h x w`` part
    (sampling runs the network on the first rows only).

    Example:
        >>> LearnedPositionalEncoding2d(8, (4, 4))(2, 4).shape
        torch.Size([8, 2, 4])
    """

    def __init__(self, channels: int, grid_shape: tuple[int, int]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(channels, *grid_shape) * 0.02)

    def forward(self, height: int, width: int) -> Tensor:
        if height > self.table.shape[1] or width > self.table.shape[2]:
            raise ValueError(f"grid {height}x{width} exceeds the learned positional table "
                             f"{self.table.shape[1]}x{self.table.shape[2]}")
        return self.table[:, :height, :width]


class PixelSNAILBlock(nn.Module):
    """Gated residual PixelCNN layers (type B), then causal attention added to the horizontal stack.

    Queries: ``h + pos``; keys/values: ``[h, e + pos]`` with ``e`` the embedded codes. The attention
    output passes a gated 1x1 projection and is added to ``h`` (a residual, like every layer here).

    Args:
        channels: C.
        layers: gated residual layers before the attention (>= 0).
        heads: attention heads.
        kernel_size: odd convolution size.
        num_classes: class conditioning of the gated layers (0: none).
        cond_channels: spatial conditioning of the gated layers (0: none).

    References:
        Chen et al., "PixelSNAIL: An Improved Autoregressive Generative Model", ICML 2018.
    """

    def __init__(self, channels: int, layers: int, heads: int, kernel_size: int, num_classes: int = 0,
                 cond_channels: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GatedMaskedConv(channels, kernel_size, first=False, num_classes=num_classes, cond_channels=cond_channels)
            for _ in range(layers)
        )
        self.attention = CausalSelfAttention(channels, 2 * channels, heads, out_dim=channels)
        self.proj = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, v: Tensor, h: Tensor, e: Tensor, pos: Tensor, cond: Tensor | None = None,
                y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            v, h = layer(v, h, cond, y)
        shape = h.shape  # (B, C, H, W)
        q = (h + pos).flatten(2).transpose(1, 2)  # (B, HW, C), raster order
        m = torch.cat([h, e + pos], dim=1).flatten(2).transpose(1, 2)  # (B, HW, 2C)
        a = self.attention(q, m).transpose(1, 2).reshape(shape)
        return v, h + gate(self.proj(a))


class PixelSNAIL(nn.Module):
    """Codes ``(B, H, W)`` -> logits ``(B, K, H, W)``: a type-A gated layer, then ``blocks`` x
    (``layers`` gated residual layers + strictly causal self-attention), then a 1x1 head.

    Logits at raster position ``i`` depend on the codes at every position ``< i`` (attention has no
    bounded receptive field) and on no other code.

    Args:
        num_codes: K.
        grid_shape: ``(H, W)``: the size of the learned positional table (``positional="learned"``).
        channels: C (a multiple of ``heads``).
        blocks: number of attention blocks.
        layers: gated residual layers in each block.
        heads: attention heads.
        kernel_size: odd convolution size.
        positional: ``learned`` table or ``fixed`` 2-D sinusoids.
        num_classes: class conditioning (0: none).
        cond_channels: spatial conditioning map channels (0: none).

    References:
        Chen et al., "PixelSNAIL: An Improved Autoregressive Generative Model", ICML 2018;
        Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.

    Example:
        >>> net = PixelSNAIL(num_codes=16, grid_shape=(4, 4), channels=8, blocks=1, layers=1, heads=2)
        >>> net(torch.randint(0, 16, (2, 4, 4))).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, num_codes: int, grid_shape: tuple[int, int], channels: int = 128, blocks: int = 2,
                 layers: int = 2, heads: int = 4, kernel_size: int = 3,
                 positional: Literal["learned", "fixed"] = "learned", num_classes: int = 0,
                 cond_channels: int = 0) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads})")
        if positional not in ("learned", "fixed"):
            raise ValueError(f"positional must be 'learned' or 'fixed', got {positional!r}")
        self.num_codes = num_codes
        self.channels = channels
        self.embed = nn.Embedding(num_codes, channels)
        self.pos = LearnedPositionalEncoding2d(channels, grid_shape) if positional == "learned" else None
        self.first = GatedMaskedConv(channels, kernel_size, first=True, num_classes=num_classes,
                                     cond_channels=cond_channels)
        self.blocks = nn.ModuleList(
            PixelSNAILBlock(channels, layers, heads, kernel_size, num_classes, cond_channels) for _ in range(blocks)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_codes, 1))

    def positions(self, height: int, width: int, like: Tensor) -> Tensor:
        if self.pos is not None:
            return self.pos(height, width)
        return sinusoidal_encoding_2d(self.channels, height, width, like.device, like.dtype)

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Embedded codes ``(B, C, H, W)``: the network's input (differentiable, for causality checks)."""
        return self.embed(codes).permute(0, 3, 1, 2)

    def from_embedding(self, e: Tensor, cond: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """Logits ``(B, K, H, W)`` from embedded codes ``(B, C, H, W)``."""
        pos = self.positions(e.shape[2], e.shape[3], e)
        v, h = self.first(e, e, cond, y)
        for block in self.blocks:
            v, h = block(v, h, e, pos, cond, y)
        return self.head(h)

    def forward(self, codes: Tensor, cond: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        return self.from_embedding(self.embed_codes(codes), cond, y)

    # --- sampling: the same protocol as GatedPixelCNN, without caching ----------------------
    def start_row(self, codes: Tensor, r: int, cond: Tensor | None = None, y: Tensor | None = None,
                  state: object = None) -> tuple[Tensor | None, Tensor | None]:
        """Attention reads the current row, so nothing is cached: the state is the cropped conditioning."""
        return (cond[:, :, : r + 1] if cond is not None else None), y

    def logits_at(self, codes: Tensor, r: int, c: int, state: tuple[Tensor | None, Tensor | None]) -> Tensor:
        """Logits ``(B, K)`` at ``(r, c)``: the whole net on rows ``<= r`` (nothing looks down)."""
        return self(codes[:, : r + 1], *state)[:, :, r, c]
