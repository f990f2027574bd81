"""Normalizing flows: MADE networks and autoregressive transforms (IAF for q(z|x), MAF for p(z)).

Everything here is a ``torch.distributions.transforms.Transform`` or builds one, so a flow
posterior or prior is an ordinary ``TransformedDistribution`` that the shared loss terms score
like any other distribution. Why our own rather than a flow library: see
:mod:`aelab.flows.transforms`.
"""

from aelab.flows.made import MADE, MaskedLinear
from aelab.flows.transforms import (
    AutoregressiveTransform,
    FlowDistribution,
    IAFTransform,
    MAFTransform,
    ReversePermutation,
    stack_flow,
)

__all__ = [
    "MADE",
    "AutoregressiveTransform",
    "FlowDistribution",
    "IAFTransform",
    "MAFTransform",
    "MaskedLinear",
    "ReversePermutation",
    "stack_flow",
]
