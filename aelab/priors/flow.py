"""A learnable autoregressive-flow prior (the "AF prior" of the variational lossy autoencoder)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal, TransformedDistribution

from aelab.flows.made import MADE
from aelab.flows.transforms import MAFTransform, stack_flow
from aelab.priors.base import PriorConfig
from aelab.registry import PRIORS


@PRIORS.register("flow")
class FlowPrior(nn.Module):
    """p(z): N(0, I) pushed through learnable MAF steps, trained jointly with the model.

    ``log_prob`` is one parallel MADE pass per step (it is what the KL term evaluates every
    step); ``sample`` is sequential, D passes per step (only needed to generate). No analytic KL
    exists against a flow, so the KL term takes its Monte-Carlo path ``log q(z) - log p(z)``.
    Select it with ``--set model.prior.name=flow`` (and ``model.prior.flows``, ``model.prior.hidden``).

    Args:
        latent_dim: D.
        cfg: ``flows`` (number of steps) and ``hidden`` (MADE width) are read from it.

    References:
        Chen et al., "Variational Lossy Autoencoder", ICLR 2017;
        Papamakarios et al., "Masked Autoregressive Flow for Density Estimation", NeurIPS 2017.

    Example:
        >>> prior = FlowPrior(4, PriorConfig(name="flow", flows=2, hidden=16))
        >>> pz = prior()
        >>> z = pz.sample((3,))
        >>> z.shape, pz.log_prob(z).shape
        (torch.Size([3, 4]), torch.Size([3]))
    """

    def __init__(self, latent_dim: int, cfg: PriorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PriorConfig(name="flow")
        if cfg.flows < 0 or cfg.hidden < 1:
            raise ValueError(f"flow prior needs prior.flows >= 0 and prior.hidden >= 1, "
                             f"got flows={cfg.flows}, hidden={cfg.hidden}")
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)
        self.flows = nn.ModuleList(MADE(latent_dim, cfg.hidden) for _ in range(cfg.flows))

    def forward(self) -> TransformedDistribution:
        base = Independent(Normal(self.loc, self.scale, validate_args=False), 1)
        return TransformedDistribution(base, stack_flow(self.flows, MAFTransform), validate_args=False)
