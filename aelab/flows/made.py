"""MADE: masked dense layers whose outputs are autoregressive in their inputs.

Every hidden unit gets a *degree* ``k``: it may see inputs ``1..k``. A weight from unit ``a`` to
unit ``b`` is kept only where the degrees allow it (``deg(b) >= deg(a)`` between hidden layers,
``deg(out) > deg(hidden)`` into the outputs), so output ``i`` depends on ``z_<i`` alone, whatever
the weights. A context vector ``h`` (e.g. from the encoder) feeds every hidden unit unmasked: it
is not part of the autoregressive order, so every output may depend on all of it.

References:
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015;
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aelab.nn.linear import Linear, linear

#: output weights start this much smaller than PyTorch's default init, so a flow step starts
#: near the identity (Kingma et al. 2016, sec. 4) while every parameter still gets a gradient
OUTPUT_INIT_SCALE = 1e-2


class MaskedLinear(Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out, in)``.

    The mask is a non-persistent buffer: it is rebuilt from the layer sizes, never saved.

    Example:
        >>> layer = MaskedLinear(3, 2, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
        >>> layer(torch.ones(4, 3)).shape
        torch.Size([4, 2])
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor) -> None:
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask must have shape {(out_features, in_features)}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight * self.mask, self.bias)


def hidden_degrees(features: int, hidden: int, with_context: bool) -> Tensor:
    """Degrees of ``hidden`` units for ``features`` inputs, assigned cyclically (deterministic).

    Degrees run over ``1..D-1`` (a unit of degree D would reach no output). With a context they
    start at 0: degree-0 units see only the context, which is what lets output 1, which may see no
    input at all, still depend on the context.
    """
    low = 0 if with_context else 1
    span = max(features - low, 1)
    return torch.arange(hidden) % span + low


class MADE(nn.Module):
    """An autoregressive network ``(z, h) -> (shift, scale)``, each ``(..., D)``.

    ``shift[..., i]`` and ``scale[..., i]`` depend on ``z[..., :i]`` and on the context ``h`` only.
    The second output is the raw scale parameter; each flow decides how to map it to a positive
    scale (a sigmoid gate for IAF, a bounded ``exp`` for MAF). Layers: a masked input layer (plus
    an unmasked context layer), ``depth - 1`` masked residual blocks, a masked output layer; ELU
    activations. The output layer starts near zero so every flow step starts near its identity.

    Args:
        features: D, the size of ``z``.
        hidden: width of the hidden layers.
        context: size of the context vector ``h`` (0: no context).
        depth: number of masked hidden layers (>= 1).

    References:
        Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.

    Example:
        >>> made = MADE(features=4, hidden=16, context=3)
        >>> shift, scale = made(torch.randn(5, 4), torch.randn(5, 3))
        >>> shift.shape, scale.shape
        (torch.Size([5, 4]), torch.Size([5, 4]))
    """

    def __init__(self, features: int, hidden: int = 64, context: int = 0, depth: int = 2) -> None:
        super().__init__()
        if features < 1 or hidden < 1 or context < 0 or depth < 1:
            raise ValueError(f"MADE needs features >= 1, hidden >= 1, context >= 0, depth >= 1; got "
                             f"features={features}, hidden={hidden}, context={context}, depth={depth}")
        self.features, self.context_features = features, context
        d_in = torch.arange(1, features + 1)  # input i (1-based) has degree i
        d_hid = hidden_degrees(features, hidden, context > 0)
        d_out = torch.cat([d_in, d_in])  # shift and scale for each input
        self.input = MaskedLinear(features, hidden, (d_hid[:, None] >= d_in[None, :]).float())
        self.context = Linear(context, hidden, bias=False) if context else None
        self.blocks = nn.ModuleList(
            MaskedLinear(hidden, hidden, (d_hid[:, None] >= d_hid[None, :]).float()) for _ in range(depth - 1)
        )
        self.output = MaskedLinear(hidden, 2 * features, (d_out[:, None] > d_hid[None, :]).float())
        with torch.no_grad():
            self.output.weight.mul_(OUTPUT_INIT_SCALE)
            self.output.bias.zero_()

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Shift and raw scale for ``z`` ``(..., D)``; ``context`` ``(..., C)`` broadcasts against it.

        A context of shape ``(B, C)`` serves ``z`` of shape ``(k, B, D)``: the k samples of one
        example share its context (IWAE with k samples).
        """
        a = self.input(z)
        if self.context is not None:
            if context is None:
                raise ValueError(f"this MADE was built with a context of size {self.context_features}; pass one")
            a = a + self.context(context)  # (B, H) broadcasts over leading sample dimensions
        elif context is not None:
            raise ValueError("this MADE was built without a context (context=0), but one was passed")
        for block in self.blocks:
            a = a + block(F.elu(a))  # residual: same degrees on both sides, so the mask still holds
        shift, scale = self.output(F.elu(a)).chunk(2, dim=-1)
        return shift, scale
