"""Property-based tests: random settings, command lines and data files end in a run or in one line
of error naming the problem, never in a traceback.

Hypothesis profiles: ``ci`` (the default, small: the suite stays near two minutes) and ``thorough``
(``HYPOTHESIS_PROFILE=thorough pytest tests/test_properties.py``).
"""

from __future__ import annotations

import io
import math
import os
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aelab.cli import main
from aelab.config import ConfigError, to_dict
from aelab.data.base import DataConfig, load_data
from aelab.registry import MODELS, UnknownNameError
from aelab.runs import RunConfig

settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

IMAGE_MODELS = [n for n in MODELS.names() if MODELS.get(n).figures == "images"]


def _fields(prefix: str, d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out += _fields(f"{prefix}.{k}", v) if isinstance(v, dict) else [f"{prefix}.{k}"]
    return out


def _keys(model: str) -> list[str]:
    cfg = RunConfig(model=model).to_dict()
    keys = _fields("model", cfg["model_config"]) + _fields("data", cfg["data"]) + _fields("trainer", cfg["trainer"])
    return keys + ["model.no_such_field", "trainer.epoch", "nosection.x", "trainer"]


VALUES = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    st.sampled_from(["0", "-1", "1", "nan", "inf", "-inf", "1e38", "1e-300", "none", "true", "false", "[]", "{}",
                     "linear(0,1,0)", "cyclical(0,1,0)", "cyclical(0,1,10,0)", "cosine(1,0,-5)", "linear(0,1",
                     "3,4", "mlp", "conv", "bernoulli", "gaussian", "fp32", "bf16", "cuda:7", "\u00e9", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)


@given(model=st.sampled_from(IMAGE_MODELS), data=st.data())
def test_any_override_is_a_valid_config_or_a_config_error(model, data):
    key = data.draw(st.sampled_from(_keys(model)))
    value = data.draw(VALUES)
    try:
        cfg = RunConfig(model=model).with_overrides([f"{key}={value}"])
    except (ConfigError, UnknownNameError) as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    # what was accepted round-trips through config.json's form and has sane numbers
    again = RunConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    t = cfg.trainer
    assert t.epochs >= 1 and t.batch_size >= 1 and t.lr > 0 and math.isfinite(t.lr)
    assert t.grad_clip is None or t.grad_clip > 0
    assert t.max_steps is None or t.max_steps >= 1
    assert to_dict(cfg.model_config).get("latent_dim", 1) >= 1


@given(model=st.sampled_from(IMAGE_MODELS + ["pixelcnn", "nope"]), data=st.data())
def test_any_command_line_ends_in_a_run_or_one_line(model, data, tmp_path_factory, capsys):
    """``aelab train MODEL --set K=V`` on a data file that is not there: the settings are checked
    (one line if bad) and then the missing file is named; never a traceback."""
    key = data.draw(st.sampled_from(_keys(model if model in MODELS else "ae")))
    value = data.draw(VALUES)
    out = tmp_path_factory.mktemp("run")
    argv = ["--threads", "1", "train", model, "--data", "npz", "--set", f"{key}={value}",
            "--set", f"data.path={out / 'missing.npz'}", "--out", str(out / "r")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aelab: error: "), (argv, err)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


ARRAYS = st.fixed_dictionaries({
    "x_shape": st.lists(st.integers(0, 7), min_size=1, max_size=5),
    "x_dtype": st.sampled_from(["uint8", "float32", "float64", "int64", "bool", "int8", "complex64", "U3"]),
    "nan": st.booleans(),
    "labels": st.sampled_from(["none", "ok", "huge", "negative", "float", "short"]),
    "cut": st.sampled_from([None, 0.0, 0.3, 0.9]),
    "names": st.sampled_from([("x",), ("x_train", "x_test"), ("x_train",), ("images",)]),
})


@given(spec=ARRAYS)
def test_any_npz_file_loads_or_is_named_in_one_error(spec, tmp_path_factory):
    rng = np.random.default_rng(0)
    shape = tuple(spec["x_shape"])
    if spec["x_dtype"] == "U3":
        x = np.full(shape, "abc")
    else:
        x = (rng.random(shape) * 255).astype(spec["x_dtype"])
        if spec["nan"] and x.dtype.kind == "f" and x.size:
            x.flat[0] = np.nan
    arrays = {name: x for name in spec["names"]}
    n = shape[0]
    labels = {"ok": np.arange(n) % 3, "huge": np.full(n, 10**9), "negative": np.full(n, -5),
              "float": np.full(n, 0.5), "short": np.zeros(max(n - 1, 0), dtype=int)}.get(spec["labels"])
    if labels is not None:
        arrays |= {("y" if name == "x" else name.replace("x", "y", 1)): labels for name in spec["names"]}
    data = _npz_bytes(arrays)
    if spec["cut"] is not None:
        data = data[: int(len(data) * spec["cut"])]
    path = tmp_path_factory.mktemp("npz") / "user.npz"
    path.write_bytes(data)
    try:
        splits = load_data(DataConfig(name="npz", path=str(path)))
    except (ValueError, OSError, ConfigError, zipfile.BadZipFile) as e:
        msg = str(e)
        assert str(path) in msg or "user.npz" in msg, msg
        assert "\n" not in msg.strip()
        return
    assert len(splits.train) >= 1 and len(splits.test) >= 1
    b = splits.train.get_batch(torch.arange(min(2, len(splits.train))))
    assert b.x.dtype.is_floating_point and bool(b.x.isfinite().all())
    if splits.info.num_classes is not None:
        assert splits.info.num_classes <= 65_536


@pytest.mark.parametrize("cut", [0, 10, 100])
def test_a_truncated_npz_names_the_file(tmp_path, cut):
    path = tmp_path / "d.npz"
    path.write_bytes(_npz_bytes({"x": np.zeros((4, 5, 5), np.uint8)})[:cut])
    with pytest.raises((ValueError, OSError), match="d.npz"):
        load_data(DataConfig(name="npz", path=str(path)))
