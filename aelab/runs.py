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
