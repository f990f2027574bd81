"""Learned autoregressive priors over grids of discrete codes (VQ-VAE and VQ-VAE-2).

A VQ-VAE turns an image into a grid of code indices ``(H, W)`` in ``[0, K)``; it generates by
sampling such a grid from a prior fitted afterwards to the codes of the training set. The priors
here factorise ``p(codes) = prod_i p(code_i | codes_<i)`` in raster order:

* ``pixelcnn``: the gated PixelCNN (:class:`aelab.nn.pixelcnn.GatedPixelCNN`);
* ``pixelsnail``: gated layers plus strictly causal self-attention (:class:`aelab.nn.attention.PixelSNAIL`);
* ``vqvae2``: VQ-VAE-2's pair ``p(top) p(bottom | top)``: a PixelSNAIL over the top grid and a
  PixelCNN over the bottom grid conditioned on the whole top grid (:class:`VQVAE2Prior`).

Either level can be class-conditional (``num_classes``), and a PixelCNN or PixelSNAIL can be
conditioned on another code grid of any size (``cond_codes``, ``cond_shape``): it is embedded,
convolved, resized to this grid by bilinear interpolation and fed to every gated layer.

Every prior has ``log_prob`` (all positions in parallel, teacher forcing), ``loss(x, step)`` for
the model-agnostic :class:`aelab.training.trainer.Trainer`, ancestral ``sample`` with a
temperature, and ``save_pretrained`` / :func:`load_code_prior` (``config.json`` +
``model.safetensors``). :class:`CodeDataset` serves code grids to the trainer and
:func:`train_code_prior` runs it with :func:`evaluate_code_prior` as the per-epoch evaluation.

The trainer passes ``x`` alone to ``loss``, so a batch that carries more than the codes (labels,
the top grid) arrives as one int64 row per example, ``[y?, cond?, codes]`` flattened
(:func:`pack_codes`); each prior unpacks it from its own config.

References:
    van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017;
    van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016;
    Chen et al., "PixelSNAIL: An Improved Autoregressive Generative Model", ICML 2018;
    Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.

Example:
    >>> prior = build_code_prior("pixelcnn", num_codes=8, grid_shape=(3, 4), channels=8, layers=2)
    >>> codes = prior.sample(5, generator=torch.Generator().manual_seed(0))
    >>> codes.shape, prior.log_prob(codes).shape
    (torch.Size([5, 3, 4]), torch.Size([5]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent
from torch.nn import functional as F

from aelab.config import default_config, from_dict, load_json, resolve_config
from aelab.data.base import ImageDataset
from aelab.models.base import CONFIG_NAME, load_weights, read_saved_config, save_module
from aelab.nn.attention import PixelSNAIL
from aelab.nn.modes import eval_mode
from aelab.nn.pixelcnn import GatedPixelCNN, check_kernel_size
from aelab.outputs import LossOutput
from aelab.registry import CODE_PRIORS

__all__ = [
    "CodeConditioner",
    "CodeDataset",
    "CodePrior",
    "CodePriorConfig",
    "PixelCNNPriorConfig",
    "PixelSNAILPriorConfig",
    "VQVAE2Prior",
    "VQVAE2PriorConfig",
    "build_code_prior",
    "code_prior_config",
    "evaluate_code_prior",
    "load_code_prior",
    "pack_codes",
    "train_code_prior",
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


def _default_top() -> PixelSNAILPriorConfig:
    return PixelSNAILPriorConfig(grid_shape=(4, 4))


@dataclass
class VQVAE2PriorConfig:
    """The ``vqvae2`` prior: a PixelSNAIL over the top grid, a PixelCNN over the bottom grid.

    The bottom prior's ``cond_codes`` and ``cond_shape`` are derived from the top config (they
    are overwritten with ``top.num_codes`` and ``top.grid_shape``), so overriding the top grid
    never leaves the two inconsistent.

    Attributes:
        top: the top-level prior.
        bottom: the bottom-level prior, conditioned on the top codes.
    """

    top: PixelSNAILPriorConfig = field(default_factory=_default_top)
    bottom: PixelCNNPriorConfig = field(default_factory=PixelCNNPriorConfig)

    def __post_init__(self) -> None:
        self.bottom = dataclasses.replace(self.bottom, cond_codes=self.top.num_codes,
                                          cond_shape=self.top.grid_shape)


# --- the registry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CodePriorSpec:
    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]


def register_code_prior(name: str, config_cls: type) -> Callable:
    """Register ``build(cfg) -> prior`` under ``name`` in :data:`aelab.registry.CODE_PRIORS`."""

    def deco(build: Callable) -> Callable:
        CODE_PRIORS.register(name, help=build.__doc__)(CodePriorSpec(name, config_cls, build))
        return build

    return deco


def code_prior_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The default config of code prior ``name``, updated with a (nested) mapping.

    Example:
        >>> code_prior_config("vqvae2", {"top": {"num_codes": 64}}).bottom.cond_codes
        64
    """
    return default_config(CODE_PRIORS.get(name).config_cls, overrides, "prior")


def build_code_prior(name: str, cfg: Any = None, **overrides: Any) -> CodePrior | VQVAE2Prior:
    """Build registered code prior ``name`` from its config (defaults if ``None``) and overrides.

    Example:
        >>> build_code_prior("pixelsnail", num_codes=16, grid_shape=(3, 3), channels=8, heads=2).name
        'pixelsnail'
    """
    spec: CodePriorSpec = CODE_PRIORS.get(name)
    cfg = resolve_config(spec.config_cls, cfg, overrides, "prior", f"code prior {name!r}")
    prior = spec.build(cfg)
    prior.name = name
    return prior


# --- packing a batch into the one tensor the trainer hands to loss() ------------------------
def pack_codes(codes: Tensor, cond: Tensor | None = None, y: Tensor | None = None) -> Tensor:
    """One int64 row per example: ``[y, cond.flatten(), codes.flatten()]`` (absent parts left out).

    Example:
        >>> pack_codes(torch.tensor([[[1, 2]]]), cond=torch.tensor([[[7]]]), y=torch.tensor([3]))
        tensor([[3, 7, 1, 2]])
    """
    parts = [] if y is None else [y.long().reshape(-1, 1)]
    if cond is not None:
        parts.append(cond.long().flatten(1))
    parts.append(codes.long().flatten(1))
    return torch.cat(parts, dim=1)


def _unpack(x: Tensor, grid: tuple[int, int], cond_shape: tuple[int, int] | None,
            with_y: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Inverse of :func:`pack_codes` for a known layout; a ``(B, H, W)`` grid passes through."""
    size = grid[0] * grid[1]
    if x.dim() == 3:
        if cond_shape is not None or with_y:
            raise ValueError("this prior is conditional: pass a packed batch (see pack_codes), not a bare grid")
        return x, None, None
    n_y = int(with_y)
    n_c = cond_shape[0] * cond_shape[1] if cond_shape is not None else 0
    if x.dim() != 2 or x.shape[1] != n_y + n_c + size:
        raise ValueError(f"expected a packed batch (B, {n_y + n_c + size}) = [labels: {n_y}, conditioning codes: "
                         f"{n_c}, codes: {size}], got shape {tuple(x.shape)}")
    y = x[:, 0] if with_y else None
    cond = x[:, n_y : n_y + n_c].reshape(-1, *cond_shape) if cond_shape is not None else None
    return x[:, n_y + n_c :].reshape(-1, *grid), cond, y


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


class CodePrior(nn.Module):
    """An autoregressive prior over one code grid: a causal network plus optional conditioning.

    Args:
        cfg: the prior's config (kept for ``save_pretrained``).
        net: ``net(codes, cond_map, y) -> logits (B, K, H, W)`` where the logits at raster position
            ``i`` depend on ``codes`` at positions ``< i`` only, with the sampling protocol
            ``state = net.start_row(codes, r, cond_map, y, state)`` (rows in order, ``None`` before
            row 0) and ``net.logits_at(codes, r, c, state)`` (the logits at ``(r, c)`` from the
            codes before it).

    Example:
        >>> prior = build_code_prior("pixelcnn", num_codes=4, grid_shape=(2, 3), channels=8, layers=2,
        ...                          num_classes=10)
        >>> codes = torch.randint(0, 4, (6, 2, 3))
        >>> prior(codes, y=torch.arange(6)).log_prob(codes).shape
        torch.Size([6])
    """

    def __init__(self, cfg: CodePriorConfig, net: nn.Module) -> None:
        super().__init__()
        self.name = ""
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

    def loss(self, x: Tensor, step: int | None = None) -> LossOutput:
        """Mean NLL per grid, for the trainer. ``x``: codes ``(B, H, W)`` or a packed batch (:func:`pack_codes`).

        Terms: ``nll`` (nats per grid) and ``bits_per_code`` (``nll / (H W ln 2)``).
        """
        codes, cond, y = _unpack(x, self.config.grid_shape, self.cond_shape, self.class_conditional)
        nll = -self.log_prob(codes, cond, y)
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

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically); see :func:`load_code_prior`."""
        _save(self, directory, extra_config)


# --- VQ-VAE-2: two levels ---------------------------------------------------------------------
class VQVAE2Prior(nn.Module):
    """VQ-VAE-2's prior ``p(top) p(bottom | top)``: PixelSNAIL on top, conditioned PixelCNN below.

    Trained as one model (the loss is the sum of both NLLs; their parameters are disjoint, so each
    level gets exactly its own gradient). ``sample`` draws the top grid, then the bottom grid given it.

    Args:
        cfg: the two levels' configs.

    References:
        Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.

    Example:
        >>> prior = build_code_prior("vqvae2", top={"num_codes": 8, "grid_shape": (2, 2), "channels": 8,
        ...                          "heads": 2, "blocks": 1}, bottom={"num_codes": 8, "grid_shape": (3, 3),
        ...                          "channels": 8, "layers": 2, "cond_channels": 8})
        >>> top, bottom = prior.sample(4, temperature=0.5)
        >>> top.shape, bottom.shape, prior.log_prob(top, bottom).shape
        (torch.Size([4, 2, 2]), torch.Size([4, 3, 3]), torch.Size([4]))
    """

    def __init__(self, cfg: VQVAE2PriorConfig) -> None:
        super().__init__()
        self.name = ""
        self.config = cfg
        self.top = build_code_prior("pixelsnail", cfg.top)
        self.bottom = build_code_prior("pixelcnn", cfg.bottom)

    @property
    def num_positions(self) -> int:
        return self.top.num_positions + self.bottom.num_positions

    @property
    def class_conditional(self) -> bool:
        return self.top.class_conditional or self.bottom.class_conditional

    @property
    def levels(self) -> tuple[CodePrior, CodePrior]:
        """``(top, bottom)``, e.g. for ``vqvae2_model.attach_prior(*prior.levels)`` (unconditional
        priors: the model passes the top codes as the bottom's ``cond``)."""
        return self.top, self.bottom

    def _labels(self, level: CodePrior, y: Tensor | int | None) -> Tensor | int | None:
        return y if level.class_conditional else None

    def log_prob(self, top: Tensor, bottom: Tensor, y: Tensor | int | None = None) -> Tensor:
        """``log p(top) + log p(bottom | top)`` ``(B,)`` in nats."""
        return self.top.log_prob(top, y=self._labels(self.top, y)) + self.bottom.log_prob(
            bottom, cond=top, y=self._labels(self.bottom, y))

    def loss(self, x: Tensor, step: int | None = None) -> LossOutput:
        """Mean NLL per example of a packed batch ``[y?, top, bottom]`` (:func:`pack_codes` with
        ``codes=bottom, cond=top``). Terms: ``nll_top``, ``nll_bottom`` (nats) and ``bits_per_code``
        over all ``H_t W_t + H_b W_b`` codes."""
        bottom, top, y = _unpack(x, self.bottom.config.grid_shape, self.top.config.grid_shape, self.class_conditional)
        nll_top = -self.top.log_prob(top, y=self._labels(self.top, y))
        nll_bottom = -self.bottom.log_prob(bottom, cond=top, y=self._labels(self.bottom, y))
        nll = nll_top + nll_bottom
        terms = {"nll_top": nll_top.detach().mean(), "nll_bottom": nll_bottom.detach().mean(),
                 "bits_per_code": nll.detach().mean() / (self.num_positions * LN2)}
        return LossOutput(loss=nll.mean(), terms=terms, per_example=nll)

    @torch.no_grad()
    def sample(self, n: int, temperature: float | tuple[float, float] = 1.0, y: Tensor | int | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` pairs ``(top (n, H_t, W_t), bottom (n, H_b, W_b))``; ``temperature``: one for both
        levels or ``(top, bottom)``."""
        t_top, t_bottom = temperature if isinstance(temperature, tuple) else (temperature, temperature)
        top = self.top.sample(n, t_top, y=self._labels(self.top, y), generator=generator)
        bottom = self.bottom.sample(n, t_bottom, cond=top, y=self._labels(self.bottom, y), generator=generator)
        return top, bottom

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically); see :func:`load_code_prior`."""
        _save(self, directory, extra_config)


@register_code_prior("pixelcnn", PixelCNNPriorConfig)
def build_pixelcnn_prior(cfg: PixelCNNPriorConfig) -> CodePrior:
    """Gated PixelCNN over a code grid (van den Oord et al. 2016)."""
    return CodePrior(cfg, GatedPixelCNN(cfg.num_codes, cfg.channels, cfg.layers, cfg.kernel_size,
                                        cfg.num_classes, cfg.cond_channels if cfg.cond_codes else 0))


@register_code_prior("pixelsnail", PixelSNAILPriorConfig)
def build_pixelsnail_prior(cfg: PixelSNAILPriorConfig) -> CodePrior:
    """Gated layers with strictly causal self-attention over a code grid (PixelSNAIL-like, Chen et al. 2018)."""
    return CodePrior(cfg, PixelSNAIL(cfg.num_codes, cfg.grid_shape, cfg.channels, cfg.blocks, cfg.layers, cfg.heads,
                                     cfg.kernel_size, cfg.positional, cfg.num_classes,
                                     cfg.cond_channels if cfg.cond_codes else 0))


@register_code_prior("vqvae2", VQVAE2PriorConfig)
def build_vqvae2_prior(cfg: VQVAE2PriorConfig) -> VQVAE2Prior:
    """VQ-VAE-2 prior: PixelSNAIL over the top codes, PixelCNN over the bottom given the top (Razavi et al. 2019)."""
    return VQVAE2Prior(cfg)


# --- persistence: config.json + model.safetensors, never pickle --------------------------------
def _save(prior: nn.Module, directory: str | Path, extra_config: dict[str, Any] | None) -> None:
    save_module(prior, directory, "prior", extra_config)


def load_code_prior(directory: str | Path, map_location: str = "cpu") -> CodePrior | VQVAE2Prior:
    """Rebuild a saved code prior from ``config.json`` (looked up by name) and load its weights.

    Example:
        >>> import tempfile
        >>> prior = build_code_prior("pixelcnn", num_codes=4, grid_shape=(2, 2), channels=8, layers=1)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     prior.save_pretrained(d)
        ...     load_code_prior(d).config == prior.config
        True
    """
    cfg_path = Path(directory) / CONFIG_NAME
    holds_model = cfg_path.is_file() and "model" in load_json(cfg_path)
    hint = " (it holds a model: train a prior on its codes first)" if holds_model else ""
    meta = read_saved_config(directory, "prior", "not a saved code prior", hint)
    spec: CodePriorSpec = CODE_PRIORS.get(meta["prior"])
    prior = build_code_prior(meta["prior"], from_dict(spec.config_cls, meta["prior_config"], "prior"))
    return load_weights(prior, directory, map_location)


# --- data and training ------------------------------------------------------------------------
class CodeDataset(ImageDataset):
    """A split of code grids for the trainer: ``get_batch`` returns ``(x, y)`` with ``x`` the int64
    codes ``(B, H, W)``, or the packed rows ``[y?, cond?, codes]`` (:func:`pack_codes`) when
    there is a conditioning grid or the labels condition the prior.

    For a VQ-VAE-2 prior pass ``codes=bottom`` and ``cond=top``. Tensors stay where they are (put
    them on the prior's device to train there).

    Args:
        codes: int64 ``(N, H, W)``.
        cond: int64 ``(N, H_c, W_c)`` conditioning codes, or ``None``.
        labels: int64 ``(N,)`` class labels, or ``None`` (``y`` is then ``-1``).
        class_conditional: pack the labels into ``x`` (the prior conditions on them).

    Example:
        >>> ds = CodeDataset(torch.randint(0, 8, (10, 2, 3)), labels=torch.arange(10), class_conditional=True)
        >>> x, y = ds.get_batch(torch.tensor([4, 1]))
        >>> x.shape, y.tolist()
        (torch.Size([2, 7]), [4, 1])
    """

    def __init__(self, codes: Tensor, cond: Tensor | None = None, labels: Tensor | None = None,
                 class_conditional: bool = False) -> None:
        if codes.dim() != 3 or codes.is_floating_point():
            raise ValueError(f"codes must be integer (N, H, W), got {codes.dtype} {tuple(codes.shape)}")
        n = codes.shape[0]
        if cond is not None and (cond.dim() != 3 or cond.shape[0] != n or cond.is_floating_point()):
            raise ValueError(f"cond must be integer (N={n}, H_c, W_c), got {cond.dtype} {tuple(cond.shape)}")
        if labels is not None and (labels.shape != (n,) or labels.is_floating_point()):
            raise ValueError(f"labels must be integer (N={n},), got {labels.dtype} {tuple(labels.shape)}")
        if class_conditional and labels is None:
            raise ValueError("class_conditional needs labels")
        self.codes = codes.long()
        self.cond = cond.long() if cond is not None else None
        self.labels = labels.long() if labels is not None else None
        self.class_conditional = class_conditional
        self.shape = (1, int(codes.shape[1]), int(codes.shape[2]))

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def get_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        y = self.labels[idx] if self.labels is not None else torch.full((len(idx),), -1, dtype=torch.long)
        if self.cond is None and not self.class_conditional:
            return self.codes[idx], y
        cond = self.cond[idx] if self.cond is not None else None
        return pack_codes(self.codes[idx], cond, y if self.class_conditional else None), y

    def subset(self, idx: Tensor) -> CodeDataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return CodeDataset(self.codes[idx], None if self.cond is None else self.cond[idx],
                           None if self.labels is None else self.labels[idx], self.class_conditional)

    def __repr__(self) -> str:
        return f"CodeDataset(n={len(self)}, grid={self.shape[1:]}, cond={self.cond is not None})"


@torch.no_grad()
def evaluate_code_prior(prior: nn.Module, data: ImageDataset, batch_size: int = 500,
                        limit: int | None = None) -> dict[str, float]:
    """Test NLL of a code prior: the mean of each ``loss`` term over the split, plus ``nll``.

    Runs in evaluation mode on the prior's device; ``limit`` evaluates a seeded random subset.

    Returns:
        ``nll``: nats per code grid (both grids for ``vqvae2``), ``bits_per_code``:
        ``nll / (codes per example * ln 2)``, and the prior's other terms (``nll_top``,
        ``nll_bottom`` for ``vqvae2``).

    Example:
        >>> prior = build_code_prior("pixelcnn", num_codes=4, grid_shape=(2, 2), channels=8, layers=1)
        >>> sorted(evaluate_code_prior(prior, CodeDataset(torch.randint(0, 4, (10, 2, 2)))))
        ['bits_per_code', 'nll']
    """
    from aelab.data.base import random_subset
    from aelab.training.batches import eval_batches

    data = random_subset(data, limit, seed=0)  # never the first N: splits may be sorted by label
    device = next(prior.parameters()).device
    sums: dict[str, float] = {}
    n = 0
    with eval_mode(prior):
        for x, _ in eval_batches(data, batch_size):
            out = prior.loss(x.to(device))
            b = x.shape[0]
            sums["nll"] = sums.get("nll", 0.0) + out.per_example.double().sum().item()
            for k, v in out.terms.items():
                if k != "nll":
                    sums[k] = sums.get(k, 0.0) + v.item() * b
            n += b
    return {k: v / max(n, 1) for k, v in sums.items()}


def train_code_prior(prior: CodePrior | VQVAE2Prior, train: CodeDataset, test: CodeDataset | None,
                     cfg: Any = None, run_dir: str | Path | None = None, *, resume: bool = False,
                     on_epoch_end: list | None = None, run_config: dict[str, Any] | None = None) -> dict[str, float]:
    """Fit ``prior`` to code grids with the model-agnostic trainer (schedules, checkpoints, exact resume).

    Each epoch ends with :func:`evaluate_code_prior` on ``test`` (``nll`` in nats per grid,
    ``bits_per_code``); ``run_dir`` receives ``metrics.jsonl``, the resumable checkpoint and the
    prior's ``config.json`` + ``model.safetensors`` (:func:`load_code_prior` reads it). Image
    pictures are switched off (a prior has nothing to reconstruct). Give a VQ-VAE run its prior
    in a subdirectory (e.g. ``RUN_DIR/prior``): the run's own ``config.json`` describes the VQ-VAE.

    Args:
        prior: a code prior (e.g. from :func:`build_code_prior`).
        train, test: code splits (``test`` may be ``None``: no evaluation).
        cfg: a :class:`aelab.training.trainer.TrainerConfig` (``None``: its defaults).
        run_dir: output directory (``None``: nothing written).
        resume: continue from ``run_dir``'s checkpoint.
        on_epoch_end: trainer callbacks ``(trainer, metrics)``.
        run_config: more entries for the saved ``config.json`` (e.g. the VQ-VAE run it belongs to).

    Returns:
        The last evaluation metrics.
    """
    from aelab.training.trainer import Trainer, TrainerConfig

    cfg = dataclasses.replace(cfg or TrainerConfig(), images=False)
    if isinstance(train, CodeDataset) and train.class_conditional != prior.class_conditional:
        raise ValueError(f"the prior is {'' if prior.class_conditional else 'not '}class-conditional but the data set "
                         f"has class_conditional={train.class_conditional}")
    evaluate = partial(evaluate_code_prior, batch_size=cfg.eval_batch_size, limit=cfg.eval_limit)
    trainer = Trainer(prior, train, test, cfg, run_dir, evaluate=evaluate, on_epoch_end=on_epoch_end,
                      run_config=run_config)
    return trainer.fit(resume=resume)
