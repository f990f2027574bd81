"""The model protocol: what the trainer, the CLI, the metrics and the figures may assume of a model.

Every trainable thing in aelab (autoencoders, VQ models, code priors, sequence models) is a
:class:`Model`:

* ``loss(batch, step) -> LossOutput``: the objective on one :class:`~aelab.batch.Batch`;
* ``capabilities``: a :class:`Capabilities` the model *declares* (what it can do); callers read
  it instead of probing attributes;
* optionally its own training step: ``optimizer_groups()`` names parameter groups (one optimizer
  each) and ``train_step(batch, step, optimizers, ctx)`` runs one step over them
  (``capabilities.own_step``); otherwise the trainer's default step (one loss, one optimizer);
* ``save_pretrained`` / :func:`from_pretrained`: ``config.json`` + ``model.safetensors``, the class
  looked up by its registered name, never pickle.

A model family is registered once with :func:`register_model`, which names its config dataclass,
the per-epoch evaluation and the per-epoch pictures (callbacks looked up in
:data:`aelab.registry.EPOCH_EVALUATIONS` and :data:`aelab.registry.EPOCH_FIGURES`, or callables).

Example:
    >>> import torch
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class LineConfig:
    ...     slope: float = 1.0
    >>> @register_model("doc_line", LineConfig, family="example", evaluation=None, figures=None, fit_to_data=None)
    ... class Line(Model):
    ...     capabilities = Capabilities()
    ...     def __init__(self, cfg):
    ...         super().__init__()
    ...         self.config, self.w = cfg, torch.nn.Parameter(torch.tensor(cfg.slope))
    ...     def loss(self, batch, step=None):
    ...         err = (self.w * batch.x - batch.y) ** 2
    ...         return LossOutput(err.mean(), {"mse": err.mean().detach()}, err.detach())
    >>> Line(LineConfig()).name, build_model("doc_line", slope=2.0).w.item()
    ('doc_line', 2.0)
    >>> _ = MODELS.unregister("doc_line")
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from aelab.batch import Batch
from aelab.config import ConfigError, default_config, from_dict, load_json, resolve_config, save_json, to_dict
from aelab.io import atomic_path, read_safetensors, tensors_sha256
from aelab.outputs import LossOutput
from aelab.registry import MODELS

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "Capabilities",
    "Model",
    "ModelSpec",
    "StepContext",
    "build_model",
    "from_pretrained",
    "image_shape_from_data",
    "model_config",
    "model_spec",
    "register_model",
    "require",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, declared by the model itself.

    Attributes:
        reconstruct: ``reconstruct(x)`` returns reconstructions of the inputs, shaped like ``x``.
        latent: ``encode(x)`` returns a distribution over a flat code ``(B, latent_dim)`` whose
            ``.mean`` are the features metrics use (probes, disentanglement, clustering), and
            ``decode(z)`` returns ``p(x|z)``.
        latent_prior: a continuous latent with a prior ``p(z)`` (``model.prior()``): KL, IWAE
            likelihoods, latent diagnostics and traversals apply.
        codes: discrete code grids: ``encode_codes``, ``decode_codes``, ``code_shapes``,
            ``num_codes``, ``attach_prior``; a code prior can be trained on them.
        sample: ``sample(n)`` draws new examples.
        images: the inputs ``batch.x`` are images ``(B, C, H, W)`` in ``[0, 1]``.
        own_step: the model runs its own training step (``train_step``) over its
            ``optimizer_groups``.
        text: the inputs ``batch.x`` are padded token ids ``(B, T)`` (``<pad>`` = 0, each
            sentence ending in ``<eos>``; see :mod:`aelab.data.text`).
        sequence: the inputs ``batch.x`` are sequences of frames ``(B, T, C, H, W)`` (vectors as
            ``(B, T, 1, 1, D)``; see :mod:`aelab.data.sequences`), and the model rolls them out:
            ``rollout(context, steps, samples)``, jumping at most ``max_jump`` steps at a time.
    """

    reconstruct: bool = False
    latent: bool = False
    latent_prior: bool = False
    codes: bool = False
    sample: bool = False
    images: bool = False
    own_step: bool = False
    text: bool = False
    sequence: bool = False


@dataclass
class StepContext:
    """What the trainer hands a model's own ``train_step``.

    Attributes:
        autocast: a context manager factory for the forward pass (the trainer's precision).
        grad_clip: the trainer's gradient-norm clip (``None``: none); :meth:`finish_gradients` applies it.
        check_finite: ``check_finite(what, value, terms)`` raises the trainer's non-finite error.
        draw: ``draw(i)``: the ``i``-th extra training batch of this step (``i >= 1``), random
            examples that are a pure function of the run's seed, the step and ``i`` (so a resumed
            run draws the same ones); ``None`` outside the trainer.
        sync: ``sync(params)``: under torchrun, replaces each gradient of ``params`` by the
            global batch's (the ranks' gradients combined, weighted by their share of the
            batch); ``None`` in one process.
        world_size: processes training together (torchrun); 1 in one process.
    """

    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_clip: float | None
    check_finite: Callable[[str, float, dict[str, torch.Tensor]], None]
    draw: Callable[[int], Batch] | None = None
    sync: Callable[[list[torch.nn.Parameter]], None] | None = None
    world_size: int = 1

    def finish_gradients(self, params: Any) -> None:
        """Call between ``backward()`` and ``optimizer.step()`` for ``params``: combine their
        gradients over the ranks (under torchrun), then clip their norm to ``grad_clip`` (if
        set), checking it is finite."""
        params = list(params)
        if self.sync is not None:
            self.sync(params)
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip).item()
            self.check_finite("gradient norm", norm, {})


class Model(nn.Module):
    """The base of every registered model; see the module docstring for the protocol.

    Attributes:
        name: the registered name (a class attribute set by :func:`register_model` on classes,
            or set on the instance by :func:`build_model` for builder functions).
        config: the config dataclass the model was built from.
        capabilities: the declared :class:`Capabilities` (a class attribute, or a property where
            it depends on the instance, e.g. a VQ model can sample once a code prior is attached).
    """

    name: ClassVar[str] = ""
    config: Any
    capabilities: Capabilities = Capabilities()

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        """The objective on one batch (abstract)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(batch, step)")  # abstract

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one optimizer each (default: one group of every parameter)."""
        return {"model": list(self.parameters())}

    def train_step(self, batch: Batch, step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   ctx: StepContext) -> dict[str, float]:
        """One training step of a model with ``capabilities.own_step`` (abstract): zero the
        gradients, compute the losses, backpropagate and step the optimizers it wants; returns the
        logged values, which must include ``loss``."""
        raise NotImplementedError(f"{type(self).__name__} declares own_step but has no train_step")  # abstract

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) into ``directory``.

        Args:
            directory: created if missing.
            extra_config: more top-level entries for ``config.json`` (a run's data and trainer
                settings), written in the same atomic write.
        """
        if not self.name or self.name not in MODELS:
            raise ConfigError(f"{type(self).__name__} has no registered name, so a saved copy could not be "
                              "loaded back: build it with aelab.build_model(NAME, ...) or register its class "
                              "with register_model")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = {k: v for k, v in (extra_config or {}).items() if k not in ("model", "model_config")}
        save_json(directory / CONFIG_NAME, {"model": self.name, "model_config": to_dict(self.config), **extra})
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"model": self.name, "sha256": tensors_sha256(state)})

    @staticmethod
    def from_pretrained(directory: str | Path, map_location: str = "cpu") -> Model:
        """Rebuild any registered model from ``config.json`` and load its weights (:func:`from_pretrained`)."""
        return from_pretrained(directory, map_location)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build a model family and what the trainer runs around it.

    Attributes:
        name: the registered name.
        config_cls: the config dataclass.
        build: ``build(cfg) -> Model`` (a class or a builder function).
        family: a group for listings (``autoencoder``, ``code prior``, ...).
        evaluation: the per-epoch evaluation, ``f(model, split, trainer_cfg) -> dict[str, float]``,
            or its name in :data:`aelab.registry.EPOCH_EVALUATIONS`; ``None``: none.
        figures: the per-epoch pictures, ``f(model, split, out_dir, epoch, class_names)``, or its
            name in :data:`aelab.registry.EPOCH_FIGURES`; ``None``: none.
        fit_to_data: ``f(cfg, info) -> cfg``: the config with the fields a data set decides (an
            image family's ``image_shape``, a text family's vocabulary size) filled from the data
            set's info before the model is built; ``None``: the config is used as it is.
    """

    name: str
    config_cls: type
    build: Callable[[Any], Model]
    family: str = "autoencoder"
    evaluation: str | Callable | None = "autoencoder"
    figures: str | Callable | None = "images"
    fit_to_data: Callable[[Any, Any], Any] | None = None


def image_shape_from_data(cfg: Any, info: Any) -> Any:
    """The image families' :attr:`ModelSpec.fit_to_data`: ``image_shape`` from the data set's shape."""
    return dataclasses.replace(cfg, image_shape=tuple(info.shape))


def register_model(name: str, config_cls: type, *, family: str = "autoencoder",
                   evaluation: str | Callable | None = "autoencoder",
                   figures: str | Callable | None = "images",
                   fit_to_data: Callable[[Any, Any], Any] | None = image_shape_from_data) -> Callable:
    """Register a model class or a builder function ``build(cfg) -> Model`` under ``name``.

    A registered class gets ``name`` as a class attribute, so an instance built directly
    (``VQVAE(cfg)``) saves a loadable ``config.json``. The keywords are :class:`ModelSpec`'s
    fields; the defaults are the image families'.
    """

    def deco(obj: Any) -> Any:
        if isinstance(obj, type):
            obj.name = name
        spec = ModelSpec(name, config_cls, obj, family, evaluation, figures, fit_to_data)
        MODELS.register(name, help=obj.__doc__)(spec)
        return obj

    return deco


def model_spec(name_or_model: str | nn.Module) -> ModelSpec:
    """The registry entry of a model name or of a model instance (by its ``name``)."""
    name = name_or_model if isinstance(name_or_model, str) else getattr(name_or_model, "name", "")
    return MODELS.get(name)


def model_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The default config of model ``name``, updated with a (nested) mapping."""
    return default_config(MODELS.get(name).config_cls, overrides, "model")


def build_model(name: str, cfg: Any = None, **overrides: Any) -> Model:
    """Build a registered model from its config (defaults if ``None``) and keyword overrides.

    Example:
        >>> m = build_model("ae", latent_dim=8)
        >>> m.latent_dim, m.name
        (8, 'ae')
    """
    spec: ModelSpec = MODELS.get(name)
    cfg = resolve_config(spec.config_cls, cfg, overrides, "model", f"model {name!r}")
    model = spec.build(cfg)
    model.name, model.config = name, cfg
    return model


def read_saved_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a saved model directory, checked for ``model`` and ``model_config``."""
    cfg_path = Path(directory) / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a saved aelab model or run directory")
    meta = load_json(cfg_path)
    if not isinstance(meta, dict) or "model" not in meta or "model_config" not in meta:
        raise ConfigError(f"{cfg_path}: expected a JSON object with keys 'model' and 'model_config'")
    return meta


def load_weights(module: nn.Module, directory: str | Path, map_location: str = "cpu") -> Any:
    """Load ``model.safetensors`` from ``directory`` into ``module``; returns it in eval mode."""
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found")
    tensors, _ = read_safetensors(weights, "model weights", device=map_location)
    expected = module.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise ConfigError(f"{weights}: the weights do not fit the model that {Path(directory) / CONFIG_NAME} "
                          "describes (other parameter names or shapes): the two files are from different models")
    module.load_state_dict(tensors)
    return module.eval()


def from_pretrained(directory: str | Path, map_location: str = "cpu") -> Model:
    """Rebuild any registered model from ``config.json`` (looked up by name) and load its weights.

    Example:
        >>> import tempfile
        >>> m = build_model("ae", image_shape=(1, 4, 4), latent_dim=2, backbone={"hidden": (8,)})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     m.save_pretrained(d)
        ...     from_pretrained(d).config == m.config
        True
    """
    meta = read_saved_config(directory)
    spec: ModelSpec = MODELS.get(meta["model"])
    model = build_model(meta["model"], from_dict(spec.config_cls, meta["model_config"], "model"))
    return load_weights(model, directory, map_location)


_NEEDS = {
    "reconstruct": "reconstructions",
    "latent": "latent code",
    "latent_prior": "prior p(z) over a continuous latent",
    "codes": "discrete codes",
    "sample": "prior to sample from",
    "images": "image inputs",
    "own_step": "training step of its own",
    "text": "token-sequence inputs",
    "sequence": "sequences of frames to roll out",
}


def require(model: nn.Module, *capabilities: str, what: str) -> None:
    """Raise a :class:`ValueError` naming the model and ``what`` needs it unless ``model``
    declares every one of ``capabilities`` (names of :class:`Capabilities` fields).

    Example:
        >>> require(build_model("ae"), "latent_prior", what="the IWAE likelihood")
        Traceback (most recent call last):
        ...
        ValueError: model 'ae' has no prior p(z) over a continuous latent (needed for the IWAE likelihood)
    """
    caps = model.capabilities if isinstance(model, Model) else Capabilities()
    for c in capabilities:
        if not getattr(caps, c):
            name = model.name if isinstance(model, Model) else type(model).__name__
            raise ValueError(f"model {name!r} has no {_NEEDS[c]} (needed for {what})")
