"""Typed, nested dataclass configs with strict parsing and dotted overrides.

Every component owns its defaults in a dataclass. A run's configuration is saved as
``config.json`` and read back with :func:`from_dict`, which rejects unknown keys and values
of the wrong type with a message naming the field, the expected type and what it got.

Example:
    >>> from aelab.protocol import model_config
    >>> cfg = apply_overrides(model_config("ae"), ["backbone.hidden=300,100", "latent_dim=8"])
    >>> cfg.backbone.hidden, cfg.latent_dim
    ((300, 100), 8)
    >>> apply_overrides(cfg, ["latent_dim=eight"])
    Traceback (most recent call last):
    ...
    aelab.config.ConfigError: latent_dim: expected int, got 'eight' (str)
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

from aelab.io import atomic_write_text

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert JSON forms (lists -> tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_type_name(tp)}), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected int, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {value!r} ({type(value).__name__})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {value!r} ({type(value).__name__})")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        msg = str(e)  # messages that already name the field (``trainer.lr must ...``) keep their name
        raise ConfigError(msg if where and msg.startswith(f"{where}.") else f"{where or cls.__name__}: {msg}") from None
    return obj


def to_dict(cfg: Any) -> Any:
    """JSON-ready form of a (nested) dataclass config."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value``: JSON if it parses, else a string."""
    lowered = text.strip()
    if lowered in ("none", "None", "null"):
        return None
    if lowered in ("true", "True"):
        return True
    if lowered in ("false", "False"):
        return False
    try:
        return json.loads(lowered)
    except json.JSONDecodeError:
        pass
    if "," in lowered:  # 512,256 -> [512, 256]
        return [parse_value(p) for p in lowered.split(",") if p.strip()]
    return text


def apply_overrides(cfg: C, overrides: list[str], where: str = "") -> C:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied and type-checked;
    ``where`` (e.g. ``trainer``) prefixes the field names in error messages."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r} in override {item!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            valid = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise ConfigError(f"unknown config key {key!r} in override {item!r}; valid keys here: {valid}")
        value = parse_value(raw)
        if isinstance(node[parts[-1]], (list, tuple)) and not isinstance(value, list) and value is not None:
            value = [value]  # --set model.hidden=512 means a one-layer tuple
        if isinstance(node[parts[-1]], str) and not isinstance(value, str) and value is not None:
            value = raw  # keep strings as typed, e.g. a schedule spec "linear(0,1,100)"
        node[parts[-1]] = value
    return from_dict(type(cfg), data, where)


def load_json(path: Any) -> Any:
    """Read a JSON file; invalid JSON is a :class:`ConfigError` naming the file and the position."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON text file (it holds bytes that are not UTF-8)") from None


def save_json(path: Any, obj: Any) -> None:
    """Write JSON atomically (temp file then rename)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def default_config(config_cls: type[C], overrides: dict[str, Any] | None = None, where: str = "config") -> C:
    """The default ``config_cls()`` updated with a mapping whose dict values update nested configs.

    Example:
        >>> from aelab.models.base import AEConfig
        >>> cfg = default_config(AEConfig, {"backbone": {"kind": "conv"}, "latent_dim": 8})
        >>> cfg.backbone.kind, cfg.backbone.channels, cfg.latent_dim
        ('conv', (32, 64, 64), 8)
    """
    data = to_dict(config_cls())
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k].update(v)
        else:
            data[k] = v
    return from_dict(config_cls, data, where)


def resolve_config(config_cls: type[C], cfg: Any, overrides: dict[str, Any], where: str, what: str) -> C:
    """A registered component's config: ``cfg`` (``None``: the defaults) updated with ``overrides``.

    Args:
        config_cls: the component's config dataclass.
        cfg: a config instance, or ``None`` for :func:`default_config` with nested ``overrides``.
        overrides: top-level fields replacing those of ``cfg``.
        where: the config section, for error messages (``model``, ``prior``).
        what: the component, for the type error (``model 'vae'``).
    """
    if cfg is None:
        cfg = default_config(config_cls, overrides, where)
    elif overrides:
        cfg = from_dict(config_cls, {**to_dict(cfg), **overrides}, where)
    if not isinstance(cfg, config_cls):
        raise ConfigError(f"{what} expects a {config_cls.__name__}, got {type(cfg).__name__}")
    return cfg

