"""Data sets: the real shared data, subsets, user npz files and image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.config import ConfigError, apply_overrides, from_dict
from aelab.data import (
    DataConfig,
    Subset,
    TensorImageDataset,
    default_root,
    load_data,
    read_image_folder,
)
from aelab.registry import DATASETS, UnknownNameError

DATA_DIR = Path(os.environ.get("AELAB_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.usefixtures("shared_data")  # fails (not skips) without the real data


@pytest.fixture(scope="module")
def fashion():
    return load_data(DataConfig(name="fashion-mnist", root=str(DATA_DIR)))


# --- real data ------------------------------------------------------------------------------


@needs_data
def test_fashion_mnist_loads_with_the_right_shapes_and_balanced_labels(fashion) -> None:
    assert len(fashion.train) == 60_000 and len(fashion.test) == 10_000
    assert fashion.info.shape == fashion.train.shape == fashion.test.shape == (1, 28, 28)
    assert fashion.info.num_classes == 10 and fashion.info.class_names[0] == "T-shirt/top"
    assert fashion.train.x.dtype == torch.uint8  # storage stays compact
    batch = fashion.train.get_batch(torch.arange(0, 60_000, 97))
    x, y = batch.x, batch.y
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(fashion.train.y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(fashion.test.y), torch.full((10,), 1000))


@needs_data
def test_subsets_are_random_and_reproducible() -> None:
    cfg = DataConfig(name="fashion-mnist", root=str(DATA_DIR), train_subset=100, test_subset=50, seed=3)
    a, b = load_data(cfg), load_data(cfg)
    assert len(a.train) == 100 and len(a.test) == 50
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    # The file is sorted by label: a "first 100" subset would hold one class.
    assert len(a.train.y.unique()) >= 6 and len(a.test.y.unique()) >= 5
    c = load_data(DataConfig(name="fashion-mnist", root=str(DATA_DIR), train_subset=100, seed=4))
    assert not torch.equal(a.train.x, c.train.x)


@needs_data
def test_subset_larger_than_the_split_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="test_subset=20000"):
        load_data(DataConfig(name="mnist-10k", root=str(DATA_DIR), test_subset=20_000))


@needs_data
def test_mnist_10k_loads() -> None:
    splits = load_data(DataConfig(name="mnist-10k", root=str(DATA_DIR)))
    assert (len(splits.train), len(splits.test)) == (8000, 2000)
    assert splits.info.num_classes == 10 and splits.train.shape == (1, 28, 28)
    assert "10,000" in DATASETS.describe("mnist-10k")


def test_missing_files_error_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    msg = str(e.value)
    for part in (str(tmp_path / "fashion-mnist"), "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "AELAB_DATA_DIR", "--set data.download=true"):
        assert part in msg


def test_default_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AELAB_DATA_DIR", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("AELAB_DATA_DIR")
    assert default_root() == Path.home() / ".cache" / "aelab" / "data"


def test_unknown_data_set_names_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_data(DataConfig(name="fashion-mnst"))


def test_data_config_round_trips_through_the_config_system() -> None:
    cfg = apply_overrides(DataConfig(), ["name=npz", "download=true", "train_subset=10", "path=/x/y.npz"])
    assert cfg == DataConfig(name="npz", download=True, train_subset=10, path="/x/y.npz")
    with pytest.raises(ConfigError, match="train_subset"):
        from_dict(DataConfig, {"train_subset": 0})


# --- in-memory data sets ---------------------------------------------------------------------


def test_tensor_dataset_keeps_uint8_and_scales_batches() -> None:
    x = torch.arange(6 * 3 * 2 * 5, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(6, 3, 2, 5)
    ds = TensorImageDataset(x, torch.arange(6))
    batch = ds.get_batch(torch.tensor([4, 1]))
    xb, yb = batch.x, batch.y
    assert torch.allclose(xb, x[[4, 1]].float() / 255) and yb.tolist() == [4, 1]
    sub = ds.subset(torch.tensor([5, 0]))
    assert isinstance(sub, TensorImageDataset) and sub.y.tolist() == [5, 0] and sub.x.dtype == torch.uint8
    view = Subset(ds, torch.tensor([2, 3, 4])).subset(torch.tensor([2]))
    assert view.get_batch(torch.tensor([0])).y.tolist() == [4]
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(x.float(), torch.arange(6))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        TensorImageDataset(x, torch.arange(5))


# --- user npz --------------------------------------------------------------------------------


def _images(n: int, h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    "layout",
    ["NHW-uint8", "NHW1-float", "NHWC-uint8", "NCHW-float", "NCHW1-uint8"],
)
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    gray = _images(30)  # (N, H, W) = (30, 12, 20)
    rgb = np.random.default_rng(1).integers(0, 256, size=(30, 3, 12, 20), dtype=np.uint8)
    expected, c = {
        "NHW-uint8": (gray, 1),
        "NHW1-float": (gray, 1),
        "NHWC-uint8": (rgb, 3),
        "NCHW-float": (rgb, 3),
        "NCHW1-uint8": (gray, 1),
    }[layout]
    stored = {
        "NHW-uint8": gray,
        "NHW1-float": gray[..., None] / 255.0,
        "NHWC-uint8": rgb.transpose(0, 2, 3, 1),
        "NCHW-float": rgb.astype(np.float32) / 255.0,
        "NCHW1-uint8": gray[:, None],
    }[layout]
    y = np.arange(30) % 4
    path = _npz(tmp_path, x_train=stored[:25], y_train=y[:25], x_test=stored[25:], y_test=y[25:])
    splits = load_data(DataConfig(name="npz", path=path))
    assert splits.info.shape == (c, 12, 20) and splits.info.num_classes == 4
    assert torch.equal(splits.train.x, torch.from_numpy(expected[:25].reshape(25, c, 12, 20)))
    assert splits.test.y.tolist() == y[25:].tolist()


def test_npz_single_x_is_split_90_10_with_the_seed(tmp_path: Path) -> None:
    x = _images(50, 7, 9)
    path = _npz(tmp_path, x=x)
    a = load_data(DataConfig(name="npz", path=path, seed=1))
    b = load_data(DataConfig(name="npz", path=path, seed=1))
    c = load_data(DataConfig(name="npz", path=path, seed=2))
    assert (len(a.train), len(a.test)) == (45, 5)
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    # Train and test partition the file's images.
    rows = torch.cat([a.train.x, a.test.x]).reshape(50, -1)
    assert len({tuple(r.tolist()) for r in rows}) == 50
    assert (a.train.y == -1).all() and a.info.num_classes is None


def test_truncated_npz_names_the_file(tmp_path: Path) -> None:
    path = Path(_npz(tmp_path, x=_images(40)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="mine.npz"):
        load_data(DataConfig(name="npz", path=str(path)))


def test_npz_float_out_of_range_names_the_key_and_range(tmp_path: Path) -> None:
    path = _npz(tmp_path, x_train=_images(5).astype(np.float32), x_test=_images(5).astype(np.float32))
    with pytest.raises(ValueError, match=r"'x_train' holds floats in \[0, 255\]"):
        load_data(DataConfig(name="npz", path=path))


def test_npz_bad_keys_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arrays found: images"):
        load_data(DataConfig(name="npz", path=_npz(tmp_path, images=_images(5))))
    with pytest.raises(ConfigError, match="data.path"):
        load_data(DataConfig(name="npz"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_data(DataConfig(name="npz", path=str(tmp_path / "nope.npz")))


# --- image folders ---------------------------------------------------------------------------


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_with_class_subfolders_of_non_square_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = {}
    for cls, n in (("dog", 6), ("cat", 14)):
        for i in range(n):
            arr = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)  # H=12, W=20
            pixels[(cls, i)] = arr
            _save(tmp_path / cls / f"{i:02d}.png", arr)
    (tmp_path / "notes.txt").write_text("not an image")
    x, y, names, files = read_image_folder(tmp_path)
    assert names == ("cat", "dog") and x.shape == (20, 1, 12, 20)
    assert y.tolist() == [0] * 14 + [1] * 6
    assert torch.equal(x[14, 0], torch.from_numpy(pixels[("dog", 0)]))
    splits = load_data(DataConfig(name="folder", path=str(tmp_path), seed=5))
    assert (len(splits.train), len(splits.test)) == (18, 2)
    assert splits.info.shape == (1, 12, 20) and splits.info.class_names == ("cat", "dog")


def test_folder_colour_images_are_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    _save(tmp_path / "a.png", rgb)
    _save(tmp_path / "b.png", np.concatenate([rgb, np.full((9, 11, 1), 7, np.uint8)], -1))  # RGBA
    x, y, names, _ = read_image_folder(tmp_path)
    assert x.shape == (2, 3, 9, 11) and names is None and y.tolist() == [-1, -1]
    assert torch.equal(x[0], torch.from_numpy(rgb).permute(2, 0, 1)) and torch.equal(x[0], x[1])


def test_folder_of_mixed_sizes_names_two_files(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "small.png", np.zeros((12, 20), np.uint8))
    _save(tmp_path / "b" / "big.png", np.zeros((13, 20), np.uint8))
    with pytest.raises(ValueError, match=r"small\.png is 20x12.*big\.png is 20x13"):
        load_data(DataConfig(name="folder", path=str(tmp_path)))


def test_folder_of_mixed_modes_and_empty_folder(tmp_path: Path) -> None:
    _save(tmp_path / "gray.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path / "rgb.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"gray\.png is 4x4 L.*rgb\.png is 4x4 RGB"):
        read_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        read_image_folder(tmp_path / "empty")
