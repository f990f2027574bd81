"""Convolutional encoders and decoders with residual blocks that keep a spatial latent grid.

Unlike :mod:`aelab.nn.backbones`, which flattens to a vector code, these keep feature maps: an
encoder halves the resolution once per stride-2 stage and then refines with residual blocks; the
decoder mirrors it. As in :class:`aelab.nn.backbones.ConvDecoder`, the decoder is given the sizes
recorded on the way down and recovers odd sizes exactly with ``output_padding``, so any H x W
round-trips (28 -> 14 -> 7 -> 14 -> 28; 12 x 10 -> 6 x 5 -> 3 x 2 -> 6 x 5 -> 12 x 10).

References:
    van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017 (the VQ-VAE
    architecture: strided 4x4 convolutions, residual blocks ReLU-3x3-ReLU-1x1);
    He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from aelab.nn.backbones import _conv_sizes


def conv_sizes(h: int, w: int, stages: int) -> list[tuple[int, int]]:
    """Feature-map sizes after 0, 1, ..., ``stages`` stride-2 stages (k=4, s=2, p=1 floors odd sizes).

    Example:
        >>> conv_sizes(28, 27, 2)
        [(28, 27), (14, 13), (7, 6)]
    """
    return _conv_sizes(h, w, stages)


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``, channels preserved.

    Args:
        channels: input and output channels.
        hidden: channels of the 3x3 convolution's output (the bottleneck).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def _res_stack(channels: int, blocks: int, hidden: int) -> list[nn.Module]:
    return [ResidualBlock(channels, hidden) for _ in range(blocks)]


class ResNetEncoder(nn.Module):
    """Stride-2 4x4 convolutions (one per entry of ``channels``), a 3x3 convolution, residual blocks
    and a final ReLU: ``(B, C, H, W) -> (B, channels[-1], H / 2^s, W / 2^s)`` (floored).

    Args:
        in_channels: input channels C.
        channels: output channels of each downsampling stage.
        res_blocks: number of residual blocks after the last stage.
        res_channels: hidden width of each residual block.

    Example:
        >>> import torch
        >>> enc = ResNetEncoder(1, (8, 16), res_blocks=1, res_channels=4)
        >>> enc(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 16, 7, 7])
    """

    def __init__(self, in_channels: int, channels: Sequence[int], res_blocks: int, res_channels: int) -> None:
        super().__init__()
        if not channels:
            raise ValueError("a ResNet encoder needs at least one downsampling stage")
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip([in_channels, *channels[:-1]], channels)):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1))
        c = channels[-1]
        layers += [nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), *_res_stack(c, res_blocks, res_channels), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResNetDecoder(nn.Module):
    """The mirror of :class:`ResNetEncoder`: a 3x3 convolution, residual blocks, then one stride-2
    4x4 transposed convolution per stage back to the recorded sizes.

    Args:
        in_channels: channels of the latent grid.
        out_channels: channels of the output (e.g. image channels times likelihood parameters).
        channels: the encoder's stage channels (in encoder order; used reversed).
        sizes: the encoder's feature-map sizes, input first (``conv_sizes(H, W, len(channels))``).
        res_blocks: number of residual blocks before upsampling.
        res_channels: hidden width of each residual block.

    Example:
        >>> import torch
        >>> dec = ResNetDecoder(4, 1, (8, 16), conv_sizes(12, 10, 2), res_blocks=1, res_channels=4)
        >>> dec(torch.zeros(2, 4, 3, 2)).shape
        torch.Size([2, 1, 12, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int],
                 sizes: Sequence[tuple[int, int]], res_blocks: int, res_channels: int) -> None:
        super().__init__()
        if len(sizes) != len(channels) + 1:
            raise ValueError(f"{len(channels)} stages need {len(channels) + 1} sizes, got {len(sizes)}")
        chans = list(reversed(channels))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1),
                                   *_res_stack(chans[0], res_blocks, res_channels)]
        for i, (cin, cout) in enumerate(zip(chans, [*chans[1:], out_channels])):
            (hi, wi), (ho, wo) = sizes[-1 - i], sizes[-2 - i]
            layers += [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1, output_padding=(ho - 2 * hi, wo - 2 * wi))]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
