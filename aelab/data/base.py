"""Data split interface, typed data config and the one entry point :func:`load_data`.

A data set here is one split that hands out whole batches as :class:`~aelab.batch.Batch`
structures: the trainer draws index tensors and calls :meth:`Split.get_batch`, so in-memory data
sets answer with one indexing operation and generated ones (dSprites) render the batch in one
vectorized call. There is no per-example ``__getitem__`` and no ``DataLoader`` worker machinery to
configure. Images, token sequences and frame sequences are all splits; image splits
(:class:`ImageDataset`) also know their image ``shape``.

Example:
    >>> import torch
    >>> x = torch.randint(0, 256, (10, 1, 4, 6), dtype=torch.uint8)
    >>> ds = TensorImageDataset(x, torch.arange(10) % 2)
    >>> b = ds.get_batch(torch.tensor([0, 3]))
    >>> b.x.shape, b.x.dtype, b.y.tolist()
    (torch.Size([2, 1, 4, 6]), torch.float32, [0, 1])
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.registry import DATASETS

__all__ = [
    "DataConfig",
    "DataSplits",
    "DatasetInfo",
    "FloatTensorDataset",
    "ImageDataset",
    "Split",
    "Subset",
    "TensorImageDataset",
    "default_root",
    "epoch_order",
    "load_data",
    "random_subset",
    "random_subset_indices",
]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of ``n`` examples in epoch ``epoch`` of a run seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class Split(abc.ABC):
    """One split of a data set, served a :class:`~aelab.batch.Batch` at a time."""

    def order(self, seed: int, epoch: int, batch_size: int) -> Tensor:
        """The order in which training visits the examples in ``epoch``: consecutive runs of
        ``batch_size`` form the batches. A pure function of ``(seed, epoch)`` so a resumed run
        replays it; the default is a uniform shuffle (:func:`epoch_order`), and a split may group
        examples, e.g. token sequences by length so batches carry little padding."""
        return epoch_order(len(self), seed, epoch)

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def get_batch(self, idx: Tensor) -> Batch:
        """Return the examples at ``idx`` (int64 indices into this split, shape ``(B,)``)."""

    @abc.abstractmethod
    def subset(self, idx: Tensor) -> Split:
        """Return the split restricted to ``idx`` (in that order)."""


class ImageDataset(Split):
    """One split of an image data set.

    ``get_batch`` returns a :class:`~aelab.batch.Batch` with ``x`` float32 images ``(B, C, H, W)``
    in ``[0, 1]`` and ``y`` int64 class labels ``(B,)`` (``-1`` where the data has none) or, for
    factor data sets, int64 factor indices ``(B, K)``.

    Attributes:
        shape: The shape ``(C, H, W)`` of one image.
    """

    shape: tuple[int, int, int]


class TensorImageDataset(ImageDataset):
    """An in-memory split: uint8 images and integer labels.

    Images stay uint8 (a quarter of float32's memory) and are converted per batch.

    Arguments:
        x: uint8 images ``(N, C, H, W)``.
        y: int64 labels ``(N,)`` or factors ``(N, K)``; ``-1`` marks unlabelled data.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 of shape (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape (N,) or (N, K) with N = {x.shape[0]}, got {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must hold integers, got {y.dtype}")
        self.x = x
        self.y = y.long()
        self.shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        # index_select copies whole rows (about 3x faster than x[idx]'s element-wise gather);
        # uint8 / float promotes to float32 in one operation (the same values as .float() / 255)
        return Batch(torch.div(self.x.index_select(0, idx), 255.0), self.y.index_select(0, idx))

    def subset(self, idx: Tensor) -> TensorImageDataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorImageDataset(self.x[idx], self.y[idx])

    def __repr__(self) -> str:
        return f"TensorImageDataset(n={len(self)}, shape={self.shape})"


class FloatTensorDataset(ImageDataset):
    """An in-memory split of real-valued data ``(N, C, H, W)`` float32 (e.g. 2-D points as
    ``(N, 1, 1, 2)``), for data that are not 8-bit images; ``get_batch`` returns it unscaled.

    Arguments:
        x: float images or vectors shaped ``(N, C, H, W)``.
        y: int64 labels ``(N,)`` or factors ``(N, K)``.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if not x.is_floating_point() or x.dim() != 4:
            raise ValueError(f"x must be float of shape (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape (N,) or (N, K) with N = {x.shape[0]}, got {tuple(y.shape)}")
        self.x, self.y = x.float(), y.long()
        self.shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        return Batch(self.x.index_select(0, idx), self.y.index_select(0, idx))

    def subset(self, idx: Tensor) -> FloatTensorDataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return FloatTensorDataset(self.x[idx], self.y[idx])


class Subset(ImageDataset):
    """A view of an image split at ``indices``, for data sets that cannot index themselves cheaply.

    Arguments:
        dataset: The underlying split.
        indices: int64 indices into ``dataset``.
    """

    def __init__(self, dataset: ImageDataset, indices: Tensor) -> None:
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.shape = dataset.shape

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        return self.dataset.get_batch(self.indices[idx])

    def subset(self, idx: Tensor) -> Subset:
        return Subset(self.dataset, self.indices[torch.as_tensor(idx, dtype=torch.long)])


@dataclass
class DatasetInfo:
    """What a model or metric needs to know about a data set besides its images.

    Attributes:
        name: The registered name.
        shape: The shape of one example's ``x``: ``(C, H, W)`` for images, ``(T,)`` for padded
            token sequences of at most ``T`` tokens, ``(T, C, H, W)`` for frame sequences.
        num_classes: Number of classes, ``None`` for unlabelled or factor data.
        class_names: One name per class, where known.
        factor_names: For factor data sets (dSprites), the name of each column of ``y``.
        factor_sizes: The number of values of each factor.
        vocab: For text, the :class:`aelab.data.text.Vocab` built from the training split.
        notes: What loading changed or left out (e.g. sentences truncated), to tell the user.
        dynamics: For generated sequence data sets, the true parameters of the process (e.g.
            :class:`aelab.data.sequences.OscillatorDynamics`), for evaluation against the optimal
            filter; ``None`` otherwise.
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    factor_names: tuple[str, ...] | None = None
    factor_sizes: tuple[int, ...] | None = None
    vocab: Any = None
    notes: tuple[str, ...] = ()
    dynamics: Any = None


@dataclass
class DataSplits:
    """The train and test splits of one data set, with its :class:`DatasetInfo`, and an optional
    validation split (the per-epoch evaluation runs on it where there is one, so that choosing a
    setting never looks at the test split)."""

    train: Split
    test: Split
    info: DatasetInfo
    valid: Split | None = None


@dataclass
class DataConfig:
    """Which data to load; stored in a run's ``config.json`` under ``"data"``.

    Attributes:
        name: A registered data set (``aelab.registry.DATASETS``).
        root: Data directory. ``None`` means ``$AELAB_DATA_DIR``, else ``~/.cache/aelab/data``.
        path: The user's file or folder, for ``npz`` and ``folder``.
        train: The user's training file, for ``text`` (one sentence a line).
        test: The user's test file, for ``text``.
        valid: The user's optional validation file, for ``text``: the per-epoch evaluation of a
            training run is done on it instead of the test file.
        max_len: Text: the most tokens a sentence may have (without ``<eos>``).
        overlong: Text: ``truncate`` or ``drop`` longer sentences (each counted and reported).
        min_count: Text: words seen fewer times in the training split become ``<unk>``.
        max_vocab: Text: keep at most this many words (the most frequent), specials included.
        download: Allow fetching the canonical files of ``mnist`` / ``fashion-mnist``.
        train_subset: Size of a random (seeded) subset of the train split; ``None`` keeps all.
        test_subset: Same for the test split.
        seed: Seed of the subsets and of generated train/test splits.
        frames: ``moving-mnist`` and ``oscillator``: frames per sequence, at least 2.
        speed: ``moving-mnist``: pixels per step, the least and the most (inclusive, drawn
            uniformly per sequence), ``1 <= min <= max``.
        directions: ``moving-mnist``: ``both`` (drawn per digit), ``left`` or ``right``.
        digits: ``moving-mnist``: digits per sequence, 1 or 2.
        digit_source: ``moving-mnist``: the digits' data set, ``mnist-10k`` (the shared 8k/2k
            subset) or ``mnist`` (the official 60k/10k split; ``data.download`` fetches it).
        start: ``moving-mnist``: ``zero`` (frame 0 shows each digit where MNIST has it, the public
            protocol) or ``random`` (a uniform initial shift per digit).
        sequences: ``oscillator``: number of train sequences; ``None`` means 10,000 (the test
            split has 1,000).
    """

    name: str = "dsprites"
    root: str | None = None
    path: str | None = None
    train: str | None = None
    test: str | None = None
    valid: str | None = None
    max_len: int = 64
    overlong: str = "truncate"
    min_count: int = 1
    max_vocab: int | None = None
    download: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    seed: int = 0
    frames: int = 20
    speed: tuple[int, int] = (1, 1)
    directions: str = "both"
    digits: int = 1
    digit_source: str = "mnist-10k"
    start: str = "zero"
    sequences: int | None = None

    def __post_init__(self) -> None:
        if self.max_len < 1 or self.min_count < 1 or (self.max_vocab is not None and self.max_vocab < 5):
            raise ConfigError(f"data.max_len and data.min_count must be >= 1 and data.max_vocab >= 5 or None, got "
                              f"{self.max_len}, {self.min_count}, {self.max_vocab}")
        if self.overlong not in ("truncate", "drop"):
            raise ConfigError(f"data.overlong: expected 'truncate' or 'drop', got {self.overlong!r}")
        if self.valid is not None and self.name != "text":
            raise ConfigError(f"data.valid is a file of the 'text' data set (with data.train and data.test); "
                              f"data set {self.name!r} has no validation file")
        for key in ("train_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"data.{key} must be a positive int or None, got {value}")
        if self.frames < 2:
            raise ConfigError(f"data.frames: a sequence needs at least 2 frames, got {self.frames}")
        if not isinstance(self.speed, (tuple, list)) or len(self.speed) != 2:
            raise ConfigError(f"data.speed: expected [min, max] pixels per step, got {self.speed!r}")
        self.speed = (self.speed[0], self.speed[1])
        if not 1 <= self.speed[0] <= self.speed[1]:
            raise ConfigError(f"data.speed: expected [min, max] with 1 <= min <= max, got {list(self.speed)}")
        if self.directions not in ("both", "left", "right"):
            raise ConfigError(f"data.directions: expected 'both', 'left' or 'right', got {self.directions!r}")
        if self.digit_source not in ("mnist-10k", "mnist"):
            raise ConfigError(f"data.digit_source: expected 'mnist-10k' or 'mnist', got {self.digit_source!r}")
        if self.start not in ("zero", "random"):
            raise ConfigError(f"data.start: expected 'zero' or 'random', got {self.start!r}")
        if self.digits not in (1, 2):
            raise ConfigError(f"data.digits: expected 1 or 2 digits per sequence, got {self.digits}")
        if self.sequences is not None and self.sequences < 1:
            raise ConfigError(f"data.sequences must be a positive int or None, got {self.sequences}")


def default_root() -> Path:
    """The data directory used when ``DataConfig.root`` is ``None``.

    ``$AELAB_DATA_DIR`` when set, else ``~/.cache/aelab/data``.
    """
    env = os.environ.get("AELAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/aelab/data").expanduser()


def resolve_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as a path, or :func:`default_root`."""
    return Path(cfg.root).expanduser() if cfg.root is not None else default_root()


def random_subset_indices(n: int, k: int, seed: int) -> Tensor:
    """``k`` distinct indices out of ``n``, drawn at random with ``seed``.

    Never "the first ``k``": the shared files are sorted by label, so a prefix would hold
    one or two classes.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k]


def random_subset(data: Split, limit: int | None, seed: int) -> Split:
    """``data`` itself, or a seeded random subset of ``limit`` examples (never the first N:
    the built-in splits are sorted by label)."""
    if limit is None or limit >= len(data):
        return data
    if limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    return data.subset(random_subset_indices(len(data), limit, seed))


def _take_subset(ds: ImageDataset, k: int | None, seed: int, key: str) -> ImageDataset:
    if k is None:
        return ds
    if k > len(ds):
        raise ConfigError(f"data.{key}={k} is larger than the split ({len(ds)} examples)")
    return ds.subset(random_subset_indices(len(ds), k, seed))


def load_data(cfg: DataConfig) -> DataSplits:
    """Build the registered data set ``cfg.name`` and apply the configured subsets.

    Arguments:
        cfg: The data config.

    Returns:
        The train and test splits and their info.

    Raises:
        aelab.registry.UnknownNameError: ``cfg.name`` is not registered.
        FileNotFoundError: The files are missing (the message says where it looked).

    Example:
        >>> splits = load_data(DataConfig(name="dsprites", train_subset=64))
        >>> len(splits.train), splits.info.shape
        (64, (1, 64, 64))
    """
    build = DATASETS.get(cfg.name)
    splits: DataSplits = build(cfg)
    # Distinct streams for the two splits, so equal sizes do not pick the same positions.
    train = _take_subset(splits.train, cfg.train_subset, cfg.seed, "train_subset")
    test = _take_subset(splits.test, cfg.test_subset, cfg.seed + 1, "test_subset")
    return DataSplits(train=train, test=test, info=splits.info, valid=splits.valid)
