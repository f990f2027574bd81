"""The user's own images: an ``.npz`` file (``npz``) or a folder of PNG/JPEG files (``folder``).

Both become :class:`~aelab.data.base.TensorImageDataset` splits of any ``H x W`` with 1 or 3
channels. Data without a test split get a seeded random 10% held out.

Example:
    >>> import numpy as np, tempfile, os
    >>> from aelab.data import DataConfig, load_data
    >>> path = os.path.join(tempfile.mkdtemp(), "mine.npz")
    >>> np.savez(path, x=np.random.rand(50, 12, 20))  # floats in [0, 1], no labels
    >>> splits = load_data(DataConfig(name="npz", path=path))
    >>> len(splits.train), len(splits.test), splits.info.shape
    (45, 5, (1, 12, 20))
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from aelab.config import ConfigError
from aelab.data.base import DataConfig, DatasetInfo, DataSplits, TensorImageDataset
from aelab.data.splits import split_indices
from aelab.registry import DATASETS

__all__ = ["IMAGE_SUFFIXES", "has_split_arrays", "images_to_uint8", "labels_to_int64", "read_image_folder", "read_npz"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.1


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file, never unpickling objects.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is truncated, corrupt or not an ``.npz`` (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        # Our own handle: np.load leaks the one it opens when the zip directory is corrupt.
        with open(path, "rb") as fh:
            obj = np.load(fh, allow_pickle=False)  # never unpickle: that could run code from the file
            if not isinstance(obj, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single .npy array, not an .npz archive")
            with obj:
                return {k: obj[k] for k in obj.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as e:
        raise ValueError(
            f"could not read {path}: {type(e).__name__}: {e} (is the file truncated, corrupt, or not an .npz?)"
        ) from e


def images_to_uint8(x: np.ndarray, key: str, source: str | os.PathLike) -> Tensor:
    """Convert an image array to uint8 ``(N, C, H, W)``.

    Layouts: ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1 or 3 (when
    both readings fit, channels-first wins). Values: uint8 (or other integers) in 0..255,
    booleans, or floats in ``[0, 1]``, which are rounded to 1/255 steps.

    Arguments:
        x: The array.
        key: Its name, for error messages.
        source: The file it came from, for error messages.

    Raises:
        ValueError: Unsupported layout, dtype or value range (the message names ``key``).
    """
    where = f"{source}: array {key!r}"
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] in (1, 3):
            pass
        elif x.shape[3] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        else:
            raise ValueError(
                f"{where} has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) with C in 1 or 3"
            )
    else:
        raise ValueError(f"{where} has shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if x.shape[0] == 0:
        raise ValueError(f"{where} holds no images")
    if min(x.shape[2:]) == 0:
        raise ValueError(f"{where} has shape {x.shape}: images of height or width 0")
    if x.dtype == np.uint8:
        out = x
    elif x.dtype == np.bool_:
        out = x.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{where} holds integers in [{lo}, {hi}]; expected 0..255 (or floats in [0, 1])")
        out = x.astype(np.uint8)
    elif np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{where} holds floats in [{lo:g}, {hi:g}]; expected [0, 1] "
                "(divide 0..255 data by 255, or store it as uint8)"
            )
        out = np.rint(x.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"{where} has dtype {x.dtype}; expected uint8, bool, integers or floats")
    out = np.ascontiguousarray(out)
    if not out.flags.writeable:  # torch.from_numpy warns on read-only buffers
        out = out.copy()
    return torch.from_numpy(out)


#: the most classes (or values of one factor) a user's labels may index: a class count sizes
#: probes and classifiers, so a stray 1e9 label must not become a billion-way output
MAX_CLASSES = 65_536


def labels_to_int64(y: np.ndarray, key: str, n: int, source: str | os.PathLike) -> Tensor:
    """Check and convert labels ``(N,)`` or factors ``(N, K)`` to int64."""
    where = f"{source}: array {key!r}"
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"{where} has shape {y.shape}; expected ({n},) or ({n}, K) to match the images")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{where} holds non-integer values; labels must be integers")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"{where} has dtype {y.dtype}; labels must be integers")
    if y.size and (y.min() < -1 or y.max() >= MAX_CLASSES):
        raise ValueError(f"{where} holds labels from {y.min()} to {y.max()}; expected class indices 0..K-1 with K "
                         f"at most {MAX_CLASSES:,} (-1 marks an unlabelled image)")
    return torch.from_numpy(np.ascontiguousarray(y.astype(np.int64)))


def _held_out(n: int, seed: int, source: str | os.PathLike) -> tuple[Tensor, Tensor]:
    """A seeded random train/test split of ``range(n)`` holding out ``TEST_FRACTION`` (at least
    one image, and at least one left to train on), each part sorted."""
    if n < 2:
        raise ValueError(f"{source}: need at least 2 images to hold out a test split, got {n}")
    return split_indices(n, seed, min(n - 1, max(1, round(n * TEST_FRACTION))))


def _info(
    name: str, shape: tuple[int, int, int], ys: list[Tensor], class_names: tuple[str, ...] | None = None
) -> DatasetInfo:
    y = torch.cat(ys)
    if class_names is not None:
        return DatasetInfo(name=name, shape=shape, num_classes=len(class_names), class_names=class_names)
    if y.numel() == 0 or (y.dim() == 1 and int(y.min()) < 0):
        return DatasetInfo(name=name, shape=shape)
    if y.dim() == 2:
        sizes = tuple(int(s) + 1 for s in y.amax(0).tolist())
        return DatasetInfo(
            name=name, shape=shape, factor_names=tuple(f"factor{i}" for i in range(len(sizes))), factor_sizes=sizes
        )
    return DatasetInfo(name=name, shape=shape, num_classes=int(y.max()) + 1)


def _user_path(cfg: DataConfig) -> Path:
    if cfg.path is None:
        raise ConfigError(f"data.path must name the file or folder to load for data set {cfg.name!r}")
    return Path(cfg.path).expanduser()


def _npz_split(arrays: dict[str, np.ndarray], key: str, ykey: str, path: Path) -> tuple[Tensor, Tensor]:
    x = images_to_uint8(arrays[key], key, path)
    if ykey in arrays:
        return x, labels_to_int64(arrays[ykey], ykey, x.shape[0], path)
    return x, torch.full((x.shape[0],), -1, dtype=torch.long)


def has_split_arrays(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> bool:
    """Whether an ``.npz`` brings its own split (``x_train`` and ``x_test``, with both or neither of
    ``y_train``/``y_test``); half a split is a :class:`ValueError` naming the file and its arrays."""
    if "x_train" not in arrays and "x_test" not in arrays:
        return False
    found = ", ".join(sorted(arrays)) or "none"
    for key in ("x_train", "x_test"):
        if key not in arrays:
            raise ValueError(f"{path}: has x_train or x_test but not {key!r} (arrays found: {found})")
    if ("y_train" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: give both y_train and y_test, or neither (arrays found: {found})")
    return True


@DATASETS.register("npz")
def build_npz(cfg: DataConfig) -> DataSplits:
    """Your own .npz (data.path): x_train/x_test (+ y_train/y_test), or x (+ y) split 90/10.

    Images may be ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with 1 or 3 channels,
    uint8 or floats in ``[0, 1]``. Missing labels are ``-1``.
    """
    path = _user_path(cfg)
    arrays = read_npz(path)
    found = ", ".join(sorted(arrays)) or "none"
    if has_split_arrays(arrays, path):
        x_tr, y_tr = _npz_split(arrays, "x_train", "y_train", path)
        x_te, y_te = _npz_split(arrays, "x_test", "y_test", path)
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise ValueError(
                f"{path}: x_train images are {tuple(x_tr.shape[1:])} (C, H, W) "
                f"but x_test images are {tuple(x_te.shape[1:])}"
            )
    elif "x" in arrays:
        x, y = _npz_split(arrays, "x", "y", path)
        tr, te = _held_out(x.shape[0], cfg.seed, path)
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    else:
        raise ValueError(f"{path}: expected arrays 'x_train' and 'x_test', or 'x' (arrays found: {found})")
    train, test = TensorImageDataset(x_tr, y_tr), TensorImageDataset(x_te, y_te)
    return DataSplits(train=train, test=test, info=_info("npz", train.shape, [y_tr, y_te]))


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    # Skip hidden files and folders (.DS_Store, .ipynb_checkpoints/...).
    return sorted(p for p in it if _is_image(p) and not any(s.startswith(".") for s in p.relative_to(folder).parts))


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")


def _channels(mode: str) -> int:
    return 1 if mode in _GRAY_MODES else 3


def _decode(path: Path) -> np.ndarray:
    """Pixels of one image as uint8 ``(C, H, W)``: grayscale stays 1 channel, others RGB."""
    with Image.open(path) as im:
        if im.mode in ("1", "L", "LA"):
            arr = np.array(im.convert("L"))
        elif im.mode.startswith("I"):  # 16-bit grayscale PNG: rescale, do not clip, to 8 bits
            wide = np.array(im).astype(np.int64)
            arr = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        else:  # RGB, RGBA (alpha dropped), palette, CMYK, ...
            arr = np.array(im.convert("RGB"))
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_image_folder(folder: str | os.PathLike) -> tuple[Tensor, Tensor, tuple[str, ...] | None, list[Path]]:
    """Read a folder of PNG/JPEG images, one class per sub-folder if it has sub-folders.

    Arguments:
        folder: The folder.

    Returns:
        uint8 images ``(N, C, H, W)``, int64 labels ``(N,)`` (``-1`` without sub-folders),
        the class names (sorted sub-folder names) or ``None``, and the files in order.

    Raises:
        FileNotFoundError: No such folder, or no images in it.
        ValueError: Images of different sizes or channel counts (naming two of them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [(d, _list_images(d, recursive=True)) for d in subdirs]
    classes = [(d, files) for d, files in classes if files]
    top = _list_images(folder, recursive=False)
    if classes and top:
        raise ValueError(
            f"{folder} has images both at its top level (e.g. {top[0].name}) and in class sub-folders "
            f"(e.g. {classes[0][0].name}/); put every image in a class sub-folder, or none"
        )
    if classes:
        files = [f for _, fs in classes for f in fs]
        labels = [i for i, (_, fs) in enumerate(classes) for _ in fs]
        class_names: tuple[str, ...] | None = tuple(d.name for d, _ in classes)
    else:
        files, labels, class_names = top, [-1] * len(top), None
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its sub-folders")

    # Check sizes and modes from the headers first: a mismatch fails fast, before decoding.
    ref: tuple[Path, tuple[int, int], str] | None = None
    for f in files:
        try:
            with Image.open(f) as im:
                size, mode = im.size, im.mode
        except OSError as e:
            raise ValueError(f"could not read image {f}: {e}") from e
        if ref is None:
            ref = (f, size, mode)
        elif size != ref[1] or _channels(mode) != _channels(ref[2]):
            raise ValueError(
                "all images must have the same size and mode: "
                f"{ref[0]} is {ref[1][0]}x{ref[1][1]} {ref[2]} but {f} is {size[0]}x{size[1]} {mode} (width x height)"
            )
    assert ref is not None
    (w, h), c = ref[1], _channels(ref[2])
    x = torch.empty(len(files), c, h, w, dtype=torch.uint8)
    for i, f in enumerate(files):
        try:
            x[i] = torch.from_numpy(np.ascontiguousarray(_decode(f)))  # np.array copies: writable
        except OSError as e:
            raise ValueError(f"could not decode image {f}: {e}") from e
    return x, torch.tensor(labels, dtype=torch.long), class_names, files


@DATASETS.register("folder")
def build_folder(cfg: DataConfig) -> DataSplits:
    """A folder of PNG/JPEG images (data.path), one class per sub-folder; 10% held out.

    All images must have the same size and mode; grayscale stays 1 channel, colour is RGB.
    """
    folder = _user_path(cfg)
    x, y, class_names, _ = read_image_folder(folder)
    tr, te = _held_out(x.shape[0], cfg.seed, folder)
    train, test = TensorImageDataset(x[tr], y[tr]), TensorImageDataset(x[te], y[te])
    return DataSplits(train=train, test=test, info=_info("folder", train.shape, [y], class_names))
