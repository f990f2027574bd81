"""Atomic writes: all or nothing, with ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from aelab.io import atomic_write_text


def test_atomic_write_replaces_and_respects_umask(tmp_path):
    path = tmp_path / "f.json"
    old = os.umask(0o022)
    try:
        atomic_write_text(path, "one")
        atomic_write_text(path, "two")
    finally:
        os.umask(old)
    assert path.read_text() == "two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    from aelab.io import atomic_open

    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_saved_weights_have_the_mode_of_config_json(tmp_path):
    """safetensors' save_file replaces the temporary file with a 0600 one; the rename must not keep that."""
    import torch

    from aelab.data.base import TensorImageDataset
    from aelab.models import build_model
    from aelab.training.trainer import Trainer, TrainerConfig

    old = os.umask(0o022)
    try:
        model = build_model("ae", image_shape=(1, 4, 4), latent_dim=2, backbone={"hidden": (4,)})
        data = TensorImageDataset(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
        Trainer(model, data, None, TrainerConfig(epochs=1, images=False, progress=False), run_dir=tmp_path).save()
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["config.json"] == 0o644
    assert modes["model.safetensors"] == modes["config.json"], modes
    assert modes["trainer_state.safetensors"] == modes["config.json"], modes
