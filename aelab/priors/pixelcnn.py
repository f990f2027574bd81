"""Learned autoregressive priors over grids of discrete codes (VQ-VAE and VQ-VAE-2).

A VQ-VAE turns an image into a grid of code indices ``(H, W)`` in ``[0, K)``; it generates by
sampling such a grid from a prior fitted afterwards to the codes of the training set. The priors
here factorise ``p(codes) = prod_i p(code_i | codes_<i)`` in raster order:

* ``pixelcnn``: the gated PixelCNN (:class:`aelab.nn.pixelcnn.GatedPixelCNN`);
* ``pixelsnail``: gated layers plus strictly causal self-attention (:class:`aelab.nn.attention.PixelSNAIL`);
* ``vqvae2_prior`` (:mod:`aelab.priors.vqvae2`): VQ-VAE-2's pair ``p(top) p(bottom | top)`` of
  the two.

Either level can be class-conditional (``num_classes``), and a PixelCNN or PixelSNAIL can be
conditioned on another code grid of any size (``cond_codes``, ``cond_shape``): it is embedded,
convolved, resized to this grid by bilinear interpolation and fed to every gated layer.

Every prior is an ordinary registered :class:`~aelab.protocol.Model` (family ``code prior``):
``log_prob`` (all positions in parallel, teacher forcing), ``loss(batch, step)`` on the
:class:`~aelab.batch.Batch` structures of :class:`aelab.data.codes.CodeDataset` (``x`` the codes,
``cond`` the conditioning grid, ``y`` the labels) for the model-agnostic trainer, ancestral
``sample`` with a temperature, and ``save_pretrained`` / :func:`aelab.protocol.from_pretrained`.
Its per-epoch evaluation is the test NLL (:func:`aelab.metrics.evaluation.code_prior_evaluation`).

References:
    van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017;
    van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016;
    Chen et al., "PixelSNAIL: An Improved Autoregressive Generative Model", ICML 2018;
    Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.

Example:
    >>> from aelab.protocol import build_model
    >>> prior = build_model("pixelcnn", num_codes=8, grid_shape=(3, 4), channels=8, layers=2)
    >>> codes = prior.sample(5, generator=torch.Generator().manual_seed(0))
    >>> codes.shape, prior.log_prob(codes).shape
    (torch.Size([5, 3, 4]), torch.Size([5]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent
from torch.nn import functional as F

from aelab.batch import Batch
from aelab.nn.attention import PixelSNAIL
from aelab.nn.pixelcnn import GatedPixelCNN, check_kernel_size
from aelab.outputs import LossOutput
from aelab.protocol import Capabilities, Model, model_config, register_model

__all__ = [
    "CODE_PRIOR",
    "LN2",
    "CodeConditioner",
    "CodePrior",
    "CodePriorConfig",
    "PixelCNNPrior",
    "PixelCNNPriorConfig",
    "PixelSNAILPrior",
    "PixelSNAILPriorConfig",
    "code_prior_config",
]

LN2 = math.log(2.0)



# --- configs ----------------------------------------------------------------------------------
@dataclass
class CodePriorConfig:
    """What every autoregressive code prior shares.

    Attributes:
        num_codes: K, the codebook size; codes are in ``[0, K)``.
        grid_shape: ``(H, W)`` of the code grid (filled from the VQ-VAE by the CLI).
        channels: width of the network.
        layers: gated PixelCNN layers (``pixelsnail``: per attention block).
        kernel_size: odd size of the masked convolutions.
        num_classes: class-conditional prior over this many labels (0: unconditional).
        cond_codes: codebook size of a conditioning code grid (VQ-VAE-2's top codes for the
            bottom prior; 0: none).
        cond_shape: ``(H, W)`` of the conditioning grid (any size; it is resized to ``grid_shape``).
        cond_channels: width of the conditioning network.
    """

    num_codes: int = 512
    grid_shape: tuple[int, int] = (7, 7)
    channels: int = 128
    layers: int = 10
    kernel_size: int = 5
    num_classes: int = 0
    cond_codes: int = 0
    cond_shape: tuple[int, int] = (0, 0)
    cond_channels: int = 64

    def __post_init__(self) -> None:
        if self.num_codes < 1 or self.channels < 1 or self.layers < 0:
            raise ValueError(f"num_codes and channels must be >= 1 and layers >= 0, "
                             f"got {self.num_codes}, {self.channels}, {self.layers}")
        if min(self.grid_shape) < 1:
            raise ValueError(f"grid_shape must be positive, got {self.grid_shape}")
        check_kernel_size(self.kernel_size)
        if self.num_classes < 0 or self.cond_codes < 0:
            raise ValueError("num_classes and cond_codes must be >= 0")
        if self.cond_codes and (min(self.cond_shape) < 1 or self.cond_channels < 1):
            raise ValueError(f"a conditioning grid (cond_codes={self.cond_codes}) needs a positive cond_shape "
                             f"and cond_channels, got {self.cond_shape} and {self.cond_channels}")


@dataclass
class PixelCNNPriorConfig(CodePriorConfig):
    """The ``pixelcnn`` prior: all fields of :class:`CodePriorConfig` (``layers >= 1``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 1:
            raise ValueError(f"pixelcnn needs layers >= 1, got {self.layers}")


@dataclass
class PixelSNAILPriorConfig(CodePriorConfig):
    """The ``pixelsnail`` prior: :class:`CodePriorConfig` plus attention.

    Attributes:
        layers: gated residual layers in each block.
        kernel_size: odd size of the masked convolutions.
        blocks: attention blocks.
        heads: attention heads (``channels`` must be a multiple).
        positional: ``learned`` table of ``grid_shape`` or ``fixed`` 2-D sinusoids.
    """

    layers: int = 2
    kernel_size: int = 3
    blocks: int = 2
    heads: int = 4
    positional: Literal["learned", "fixed"] = "learned"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 0 or self.heads < 1 or self.channels % self.heads:
            raise ValueError(f"pixelsnail needs blocks >= 0, heads >= 1 and channels a multiple of heads, "
                             f"got blocks={self.blocks}, heads={self.heads}, channels={self.channels}")


# registry entries of the code priors: the test NLL each epoch, no pictures, sized by the VQ model
CODE_PRIOR = {"family": "code prior", "evaluation": "code_prior", "figures": None, "fit_to_data": None}


def code_prior_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The default config of code prior ``name``, updated with a (nested) mapping.

    Example:
        >>> code_prior_config("vqvae2_prior", {"top": {"num_codes": 64}}).bottom.cond_codes
        64
    """
    return model_config(name, overrides)


def _draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One code per row of ``logits`` ``(n, K)`` from softmax(logits / T); T = 0 is the argmax."""
    if temperature == 0:
        return logits.argmax(dim=1)
    probs = torch.softmax(logits.float() / temperature, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_temperature(temperature: float) -> None:
    if not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")


# --- the prior over one grid ------------------------------------------------------------------
class CodeConditioner(nn.Module):
    """A conditioning code grid ``(B, H_c, W_c)`` -> feature map ``(B, C, H, W)`` on the prior's grid.

    Embedding, 3x3 convolution at the conditioning resolution, bilinear resize to ``(H, W)``, 3x3
    convolution at the target resolution (to smooth what interpolation leaves). Unmasked: the
    conditioning grid is known in full, so every position may see all of it.

    Example:
        >>> CodeConditioner(16, 8, (7, 7))(torch.randint(0, 16, (2, 3, 3))).shape
        torch.Size([2, 8, 7, 7])
    """

    def __init__(self, num_codes: int, channels: int, out_shape: tuple[int, int]) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.embed = nn.Embedding(num_codes, channels)
        self.inner = nn.Conv2d(channels, channels, 3, padding=1)
        self.outer = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, codes: Tensor) -> Tensor:
        e = self.inner(self.embed(codes).permute(0, 3, 1, 2))
        e = F.interpolate(F.relu(e), size=self.out_shape, mode="bilinear", align_corners=False)
        return self.outer(e)


class CodePrior(Model):
    """An autoregressive prior over one code grid: a causal network plus optional conditioning.

    Args:
        cfg: the prior's config (kept for ``save_pretrained``).
        net: ``net(codes, cond_map, y) -> logits (B, K, H, W)`` where the logits at raster position
            ``i`` depend on ``codes`` at positions ``< i`` only, with the sampling protocol
            ``state = net.start_row(codes, r, cond_map, y, state)`` (rows in order, ``None`` before
            row 0) and ``net.logits_at(codes, r, c, state)`` (the logits at ``(r, c)`` from the
            codes before it).

    Example:
        >>> from aelab.protocol import build_model
        >>> prior = build_model("pixelcnn", num_codes=4, grid_shape=(2, 3), channels=8, layers=2,
        ...                          num_classes=10)
        >>> codes = torch.randint(0, 4, (6, 2, 3))
        >>> prior(codes, y=torch.arange(6)).log_prob(codes).shape
        torch.Size([6])
    """

    capabilities = Capabilities(sample=True)

    def __init__(self, cfg: CodePriorConfig, net: nn.Module) -> None:
        super().__init__()
        self.config = cfg
        self.net = net
        self.conditioner = (CodeConditioner(cfg.cond_codes, cfg.cond_channels, cfg.grid_shape)
                            if cfg.cond_codes else None)

    @property
    def num_positions(self) -> int:
        """H * W: the number of codes one log-probability sums over."""
        return self.config.grid_shape[0] * self.config.grid_shape[1]

    @property
    def class_conditional(self) -> bool:
        return self.config.num_classes > 0

    @property
    def levels(self) -> tuple[CodePrior]:
        """``(self,)``: the one level this prior models (see :attr:`VQVAE2Prior.levels`)."""
        return (self,)

    @property
    def cond_shape(self) -> tuple[int, int] | None:
        """The conditioning grid's shape, or ``None`` for a prior without one."""
        return tuple(self.config.cond_shape) if self.config.cond_codes else None

    def _condition(self, n: int, cond: Tensor | None, y: Tensor | int | None,
                   device: torch.device) -> tuple[Tensor | None, Tensor | None]:
        """Validate ``cond`` and ``y`` for ``n`` examples; the conditioning feature map and labels."""
        cfg = self.config
        if self.conditioner is None:
            if cond is not None:
                raise ValueError("this prior has no conditioning grid (cond_codes=0), but cond was passed")
            cond_map = None
        else:
            if cond is None:
                raise ValueError(f"this prior is conditioned on a {cfg.cond_shape} grid of {cfg.cond_codes} codes: "
                                 "pass cond")
            if cond.dim() == 2:
                cond = cond.expand(n, -1, -1)
            if tuple(cond.shape) != (n, *cfg.cond_shape):
                raise ValueError(f"cond must have shape {(n, *cfg.cond_shape)}, got {tuple(cond.shape)}")
            cond_map = self.conditioner(cond)
        if not self.class_conditional:
            if y is not None:
                raise ValueError("this prior is not class-conditional (num_classes=0), but labels were passed")
            return cond_map, None
        if y is None:
            raise ValueError(f"this prior is class-conditional ({cfg.num_classes} classes): pass labels y")
        y = torch.as_tensor(y, dtype=torch.long, device=device).expand(n)
        if y.min() < 0 or y.max() >= cfg.num_classes:
            raise ValueError(f"labels must be in [0, {cfg.num_classes}), got {y.min().item()}..{y.max().item()}")
        return cond_map, y

    def _check_codes(self, codes: Tensor) -> None:
        grid = tuple(self.config.grid_shape)
        if codes.dim() != 3 or tuple(codes.shape[1:]) != grid:
            raise ValueError(f"codes must have shape (B, {grid[0]}, {grid[1]}), got {tuple(codes.shape)}")
        if codes.dtype != torch.long:
            raise ValueError(f"codes must be int64, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.num_codes):
            raise ValueError(f"codes must lie in [0, {self.config.num_codes})")

    def logits(self, codes: Tensor, cond: Tensor | None = None, y: Tensor | int | None = None) -> Tensor:
        """Teacher-forced logits ``(B, K, H, W)`` of p(code_i | codes_<i, cond, y) at every position."""
        self._check_codes(codes)
        cond_map, y = self._condition(codes.shape[0], cond, y, codes.device)
        return self.net(codes, cond_map, y)

    def forward(self, codes: Tensor, cond: Tensor | None = None, y: Tensor | int | None = None) -> Distribution:
        """The teacher-forced distribution: ``Independent(Categorical)`` with event shape ``(H, W)``.

        Its ``log_prob(codes)`` is ``log p(codes)``; it is a valid distribution over grids only
        through :meth:`sample` (each factor conditions on the codes passed here).
        """
        logits = self.logits(codes, cond, y).permute(0, 2, 3, 1)  # (B, H, W, K)
        return Independent(Categorical(logits=logits, validate_args=False), 2, validate_args=False)

    def log_prob(self, codes: Tensor, cond: Tensor | None = None, y: Tensor | int | None = None) -> Tensor:
        """``log p(codes | cond, y)`` ``(B,)`` in nats: the sum of the H x W categorical log-probabilities."""
        logits = self.logits(codes, cond, y)
        # float32 even under bf16 autocast: the sum over H x W log-probabilities needs the precision
        return -F.cross_entropy(logits.float(), codes, reduction="none").flatten(1).sum(1)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        """Mean NLL per grid of ``batch.x`` (codes ``(B, H, W)``) given ``batch.cond`` (a conditioning
        grid) and, for a class-conditional prior, ``batch.y``.

        Terms: ``nll`` (nats per grid) and ``bits_per_code`` (``nll / (H W ln 2)``).
        """
        nll = -self.log_prob(batch.x, batch.cond, batch.y if self.class_conditional else None)
        mean = nll.detach().mean()
        return LossOutput(loss=nll.mean(), terms={"nll": mean, "bits_per_code": mean / (self.num_positions * LN2)},
                          per_example=nll)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, cond: Tensor | None = None, y: Tensor | int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling in raster order: ``n`` grids ``(n, H, W)`` int64.

        Position ``(r, c)`` is drawn from softmax(logits / ``temperature``); ``temperature=0``
        takes the most likely code (greedy decoding). The network computes only what each position
        needs: for the PixelCNN, the vertical stack on one row per row (the rows above are cached)
        and the horizontal stack over the row's columns ``<= c`` per position; for PixelSNAIL, the
        whole net on rows ``<= r``.

        Args:
            n: number of grids.
            temperature: >= 0; below 1 sharpens, 0 is greedy.
            cond: the conditioning grid ``(n, H_c, W_c)`` (or one ``(H_c, W_c)`` for all).
            y: labels ``(n,)`` or one label for all.
            generator: the random stream (on the prior's device); ``None``: torch's global one.
        """
        _check_temperature(temperature)
        device = next(self.parameters()).device
        cond_map, y = self._condition(n, cond, y, device)
        height, width = self.config.grid_shape
        codes = torch.zeros(n, height, width, dtype=torch.long, device=device)
        state = None
        for r in range(height):
            state = self.net.start_row(codes, r, cond_map, y, state)
            for c in range(width):
                codes[:, r, c] = _draw(self.net.logits_at(codes, r, c, state), temperature, generator)
        return codes


@register_model("pixelcnn", PixelCNNPriorConfig, **CODE_PRIOR)
class PixelCNNPrior(CodePrior):
    """Gated PixelCNN over a code grid (van den Oord et al. 2016)."""

    def __init__(self, cfg: PixelCNNPriorConfig) -> None:
        super().__init__(cfg, GatedPixelCNN(cfg.num_codes, cfg.channels, cfg.layers, cfg.kernel_size,
                                            cfg.num_classes, cfg.cond_channels if cfg.cond_codes else 0))


@register_model("pixelsnail", PixelSNAILPriorConfig, **CODE_PRIOR)
class PixelSNAILPrior(CodePrior):
    """Gated layers with strictly causal self-attention over a code grid (PixelSNAIL-like, Chen et al. 2018)."""

    def __init__(self, cfg: PixelSNAILPriorConfig) -> None:
        super().__init__(cfg, PixelSNAIL(cfg.num_codes, cfg.grid_shape, cfg.channels, cfg.blocks, cfg.layers,
                                         cfg.heads, cfg.kernel_size, cfg.positional, cfg.num_classes,
                                         cfg.cond_channels if cfg.cond_codes else 0))
