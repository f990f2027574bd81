"""Vector-quantised autoencoders: VQ-VAE (one code grid) and VQ-VAE-2 (a top and a bottom grid).

Their forward pass really differs from :class:`~aelab.models.base.Autoencoder` (spatial latent
grids, quantizers with their own losses and state, a hierarchy), so they carry their own classes.
They honour the same protocol (``forward``, ``loss``, ``objective``, ``encode``, ``decode``,
``reconstruct``, ``sample``, ``prior``, ``save_pretrained`` / ``from_pretrained``), so the trainer,
the evaluation and the CLI treat them like any other model. In that protocol ``z`` is the
quantised latent grids flattened and concatenated (top first) into ``(B, latent_dim)``: ``.mean``
of :meth:`encode` is a feature vector, and :meth:`decode` takes it back.

The discrete side has its own API: :meth:`~VQAutoencoder.encode_codes` and
:meth:`~VQAutoencoder.decode_codes` convert between images and code indices, and
:attr:`~VQAutoencoder.code_shapes` / :attr:`~VQAutoencoder.num_codes` describe the grids a code
prior (e.g. a PixelCNN) is built for. Such a prior is trained after the autoencoder, on its codes,
and attached with :meth:`~VQAutoencoder.attach_prior`; then :meth:`~VQAutoencoder.sample` works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from aelab.batch import Batch
from aelab.distributions import PointMass
from aelab.latents.vq import Quantized, QuantizerConfig, VectorQuantizer
from aelab.likelihoods import LikelihoodConfig, build_likelihood, mean_image
from aelab.losses.objective import Objective
from aelab.losses.terms import AuxLoss, ReconstructionNLL
from aelab.nn.precision import float32_region, upcast
from aelab.nn.resnet import ResNetDecoder, ResNetEncoder, conv_sizes
from aelab.outputs import LossOutput, ModelOutput
from aelab.protocol import Capabilities, Model, register_model


@dataclass
class VQVAEConfig:
    """Configuration of the VQ-VAE.

    Attributes:
        image_shape: (C, H, W); filled from the data set when training from the CLI.
        embedding_dim: dimension D of each code vector (channels of the latent grid).
        num_codes: codebook size K.
        channels: output channels of each stride-2 downsampling stage; the code grid is
            ``H / 2^len(channels)`` by ``W / 2^len(channels)`` (floored), 7 x 7 for 28 x 28 images
            with two stages. The paper used 256 channels on 32 x 32 colour images; these defaults
            are sized for 28 x 28 grey images on a CPU (about 7x cheaper per step than (64, 128)).
        res_blocks: residual blocks after the encoder's and before the decoder's resampling.
        res_channels: hidden width of each residual block.
        quantizer: how the codebook learns (commitment weight beta, EMA, dead codes, k-means).
        likelihood: p(x|z). The default is the library's Bernoulli (binary cross-entropy on grey
            values; ``px_z.mean`` are the pixel probabilities, so the reported ``mse`` is the
            squared error of those): on Fashion-MNIST it reached a lower squared error in the
            first 200 steps than a fixed-scale Gaussian (scale 0.1, 0.3 or 1), and scale 0.1 let
            the commitment loss run away. ``likelihood.name=gaussian`` gives the paper's MSE.
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    embedding_dim: int = 64
    num_codes: int = 512
    channels: tuple[int, ...] = (32, 64)
    res_blocks: int = 2
    res_channels: int = 32
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)


@dataclass
class VQVAE2Config(VQVAEConfig):
    """Configuration of VQ-VAE-2: the VQ-VAE's fields describe the bottom level.

    Attributes:
        top_channels: channels of the top level's one extra stride-2 stage (the top grid is half
            the bottom grid, floored: 3 x 3 over a 7 x 7 bottom grid).
    """

    top_channels: int = 64


class CodePrior(Protocol):
    """What :meth:`VQAutoencoder.attach_prior` expects of a prior over one level's code grid."""

    def sample(self, n: int, temperature: float = 1.0, cond: Tensor | None = None) -> Tensor:
        """``n`` code grids ``(n, h, w)`` (LongTensor); ``cond`` is the level above's codes, if any."""
        ...


class VQAutoencoder(Model):
    """Shared pipeline of vector-quantised autoencoders (abstract: subclasses build the levels).

    A subclass creates ``self.quantizers`` (one :class:`VectorQuantizer` per level, top first)
    and implements ``_quantize(x, update)``, images to one :class:`Quantized` per level, and
    ``_decode_grids(grids)``, quantised grids to the likelihood's parameters. Everything else,
    objective, flattening, code API, sampling and persistence, lives here once.

    Args:
        cfg: the model's config.
        code_shapes: the (h, w) of each level's grid, top first.
        level_names: names of the levels for metric suffixes (one level: no suffix).

    Attributes:
        prior: the attached code priors (a tuple, top first) or ``None``; see :meth:`attach_prior`.
    """

    quantizers: nn.ModuleList

    def __init__(self, cfg: VQVAEConfig, code_shapes: list[tuple[int, int]], level_names: tuple[str, ...]) -> None:
        super().__init__()
        self.config = cfg
        self.code_shapes = [tuple(s) for s in code_shapes]
        self.level_names = level_names
        self.likelihood = build_likelihood(cfg.image_shape[0], cfg.likelihood)
        # with EMA the codebook loss has no gradient: weight 0 keeps it out of the training step,
        # and the evaluation still logs it (it is the mean squared quantisation error)
        self.objective = Objective({
            "recon": (ReconstructionNLL(), 1.0),
            "vq_codebook": (AuxLoss("vq_codebook"), 0.0 if cfg.quantizer.ema else 1.0),
            "vq_commitment": (AuxLoss("vq_commitment"), cfg.quantizer.beta),
        })
        self.prior: tuple[CodePrior, ...] | None = None

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Reconstructs images through discrete codes; samples once code priors are attached."""
        return Capabilities(reconstruct=True, latent=True, codes=True, sample=self.prior is not None, images=True)

    # --- shapes ---------------------------------------------------------------------------------
    @property
    def num_codes(self) -> list[int]:
        """Codebook size of each level, top first."""
        return [q.num_codes for q in self.quantizers]

    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """(D, h, w) of each level's quantised grid, top first."""
        return [(q.dim, *s) for q, s in zip(self.quantizers, self.code_shapes)]

    @property
    def latent_dim(self) -> int:
        """Size of the flattened quantised latents, ``sum_levels D * h * w``."""
        return sum(math.prod(s) for s in self.latent_shapes)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def _suffix(self, level: int) -> str:
        return f"_{self.level_names[level]}" if len(self.level_names) > 1 else ""

    # --- subclass hooks ---------------------------------------------------------------------------
    def _quantize(self, x: Tensor, update: bool) -> list[Quantized]:
        raise NotImplementedError  # abstract

    def _decode_grids(self, grids: list[Tensor]) -> Tensor:
        raise NotImplementedError  # abstract

    # --- the pipeline -------------------------------------------------------------------------------
    def _flatten(self, grids: list[Tensor]) -> Tensor:
        return torch.cat([g.flatten(1) for g in grids], 1)  # (B, latent_dim)

    def _split(self, z: Tensor) -> list[Tensor]:
        sizes = [math.prod(s) for s in self.latent_shapes]
        return [part.reshape(-1, *s) for part, s in zip(z.split(sizes, 1), self.latent_shapes)]

    def forward(self, x: Tensor, step: int | None = None) -> ModelOutput:
        """Quantise, decode, and report the quantizers' losses and health in ``aux``.

        In training mode this pass also updates the codebooks' state (EMA statistics, usage
        counters, dead-code restarts, k-means initialisation on the first batch).
        """
        levels = self._quantize(x, update=self.training)
        z = self._flatten([q.z_q for q in levels])
        stats = {f"{k}{self._suffix(i)}": v for i, q in enumerate(levels) for k, v in q.stats.items()}
        aux: dict[str, Any] = {
            "vq_codebook": sum(q.codebook_loss for q in levels),
            "vq_commitment": sum(q.commitment_loss for q in levels),
            "codes": [q.codes for q in levels],
            "vq_stats": stats,
        }
        return ModelOutput(x=x, x_in=x, z=z, qz_x=PointMass(z), px_z=self.decode(z), aux=aux)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        x = batch.x
        out = self(x, step)
        with float32_region(x):  # see aelab.nn.precision
            return self.objective(out, self, step)

    def encode(self, x: Tensor, step: int | None = None, encoding: bool = True) -> Distribution:
        """A point mass at the flattened quantised latents ``(B, latent_dim)`` (never updates state)."""
        return PointMass(self._flatten([q.z_q for q in self._quantize(x, update=False)]))

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for flattened quantised latents ``(B, latent_dim)``, event shape (C, H, W)."""
        params = self._decode_grids(self._split(z))
        with float32_region(params):
            return self.likelihood(upcast(params))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean reconstruction in [0, 1] through the nearest codes."""
        return mean_image(self.decode(self.encode(x).mean))

    # --- the discrete side ----------------------------------------------------------------------
    def _pack(self, codes: list[Tensor]) -> Tensor | tuple[Tensor, ...]:
        return codes[0] if len(codes) == 1 else tuple(codes)

    @torch.no_grad()
    def encode_codes(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Code indices of images: a LongTensor ``(B, h, w)`` for one level, else a tuple of them, top first."""
        return self._pack([q.codes for q in self._quantize(x, update=False)])

    def codes_to_latent(self, codes: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Flattened quantised latents ``(B, latent_dim)`` of code indices (as :meth:`encode_codes` gives them)."""
        levels = [codes] if isinstance(codes, Tensor) else list(codes)
        if len(levels) != len(self.quantizers):
            raise ValueError(f"expected codes for {len(self.quantizers)} level(s), got {len(levels)}")
        for c, s, name in zip(levels, self.code_shapes, self.level_names):
            if tuple(c.shape[1:]) != s:
                raise ValueError(f"{name} codes must have shape (B, {s[0]}, {s[1]}), got {tuple(c.shape)}")
        return self._flatten([q.lookup(c) for q, c in zip(self.quantizers, levels)])

    @torch.no_grad()
    def decode_codes(self, codes: Tensor | tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Mean images in [0, 1], ``(B, C, H, W)``, decoded from code indices."""
        return mean_image(self.decode(self.codes_to_latent(codes)))

    def attach_prior(self, *priors: CodePrior) -> VQAutoencoder:
        """Attach one code prior per level (top first) so that :meth:`sample` works; none detaches.

        A prior needs only ``sample(n, temperature=1.0, cond=None) -> LongTensor (n, h, w)``; every
        level below the top is given the codes of the level above as ``cond``. The priors are not
        submodules: they are trained, moved between devices and saved on their own, and
        ``save_pretrained`` writes the autoencoder alone.

        Returns:
            the model itself.
        """
        if priors and len(priors) != len(self.quantizers):
            raise ValueError(f"{type(self).__name__} needs {len(self.quantizers)} code priors (top first), "
                             f"got {len(priors)}")
        self.prior = tuple(priors) or None
        return self

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """Mean images decoded from ``n`` code grids drawn from the attached priors (torch's RNG)."""
        if self.prior is None:
            raise ValueError(f"model {self.name!r} has no prior to sample from: train a code prior on "
                             "its codes and attach it with attach_prior(...)")
        codes: list[Tensor] = []
        for p in self.prior:
            codes.append(p.sample(n, temperature=temperature, cond=codes[-1] if codes else None))
        return self.decode_codes(codes)


@register_model("vqvae", VQVAEConfig)
class VQVAE(VQAutoencoder):
    """VQ-VAE: discrete latent grid, nearest-code quantisation, straight-through gradients, EMA codebook.

    A ResNet encoder, one quantised grid, a mirrored ResNet decoder.

    References:
        van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", NeurIPS 2017.

    Example:
        >>> m = VQVAE(VQVAEConfig(image_shape=(1, 12, 10), embedding_dim=4, num_codes=8, channels=(8, 8)))
        >>> m.code_shapes, m.num_codes, m.encode_codes(torch.rand(2, 1, 12, 10)).shape
        ([(3, 2)], [8], torch.Size([2, 3, 2]))
    """

    def __init__(self, cfg: VQVAEConfig) -> None:
        c, h, w = cfg.image_shape
        sizes = conv_sizes(h, w, len(cfg.channels))
        super().__init__(cfg, [sizes[-1]], ("",))
        d = cfg.embedding_dim
        self.encoder = ResNetEncoder(c, cfg.channels, cfg.res_blocks, cfg.res_channels)
        self.pre_quant = nn.Conv2d(self.encoder.out_channels, d, 1)
        self.quantizers = nn.ModuleList([VectorQuantizer(cfg.num_codes, d, cfg.quantizer)])
        self.decoder = ResNetDecoder(d, c * self.likelihood.num_params, cfg.channels, sizes,
                                     cfg.res_blocks, cfg.res_channels)

    def _quantize(self, x: Tensor, update: bool) -> list[Quantized]:
        return [self.quantizers[0](self.pre_quant(self.encoder(x)), update=update)]

    def _decode_grids(self, grids: list[Tensor]) -> Tensor:
        return self.decoder(grids[0])


@register_model("vqvae2", VQVAE2Config)
class VQVAE2(VQAutoencoder):
    """VQ-VAE-2: top and bottom code grids, the bottom quantised conditioned on the top.

    A bottom grid (``channels`` stages) and a top grid one stage further down.

    The top is quantised first; its decoder upsamples the top codes to the bottom resolution and is
    concatenated with the bottom encoder's features before the bottom quantisation, so the bottom
    codes encode what the top ones leave out. The image decoder takes the upsampled top latents and
    the bottom latents together.

    References:
        Razavi, van den Oord & Vinyals, "Generating Diverse High-Fidelity Images with VQ-VAE-2",
        NeurIPS 2019.
    """

    def __init__(self, cfg: VQVAE2Config) -> None:
        c, h, w = cfg.image_shape
        sizes = conv_sizes(h, w, len(cfg.channels) + 1)
        bottom, top = sizes[-2], sizes[-1]
        super().__init__(cfg, [top, bottom], ("top", "bottom"))
        d, cb, ct, r, rc = cfg.embedding_dim, cfg.channels[-1], cfg.top_channels, cfg.res_blocks, cfg.res_channels
        self.encoder_bottom = ResNetEncoder(c, cfg.channels, r, rc)
        self.encoder_top = ResNetEncoder(cb, (ct,), r, rc)
        self.pre_quant_top = nn.Conv2d(ct, d, 1)
        self.decoder_top = ResNetDecoder(d, d, (ct,), [bottom, top], r, rc)  # top latents -> bottom grid
        self.pre_quant_bottom = nn.Conv2d(cb + d, d, 1)
        self.quantizers = nn.ModuleList([VectorQuantizer(cfg.num_codes, d, cfg.quantizer),
                                         VectorQuantizer(cfg.num_codes, d, cfg.quantizer)])
        self.upsample_top = nn.ConvTranspose2d(d, d, 4, 2, 1, output_padding=(bottom[0] - 2 * top[0],
                                                                             bottom[1] - 2 * top[1]))
        self.decoder = ResNetDecoder(2 * d, c * self.likelihood.num_params, cfg.channels, sizes[:-1], r, rc)

    def _quantize(self, x: Tensor, update: bool) -> list[Quantized]:
        h_bottom = self.encoder_bottom(x)  # (B, cb, hb, wb)
        top = self.quantizers[0](self.pre_quant_top(self.encoder_top(h_bottom)), update=update)
        cond = self.decoder_top(top.z_q)  # (B, D, hb, wb)
        bottom = self.quantizers[1](self.pre_quant_bottom(torch.cat([h_bottom, cond], 1)), update=update)
        return [top, bottom]

    def _decode_grids(self, grids: list[Tensor]) -> Tensor:
        top, bottom = grids
        return self.decoder(torch.cat([self.upsample_top(top), bottom], 1))
