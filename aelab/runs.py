"""Run configuration: model + data + trainer, as saved in a run directory's ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aelab.config import ConfigError, apply_overrides, from_dict, load_json, to_dict
from aelab.data.base import DataConfig
from aelab.models.base import CONFIG_NAME, ModelSpec
from aelab.registry import MODELS
from aelab.training.trainer import TrainerConfig


@dataclass
class RunConfig:
    """Everything that defines a training run.

    Attributes:
        model: a registered model name.
        model_config: that model's config (its dataclass).
        data: which data set and how much of it.
        trainer: optimisation and logging settings.
    """

    model: str = "ae"
    model_config: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        spec: ModelSpec = MODELS.get(self.model)
        if self.model_config is None:
            self.model_config = spec.config_cls()
        elif isinstance(self.model_config, dict):
            self.model_config = from_dict(spec.config_cls, self.model_config, "model")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_config": to_dict(self.model_config),
                "data": to_dict(self.data), "trainer": to_dict(self.trainer)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        unknown = sorted(set(data) - {"model", "model_config", "data", "trainer"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: model, model_config, data, trainer")
        name = data.get("model", "ae")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: 'model' must be a model name, got {name!r}")
        spec: ModelSpec = MODELS.get(name)
        return cls(
            model=name,
            model_config=from_dict(spec.config_cls, data.get("model_config", {}), "model"),
            data=from_dict(DataConfig, data.get("data", {}), "data"),
            trainer=from_dict(TrainerConfig, data.get("trainer", {}), "trainer"),
        )

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        """Apply ``section.key=value`` overrides; ``model.`` addresses the model's config."""
        sections: dict[str, list[str]] = {"model": [], "data": [], "trainer": []}
        for item in overrides:
            head = item.split(".", 1)[0]
            if head not in sections or "." not in item.split("=", 1)[0]:
                raise ConfigError(f"override {item!r} must start with model., data. or trainer.")
            sections[head].append(item.split(".", 1)[1])
        return RunConfig(
            model=self.model,
            model_config=apply_overrides(self.model_config, sections["model"]),
            data=apply_overrides(self.data, sections["data"]),
            trainer=apply_overrides(self.trainer, sections["trainer"]),
        )


def load_run_config(path: str | Path, require_data: bool = True) -> RunConfig:
    """Read a run config from a JSON file or a run directory.

    Args:
        path: a ``config.json`` or a run directory holding one.
        require_data: refuse a config without a ``data`` section instead of assuming the default.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or config file")
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an aelab run directory")
    data = load_json(path)
    if require_data and isinstance(data, dict) and "data" not in data:
        raise ConfigError(f"{path} has no 'data' section (the model was trained on data passed in from Python); "
                          "add one, e.g. \"data\": {\"name\": \"fashion-mnist\"}")
    return RunConfig.from_dict(data, str(path))


#: the subdirectory of a VQ run that holds its code prior (``aelab train-prior RUN_DIR``)
PRIOR_DIR = "prior"


@dataclass
class PriorRunConfig:
    """A code prior trained on a VQ run's codes, as saved in ``RUN_DIR/prior/config.json``.

    Attributes:
        prior: a registered code prior (``pixelcnn``, ``pixelsnail``, ``vqvae2``).
        prior_config: that prior's config; its code-grid fields (``num_codes``, ``grid_shape``)
            come from the VQ model (see :func:`prior_run_config`).
        trainer: optimisation and logging settings.
    """

    prior: str = "pixelcnn"
    prior_config: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        import aelab.priors.codes  # noqa: F401  (registers the code priors)
        from aelab.registry import CODE_PRIORS

        spec = CODE_PRIORS.get(self.prior)
        if self.prior_config is None:
            self.prior_config = spec.config_cls()
        elif isinstance(self.prior_config, dict):
            self.prior_config = from_dict(spec.config_cls, self.prior_config, "prior")

    def to_dict(self) -> dict[str, Any]:
        return {"prior": self.prior, "prior_config": to_dict(self.prior_config), "trainer": to_dict(self.trainer)}

    def with_overrides(self, overrides: list[str], trainer_only: bool = False) -> PriorRunConfig:
        """Apply ``prior.key=value`` and ``trainer.key=value`` overrides (only ``trainer.`` ones if
        ``trainer_only``: a resumed prior keeps its architecture)."""
        sections: dict[str, list[str]] = {"prior": [], "trainer": []}
        for item in overrides:
            head = item.split(".", 1)[0]
            if head not in sections or "." not in item.split("=", 1)[0]:
                raise ConfigError(f"override {item!r} must start with prior. or trainer.")
            if trainer_only and head == "prior":
                raise ConfigError(f"override {item!r}: a resumed prior keeps its architecture; only trainer. "
                                  "overrides apply (e.g. trainer.epochs)")
            sections[head].append(item.split(".", 1)[1])
        return PriorRunConfig(prior=self.prior, prior_config=apply_overrides(self.prior_config, sections["prior"]),
                              trainer=apply_overrides(self.trainer, sections["trainer"]))


def default_code_prior(model: Any) -> str:
    """``pixelcnn`` for a one-level VQ model, ``vqvae2`` (top conditioning the bottom) for two levels."""
    return "vqvae2" if len(model.code_shapes) == 2 else "pixelcnn"


def prior_run_config(model: Any, name: str | None = None, overrides: list[str] = ()) -> PriorRunConfig:
    """The config of a code prior for VQ model ``model``, sized from its code grids, with overrides.

    ``num_codes`` and ``grid_shape`` (of each level for ``vqvae2``) are set from
    ``model.num_codes`` and ``model.code_shapes``; overriding them to other values is an error.

    Example:
        >>> from aelab.models import build_model
        >>> m = build_model("vqvae", image_shape=(1, 12, 12), num_codes=16, channels=(4, 8))
        >>> cfg = prior_run_config(m, overrides=["prior.channels=8", "trainer.epochs=2"])
        >>> cfg.prior, cfg.prior_config.num_codes, cfg.prior_config.grid_shape, cfg.prior_config.channels
        ('pixelcnn', 16, (3, 3), 8)
    """
    name = name or default_code_prior(model)
    levels = len(model.code_shapes)
    if (levels == 2) != (name == "vqvae2"):
        want = "vqvae2" if levels == 2 else "pixelcnn or pixelsnail"
        raise ConfigError(f"code prior {name!r} does not fit a model with {levels} code grid(s): use {want}")
    base = PriorRunConfig(prior=name)
    sized = to_dict(base.prior_config)
    grids = [{"num_codes": k, "grid_shape": list(s)} for k, s in zip(model.num_codes, model.code_shapes)]
    if levels == 2:
        sized["top"] |= grids[0]
        sized["bottom"] |= grids[1]
    else:
        sized |= grids[0]
    cfg = PriorRunConfig(prior=name, prior_config=sized).with_overrides(list(overrides))
    levels_cfg = [cfg.prior_config.top, cfg.prior_config.bottom] if levels == 2 else [cfg.prior_config]
    where = ["prior.top.", "prior.bottom."] if levels == 2 else ["prior."]
    for c, g, w in zip(levels_cfg, grids, where):
        if c.num_codes != g["num_codes"] or list(c.grid_shape) != g["grid_shape"]:
            raise ConfigError(f"{w}num_codes and {w}grid_shape come from the VQ model ({g['num_codes']} codes on a "
                              f"{tuple(g['grid_shape'])} grid); do not override them")
        if c.num_classes:
            raise ConfigError(f"{w}num_classes: class-conditional code priors are not supported from the command "
                              "line (sampling would need labels)")
    if levels == 1 and cfg.prior_config.cond_codes:
        raise ConfigError("prior.cond_codes: a one-level VQ model has no conditioning grid")
    return cfg
