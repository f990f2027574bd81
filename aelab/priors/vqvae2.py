"""VQ-VAE-2's prior over its two code grids: ``p(top) p(bottom | top)`` (registered as ``vqvae2_prior``).

A PixelSNAIL over the top grid and a PixelCNN over the bottom grid conditioned on the whole top
grid (:mod:`aelab.priors.pixelcnn` holds both), trained as one ordinary registered
:class:`~aelab.protocol.Model` (family ``code prior``) on :class:`aelab.data.codes.CodeDataset`
batches (``x`` the bottom codes, ``cond`` the top codes, ``y`` the labels).

References:
    Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.outputs import LossOutput
from aelab.priors.pixelcnn import (
    CODE_PRIOR,
    LN2,
    CodePrior,
    PixelCNNPrior,
    PixelCNNPriorConfig,
    PixelSNAILPrior,
    PixelSNAILPriorConfig,
)
from aelab.protocol import Capabilities, Model, register_model

__all__ = ["VQVAE2Prior", "VQVAE2PriorConfig"]


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


# --- VQ-VAE-2: two levels ---------------------------------------------------------------------
@register_model("vqvae2_prior", VQVAE2PriorConfig, **CODE_PRIOR)
class VQVAE2Prior(Model):
    """VQ-VAE-2's prior ``p(top) p(bottom | top)``: PixelSNAIL on top, conditioned PixelCNN below.

    Trained as one model (the loss is the sum of both NLLs; their parameters are disjoint, so each
    level gets exactly its own gradient). ``sample`` draws the top grid, then the bottom grid given it.

    Args:
        cfg: the two levels' configs.

    References:
        Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2", NeurIPS 2019.

    Example:
        >>> from aelab.protocol import build_model
        >>> prior = build_model("vqvae2_prior", top={"num_codes": 8, "grid_shape": (2, 2), "channels": 8,
        ...                          "heads": 2, "blocks": 1}, bottom={"num_codes": 8, "grid_shape": (3, 3),
        ...                          "channels": 8, "layers": 2, "cond_channels": 8})
        >>> top, bottom = prior.sample(4, temperature=0.5)
        >>> top.shape, bottom.shape, prior.log_prob(top, bottom).shape
        (torch.Size([4, 2, 2]), torch.Size([4, 3, 3]), torch.Size([4]))
    """

    capabilities = Capabilities(sample=True)

    def __init__(self, cfg: VQVAE2PriorConfig) -> None:
        super().__init__()
        self.config = cfg
        self.top = PixelSNAILPrior(cfg.top)
        self.bottom = PixelCNNPrior(cfg.bottom)

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

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        """Mean NLL per example of ``batch.x`` (the bottom codes) and ``batch.cond`` (the top codes),
        with ``batch.y`` the labels for class-conditional levels. Terms: ``nll_top``,
        ``nll_bottom`` (nats) and ``bits_per_code`` over all ``H_t W_t + H_b W_b`` codes."""
        bottom, top, y = batch.x, batch.cond, batch.y
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
