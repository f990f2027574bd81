"""The inverse-autoregressive-flow latent head: a diagonal Gaussian made richer by IAF steps."""

from __future__ import annotations

from torch import Tensor, nn

from aelab.flows.made import MADE
from aelab.flows.transforms import FlowDistribution, IAFTransform, stack_flow
from aelab.latents.heads import LatentHead, check_scale_param, diagonal_normal
from aelab.nn.linear import Linear


class IAFHead(LatentHead):
    """q(z|x): a diagonal Gaussian pushed through IAF steps conditioned on a context ``h(x)``.

    The encoder features give the base ``N(mu, diag sigma^2)`` and a context vector ``h``; each
    IAF step is a MADE over ``z`` conditioned on ``h``, with the order reversed between steps.
    Returns a :class:`~aelab.flows.transforms.FlowDistribution`: ``rsample`` is one parallel
    pass per step and ``log_prob`` of that sample reads the cached log-determinants (the KL term
    takes its Monte-Carlo path); ``mean`` is the flow image of the base mean, used as the code.
    ``rsample((k,))`` gives ``(k, B, D)`` (the context broadcasts over k), as IWAE needs.

    Args:
        in_features: encoder feature width F.
        latent_dim: code size D.
        flows: number of IAF steps (0: a plain diagonal Gaussian).
        hidden: width of each MADE's hidden layers.
        context: size of the context vector h (0: unconditioned steps).

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016.

    Example:
        >>> import torch
        >>> head = IAFHead(in_features=10, latent_dim=4, flows=2, hidden=16, context=8)
        >>> q = head(torch.randn(3, 10))
        >>> z = q.rsample((5,))
        >>> z.shape, q.log_prob(z).shape, q.mean.shape
        (torch.Size([5, 3, 4]), torch.Size([5, 3]), torch.Size([3, 4]))
    """

    def __init__(self, in_features: int, latent_dim: int, flows: int = 2, hidden: int = 64,
                 context: int = 16, scale: str = "log_sigma") -> None:
        super().__init__()
        self.scale = check_scale_param(scale)
        if flows < 0:
            raise ValueError(f"flows must be >= 0, got {flows}")
        self.latent_dim, self.context_dim = latent_dim, context
        self.linear = Linear(in_features, 2 * latent_dim + context)
        self.flows = nn.ModuleList(MADE(latent_dim, hidden, context=context) for _ in range(flows))

    def forward(self, h: Tensor, step: int | None = None, encoding: bool = False) -> FlowDistribution:
        d = self.latent_dim
        mu, log_sigma, ctx = self.linear(h).split([d, d, self.context_dim], dim=-1)
        # same guard as DiagonalGaussianHead: a bad step must not overflow exp into NaN
        base = diagonal_normal(mu, log_sigma, self.scale)
        return FlowDistribution(base, stack_flow(self.flows, IAFTransform, ctx if self.context_dim else None))
