"""Distributions torch does not ship, used as the common currency between parts."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints


class PointMass(Distribution):
    """A deterministic "distribution" at ``loc``: what a deterministic encoder returns.

    ``rsample`` returns ``loc`` itself, so gradients flow straight through, and a deterministic
    autoencoder fits the same ``q(z|x) -> z -> p(x|z)`` pipeline as a VAE.

    Args:
        loc: the point, with batch shape ``loc.shape[:-event_dim]``.
        event_dim: how many trailing dimensions form one event.

    Example:
        >>> q = PointMass(torch.ones(2, 3))
        >>> q.rsample().shape, q.mean.sum().item()
        (torch.Size([2, 3]), 6.0)
    """

    arg_constraints = {"loc": constraints.real}
    has_rsample = True

    def __init__(self, loc: Tensor, event_dim: int = 1, validate_args: bool | None = False) -> None:
        self.loc = loc
        cut = loc.dim() - event_dim
        super().__init__(loc.shape[:cut], loc.shape[cut:], validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return torch.zeros_like(self.loc)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        return self.loc.expand(torch.Size(sample_shape) + self.loc.shape)

    def log_prob(self, value: Tensor) -> Tensor:
        eq = (value == self.loc).flatten(start_dim=value.dim() - len(self.event_shape)).all(-1)
        return torch.where(eq, 0.0, float("-inf"))

    def entropy(self) -> Tensor:
        return torch.zeros(self.batch_shape, device=self.loc.device)
