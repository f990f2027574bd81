"""Encoder and decoder backbones for images of any size.

An encoder maps images ``(B, C, H, W)`` to features ``(B, F)``; a latent head turns those into
q(z|x). A decoder maps codes ``(B, D)`` to likelihood parameters ``(B, C * P, H, W)``. Nothing is
hard-wired to 28x28 or 64x64: the conv stack records its feature-map sizes on the way down and the
decoder retraces them exactly (``output_padding`` restores odd sizes).

A registered encoder declares its structure with ``dense_layers()``: the layers it applies to the
flattened input when it is a chain of dense layers and elementwise activations, else ``None``
(the contractive penalty's closed form is read from it, see ``Autoencoder.code_layer``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from aelab.nn.linear import Linear
from aelab.registry import BACKBONES, Registry

ACTIVATIONS: Registry = Registry("activation")
for _name, _cls in {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
                    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU}.items():
    ACTIVATIONS.register(_name, help=_cls.__name__)(_cls)


def _gelu_derivative(m: nn.GELU, a: Tensor) -> Tensor:
    if m.approximate == "tanh":  # 0.5 a (1 + tanh(u)), u = sqrt(2/pi) (a + 0.044715 a^3)
        k = math.sqrt(2.0 / math.pi)
        t = torch.tanh(k * (a + 0.044715 * a.pow(3)))
        return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * a * a)
    return 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0))) + a * torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)


def _silu_derivative(m: nn.SiLU, a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


#: ``s'(a)`` of each elementwise activation a backbone or head may use, keyed by module type, as
#: differentiable expressions (the contractive penalty's closed form is trained through them). At
#: a kink the value is the one torch's own backward uses (relu: 0 at 0, leaky relu: the slope).
ACTIVATION_DERIVATIVES: dict[type[nn.Module], Callable[[Any, Tensor], Tensor]] = {
    nn.Identity: lambda m, a: torch.ones_like(a),
    nn.ReLU: lambda m, a: (a > 0).to(a.dtype),
    nn.LeakyReLU: lambda m, a: torch.where(a > 0, torch.ones_like(a), torch.full_like(a, m.negative_slope)),
    nn.ELU: lambda m, a: torch.where(a > 0, torch.ones_like(a), m.alpha * torch.exp(a)),
    nn.GELU: _gelu_derivative,
    nn.SiLU: _silu_derivative,
    nn.Tanh: lambda m, a: 1.0 - torch.tanh(a).pow(2),
    nn.Sigmoid: lambda m, a: torch.sigmoid(a) * (1.0 - torch.sigmoid(a)),
}


def activation_derivative(activation: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """``a -> s'(a)`` for an elementwise activation module of a known type, else ``None``."""
    rule = ACTIVATION_DERIVATIVES.get(type(activation))
    return None if rule is None else lambda a: rule(activation, a)


@dataclass
class BackboneConfig:
    """Encoder/decoder architecture; the decoder mirrors the encoder unless told otherwise.

    Attributes:
        kind: ``mlp`` or ``conv``.
        hidden: MLP layer widths, input side first.
        channels: conv channels, one stride-2 stage each (4x4 kernels).
        fc: conv only: width of a dense layer between the conv stack and the code (0 = none).
        activation: a registered activation name.
        batch_norm: conv only: ``BatchNorm2d`` after every convolution but the decoder's last
            (conv, norm, activation), as in pythae's benchmark networks.
        decoder_channels: conv only: the transposed-conv decoder's channels, dense side first, one
            stride-2 stage each, the last stage producing the likelihood parameters; empty: the
            encoder's channels reversed (the mirror). E.g. pythae's MNIST decoder: ``(1024, 512, 256)``.
        decoder_kernel: conv only: the decoder's kernel size, 4 (each stage doubles the size; the
            start is the sizes halved, rounded down) or 3 (the start is the sizes halved, rounded up:
            28 <- 14 <- 7 <- 4, pythae's).
        decoder_dense_activation: conv only: apply the activation after the decoder's dense layer
            (pythae's decoder feeds its dense output to the first transposed conv unchanged).
    """

    kind: str = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    channels: tuple[int, ...] = (32, 64, 64)
    fc: int = 256
    activation: str = "relu"
    batch_norm: bool = False
    decoder_channels: tuple[int, ...] = ()
    decoder_kernel: int = 4
    decoder_dense_activation: bool = True

    def __post_init__(self) -> None:
        if self.decoder_kernel not in (3, 4):
            raise ValueError(f"model.backbone.decoder_kernel must be 3 or 4, got {self.decoder_kernel}")
        if min((*self.channels, *self.decoder_channels), default=1) < 1:
            raise ValueError(f"model.backbone channels must be >= 1, got channels={self.channels}, "
                             f"decoder_channels={self.decoder_channels}")


def _act(name: str) -> nn.Module:
    return ACTIVATIONS.get(name)()


def _mlp(widths: list[int], activation: str, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(Linear(a, b))
        if last_activation or i < len(widths) - 2:
            layers.append(_act(activation))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, int, int], cfg: BackboneConfig) -> None:
        super().__init__()
        self.net = _mlp([math.prod(shape), *cfg.hidden], cfg.activation, last_activation=True)
        self.out_features = cfg.hidden[-1] if cfg.hidden else math.prod(shape)

    def dense_layers(self) -> list[nn.Module]:
        """The layers applied, in order, to the flattened input ``(B, C*H*W)``: dense layers and activations."""
        return list(self.net)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], out_channels: int,
                 cfg: BackboneConfig) -> None:
        super().__init__()
        self.out_shape = (out_channels, shape[1], shape[2])
        widths = [latent_dim, *reversed(cfg.hidden), math.prod(self.out_shape)]
        self.net = _mlp(widths, cfg.activation, last_activation=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


def _conv_sizes(h: int, w: int, stages: int, ceil: bool = False) -> list[tuple[int, int]]:
    """Feature-map sizes down ``stages`` stride-2 stages, input first: halved, rounded down (k=4,
    s=2, p=1) or, with ``ceil``, rounded up (the inputs a k=3, s=2, p=1 transposed conv doubles from)."""
    sizes = [(h, w)]
    for _ in range(stages):
        h, w = sizes[-1]
        if h < 2 or w < 2:
            raise ValueError(f"image {sizes[0]} is too small for {stages} stride-2 conv stages")
        sizes.append((-(-h // 2), -(-w // 2)) if ceil else (h // 2, w // 2))
    return sizes


def _norm(cfg: BackboneConfig, channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels)] if cfg.batch_norm else []


class ConvEncoder(nn.Module):
    def __init__(self, shape: tuple[int, int, int], cfg: BackboneConfig) -> None:
        super().__init__()
        c, h, w = shape
        sizes = _conv_sizes(h, w, len(cfg.channels))
        layers: list[nn.Module] = []
        for cin, cout in zip([c, *cfg.channels[:-1]], cfg.channels):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), *_norm(cfg, cout), _act(cfg.activation)]
        layers.append(nn.Flatten())
        flat = cfg.channels[-1] * sizes[-1][0] * sizes[-1][1]
        if cfg.fc:
            layers += [Linear(flat, cfg.fc), _act(cfg.activation)]
        self.net = nn.Sequential(*layers)
        self.out_features = cfg.fc or flat

    def dense_layers(self) -> None:
        """``None``: convolutions come before any dense layer (see :meth:`MLPEncoder.dense_layers`)."""
        return None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int], out_channels: int,
                 cfg: BackboneConfig) -> None:
        super().__init__()
        _, h, w = shape
        chans = list(cfg.decoder_channels or reversed(cfg.channels))
        k = cfg.decoder_kernel
        sizes = _conv_sizes(h, w, len(chans), ceil=k == 3)
        self.start = (chans[0], *sizes[-1])
        flat = math.prod(self.start)
        dense: list[nn.Module] = []
        if cfg.fc:
            dense += [Linear(latent_dim, cfg.fc), _act(cfg.activation), Linear(cfg.fc, flat)]
        else:
            dense += [Linear(latent_dim, flat)]
        self.dense = nn.Sequential(*dense, *([_act(cfg.activation)] if cfg.decoder_dense_activation else []))
        layers: list[nn.Module] = []
        outs = [*chans[1:], out_channels]
        for i, (cin, cout) in enumerate(zip(chans, outs)):
            (hi, wi), (ho, wo) = sizes[-1 - i], sizes[-2 - i]
            # out = 2 in + k - 4 + output_padding; output_padding (0 or 1) recovers odd sizes exactly
            pad = (ho - 2 * hi - k + 4, wo - 2 * wi - k + 4)
            layers.append(nn.ConvTranspose2d(cin, cout, k, 2, 1, output_padding=pad))
            if i < len(chans) - 1:
                layers += [*_norm(cfg, cout), _act(cfg.activation)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.dense(z).view(z.shape[0], *self.start))


BACKBONES.register("mlp", help="fully connected encoder/decoder")((MLPEncoder, MLPDecoder))
BACKBONES.register("conv", help="stride-2 conv encoder, transposed-conv decoder")((ConvEncoder, ConvDecoder))


def build_encoder(shape: tuple[int, int, int], cfg: BackboneConfig) -> nn.Module:
    return BACKBONES.get(cfg.kind)[0](shape, cfg)


def build_decoder(latent_dim: int, shape: tuple[int, int, int], out_channels: int,
                  cfg: BackboneConfig) -> nn.Module:
    return BACKBONES.get(cfg.kind)[1](latent_dim, shape, out_channels, cfg)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ACTIVATION_DERIVATIVES", "BackboneConfig", "activation_derivative",
           "build_decoder", "build_encoder", "num_parameters", "torch"]
