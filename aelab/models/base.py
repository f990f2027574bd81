"""The shared autoencoder: encoder -> latent head -> q(z|x) -> z -> decoder -> p(x|z).

Every model in aelab is an :class:`Autoencoder` assembled from shared parts by a small builder
function registered with :func:`register_model`. The class is final: behaviour changes by
composing other parts (head, prior, corruption, terms), never by overriding its methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributions import Distribution

from aelab.config import ConfigError, default_config, from_dict, load_json, resolve_config, save_json, to_dict
from aelab.io import atomic_path
from aelab.latents.heads import LatentHead
from aelab.likelihoods import LikelihoodConfig, build_likelihood, mean_image
from aelab.losses.objective import Objective
from aelab.nn.backbones import BackboneConfig, build_decoder, build_encoder
from aelab.nn.precision import float32_region, upcast
from aelab.outputs import LossOutput, ModelOutput
from aelab.registry import MODELS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config_cls: type
    build: Callable[[Any], PretrainedModel]


def register_model(name: str, config_cls: type) -> Callable:
    """Register ``build(cfg) -> model`` (an :class:`Autoencoder` or another :class:`PretrainedModel`)
    under ``name`` with its config dataclass."""

    def deco(build: Callable) -> Callable:
        MODELS.register(name, help=build.__doc__)(ModelSpec(name, config_cls, build))
        return build

    return deco


def model_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The default config of model ``name``, updated with a (nested) mapping."""
    return default_config(MODELS.get(name).config_cls, overrides, "model")


def build_model(name: str, cfg: Any = None, **overrides: Any) -> PretrainedModel:
    """Build a registered model from its config (defaults if ``None``) and keyword overrides.

    Example:
        >>> m = build_model("ae", latent_dim=8)
        >>> m.latent_dim
        8
    """
    spec: ModelSpec = MODELS.get(name)
    cfg = resolve_config(spec.config_cls, cfg, overrides, "model", f"model {name!r}")
    model = spec.build(cfg)
    model.name, model.config = name, cfg
    return model


def save_module(module: nn.Module, directory: str | Path, kind: str,
                extra_config: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` (``{kind: name, kind + "_config": config, **extra}``) and the weights.

    Both are written atomically; ``module`` carries its registry ``name`` and its ``config``
    dataclass. Shared by models and code priors.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = {k: v for k, v in (extra_config or {}).items() if k not in (kind, f"{kind}_config")}
    save_json(directory / CONFIG_NAME, {kind: module.name, f"{kind}_config": to_dict(module.config), **extra})
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={kind: module.name})


def read_saved_config(directory: str | Path, kind: str, missing: str, hint: str = "") -> dict[str, Any]:
    """``config.json`` of a directory written by :func:`save_module`, checked for its two keys.

    Args:
        directory: the saved directory.
        kind: ``model`` or ``prior``.
        missing: what to say when there is no ``config.json``.
        hint: appended to the error when the keys are missing.
    """
    cfg_path = Path(directory) / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: {missing}")
    meta = load_json(cfg_path)
    if kind not in meta or f"{kind}_config" not in meta:
        raise ConfigError(f"{cfg_path}: expected keys {kind!r} and '{kind}_config'{hint}")
    return meta


def load_weights(module: nn.Module, directory: str | Path, map_location: str = "cpu") -> Any:
    """Load ``model.safetensors`` from ``directory`` into ``module``; returns it in eval mode."""
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    module.load_state_dict(load_file(str(weights), device=map_location))
    return module.eval()


class PretrainedModel(nn.Module):
    """Persistence shared by every registered model: ``config.json`` + ``model.safetensors``, never pickle.

    A model built by :func:`build_model` carries its registry ``name`` and its ``config``; that is
    all :meth:`from_pretrained` needs to rebuild the architecture before loading the weights (and
    the buffers, e.g. a vector quantizer's codebook statistics).
    """

    name: str
    config: Any

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``.

        Args:
            directory: created if missing.
            extra_config: more top-level entries for ``config.json`` (a run's data and trainer
                settings), written in the same atomic write.
        """
        save_module(self, directory, "model", extra_config)

    @staticmethod
    def from_pretrained(directory: str | Path, map_location: str = "cpu") -> PretrainedModel:
        """Rebuild any registered model from ``config.json`` (looked up by name) and load its weights."""
        meta = read_saved_config(directory, "model", "not a saved aelab model or run directory")
        spec: ModelSpec = MODELS.get(meta["model"])
        model = build_model(meta["model"], from_dict(spec.config_cls, meta["model_config"], "model"))
        return load_weights(model, directory, map_location)


class Autoencoder(PretrainedModel):
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
        self.name = ""
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
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one example's ``z`` (what ``forward`` puts in ``ModelOutput.z`` after the batch dim)."""
        return (self.config.latent_dim,)

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

    def loss(self, x: Tensor, step: int | None = None) -> LossOutput:
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
