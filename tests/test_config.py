"""Configs: strict parsing, dotted overrides, clear errors."""

from __future__ import annotations

import pytest

from aelab.config import ConfigError, apply_overrides, from_dict, to_dict
from aelab.models import build_model, model_config
from aelab.registry import UnknownNameError
from aelab.runs import RunConfig
from aelab.training.trainer import TrainerConfig


def test_overrides_are_typed():
    cfg = RunConfig(model="sparse_ae").with_overrides(
        ["model.latent_dim=16", "model.backbone.hidden=300,200", "model.rho=0.1", "trainer.grad_clip=none",
         "trainer.lr=3e-4", "data.train_subset=100", "model.backbone.kind=conv"])
    assert cfg.model_config.latent_dim == 16 and cfg.model_config.backbone.hidden == (300, 200)
    assert cfg.model_config.rho == 0.1 and cfg.trainer.grad_clip is None and cfg.trainer.lr == 3e-4
    assert cfg.data.train_subset == 100 and cfg.model_config.backbone.kind == "conv"
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_single_width_override_is_a_tuple():
    cfg = apply_overrides(model_config("ae"), ["backbone.hidden=512"])
    assert cfg.backbone.hidden == (512,)


@pytest.mark.parametrize(("override", "message"), [
    ("model.latent_dimm=3", "unknown config key 'latent_dimm'"),
    ("model.latent_dim=abc", "latent_dim: expected int, got 'abc'"),
    ("trainer.epochs=2.5", "trainer.epochs|epochs: expected int"),
    ("model.backbone.hidden=a,b", r"hidden\[0\]: expected int"),
    ("trainer.progress=maybe", "progress: expected bool"),
    ("epochs=3", "must start with model., data. or trainer."),
    ("model.rho=0.3", "unknown config key 'rho'"),  # ae has no rho
])
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(model="ae").with_overrides([override])


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="unknown model .sparse.*registered models: ae, .*did you mean"):
        build_model("sparse")


def test_from_dict_rejects_unknown_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown config key 'trainer.epoch'"):
        from_dict(TrainerConfig, {"epoch": 3}, "trainer")
    with pytest.raises(ConfigError, match="trainer.lr: expected float, got '1e-3'"):
        from_dict(TrainerConfig, {"lr": "1e-3"}, "trainer")
    with pytest.raises(ConfigError, match="k must be in"):
        build_model("ksparse_ae", k=100)


def test_to_dict_is_json_ready():
    import json

    json.dumps(to_dict(RunConfig(model="dae").to_dict()))
