"""The shared autoencoder: encoder -> latent head -> q(z|x) -> z -> decoder -> p(x|z).

Every image autoencoder in aelab is an :class:`Autoencoder` assembled from shared parts by a small
builder function registered with :func:`aelab.protocol.register_model`. The class is final: behaviour changes by
composing other parts (head, prior, corruption, terms), never by overriding its methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from aelab.batch import Batch
from aelab.latents.heads import DeterministicHead, LatentHead
from aelab.likelihoods import LikelihoodConfig, build_likelihood, mean_image
from aelab.losses.objective import Objective
from aelab.nn.backbones import BackboneConfig, activation_derivative, build_decoder, build_encoder
from aelab.nn.precision import float32_region, upcast
from aelab.outputs import LossOutput, ModelOutput
from aelab.protocol import Capabilities, Model


@dataclass
class AEConfig:
    """Configuration shared by every image autoencoder.

    Attributes:
        image_shape: (C, H, W); filled from the data set when training from the CLI.
        latent_dim: code size D.
        backbone: encoder/decoder architecture.
        likelihood: the decoder's p(x|z).
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 32
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"model.image_shape must be (C, H, W) of positive sizes, got {self.image_shape}")


class Autoencoder(Model):
    """An autoencoder assembled from parts, with its objective.

    Args:
        cfg: the model's config (kept for ``save_pretrained``).
        head: features -> q(z|x).
        objective: the weighted terms this model is trained with.
        corruption: applied to the input in training mode (denoising AEs).
        prior: a module whose ``forward()`` returns p(z), for models that can sample.
    """

    def __init__(self, cfg: AEConfig, head: Callable[[int], LatentHead], objective: Objective,
                 corruption: nn.Module | None = None, prior: nn.Module | None = None) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.image_shape[0]
        self.encoder = build_encoder(cfg.image_shape, cfg.backbone)
        self.head = head(self.encoder.out_features)
        self.likelihood = build_likelihood(c, cfg.likelihood)
        self.decoder = build_decoder(cfg.latent_dim, cfg.image_shape, c * self.likelihood.num_params,
                                     cfg.backbone)
        self.corruption = corruption
        self.prior = prior
        self.objective = objective

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Reconstructs images through a flat latent; samples when it has a prior p(z)."""
        has_prior = self.prior is not None
        return Capabilities(reconstruct=True, latent=True, latent_prior=has_prior, sample=has_prior, images=True)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one example's ``z`` (what ``forward`` puts in ``ModelOutput.z`` after the batch dim)."""
        return (self.config.latent_dim,)

    def code_layer(self) -> tuple[nn.Linear, nn.Module] | None:
        """``(linear, activation)`` when the encoder up to the codes is ``z = s(W x + b)`` on the
        flattened input with an elementwise ``s`` of known derivative, else ``None``.

        Read from the declared layers: an MLP backbone without hidden layers (``backbone.hidden=()``)
        followed by a deterministic head; an ``nn.Identity`` activation stands for linear codes.
        The contractive penalty has a closed form for exactly this shape.
        """
        body = self.encoder.dense_layers()  # every registered encoder declares them (None: not dense)
        if body is None or not isinstance(self.head, DeterministicHead):
            return None
        layers = [m for m in [*body, *self.head.dense_layers()] if not isinstance(m, nn.Identity)]
        if not layers or not isinstance(layers[0], nn.Linear) or len(layers) > 2:
            return None
        activation = layers[1] if len(layers) == 2 else nn.Identity()
        return (layers[0], activation) if activation_derivative(activation) is not None else None

    # --- the pipeline -------------------------------------------------------------------------
    def encode(self, x: Tensor, step: int | None = None, encoding: bool = True) -> Distribution:
        """q(z|x) for clean inputs ``(B, C, H, W)``; ``.mean`` gives the codes used as features."""
        h = self.encoder(x)  # the backbone may run in bfloat16 under autocast; the head never does
        with float32_region(h):
            return self.head(upcast(h), step=step, encoding=encoding)

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) with event shape (C, H, W)."""
        params = self.decoder(z)
        with float32_region(params):
            return self.likelihood(upcast(params))

    def forward(self, x: Tensor, step: int | None = None) -> ModelOutput:
        x_in = self.corruption(x) if self.corruption is not None else x
        qz_x = self.encode(x_in, step=step, encoding=False)
        z = qz_x.rsample()
        px_z = self.decode(z)
        pz = self.prior() if self.prior is not None else None
        return ModelOutput(x=x, x_in=x_in, z=z, qz_x=qz_x, px_z=px_z, pz=pz)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        x = batch.x
        out = self(x, step)
        with float32_region(x):  # log-densities, KL and penalties in float32 (see aelab.nn.precision)
            return self.objective(out, self, step)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean reconstruction in [0, 1] through the code mean (no corruption, no sampling)."""
        return mean_image(self.decode(self.encode(x, encoding=False).mean))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Mean images decoded from ``n`` prior samples (torch's RNG); models without a prior cannot sample."""
        if self.prior is None:
            raise ValueError(f"model {self.name!r} has no prior to sample from")
        pz = self.prior()
        z = pz.sample((n,))
        return mean_image(self.decode(z))


def build_autoencoder(cfg: AEConfig, head: Callable[[int], LatentHead], terms: dict,
                      **parts: Any) -> Autoencoder:
    """Assemble an :class:`Autoencoder` from a config, a head factory and weighted terms."""
    return Autoencoder(cfg, head, Objective(terms), **parts)
