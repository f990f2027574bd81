"""The VAE with an inverse-autoregressive-flow posterior.

The flow-prior VAE needs no file of its own: it is ``vae`` with ``--set model.prior.name=flow``;
``iaf_vae`` with that prior has both (an IAF posterior and an AF prior, as in VLAE).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from aelab.config import ConfigError
from aelab.latents.iaf import IAFHead
from aelab.models.base import Autoencoder
from aelab.models.vae import VAEConfig, variational_autoencoder
from aelab.protocol import register_model


@dataclass
class IAFVAEConfig(VAEConfig):
    """Attributes:
    flows: number of IAF steps in q(z|x).
    flow_hidden: width of each step's MADE hidden layers.
    context_dim: size of the context vector h(x) that conditions every step (0: none).
    free_bits_mode: ``total``, the only mode for a flow posterior (its KL does not split over
        dimensions).
    """

    flows: int = 2
    flow_hidden: int = 64
    context_dim: int = 16
    free_bits_mode: str = "total"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.free_bits > 0 and self.free_bits_mode != "total":
            raise ConfigError(f"model.free_bits_mode: an IAF posterior has no per-dimension KL, so free bits "
                              f"apply to the total; got {self.free_bits_mode!r}, use 'total'")


@register_model("iaf_vae", IAFVAEConfig)
def iaf_vae(cfg: IAFVAEConfig) -> Autoencoder:
    """VAE with an IAF posterior q(z|x) (context-conditioned MADE steps); KL by Monte Carlo.

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016; with ``model.prior.name=flow``: Chen et al., "Variational Lossy
        Autoencoder", ICLR 2017.

    Example:
        >>> import torch
        >>> from aelab.models import build_model
        >>> model = build_model("iaf_vae", image_shape=(1, 8, 8), latent_dim=4, flows=2, flow_hidden=16)
        >>> from aelab.batch import Batch
        >>> model.loss(Batch(torch.rand(3, 1, 8, 8))).per_example.shape
        torch.Size([3])
    """
    # no analytic KL exists for a flow posterior: the recipe's KL falls back to log q(z) - log p(z)
    return variational_autoencoder(cfg, partial(IAFHead, latent_dim=cfg.latent_dim, flows=cfg.flows,
                                                hidden=cfg.flow_hidden, context=cfg.context_dim,
                                                scale=cfg.posterior_scale))
