"""Data sets: Fashion-MNIST, MNIST, dSprites (generated on demand), text, sequences (moving MNIST,
an oscillator) and the user's own files.

Every data set is registered by name in :data:`aelab.registry.DATASETS` and built through
:func:`load_data` from a :class:`DataConfig`. A split (:class:`Split`; images:
:class:`ImageDataset`) serves whole batches as :class:`Batch` structures: ``x`` float32
``(B, C, H, W)`` in ``[0, 1]`` and ``y`` integer labels or factors.

Example:
    >>> import torch
    >>> from aelab.data import DataConfig, load_data
    >>> splits = load_data(DataConfig(name="dsprites", test_subset=100))
    >>> b = splits.test.get_batch(torch.arange(8))
    >>> b.x.shape, b.y.shape, splits.info.factor_names
    (torch.Size([8, 1, 64, 64]), torch.Size([8, 5]), ('shape', 'scale', 'orientation', 'posX', 'posY'))
"""

from aelab.batch import Batch
from aelab.data import download, dsprites, images, local, pinwheel, sequences, text  # noqa: F401  (registers the data sets)
from aelab.data.base import (
    DataConfig,
    DatasetInfo,
    DataSplits,
    ImageDataset,
    Split,
    Subset,
    TensorImageDataset,
    default_root,
    load_data,
    random_subset_indices,
)
from aelab.data.download import ChecksumError, DownloadError, Resources, download_file
from aelab.data.dsprites import DSprites, factors_to_index, index_to_factors, render, sample_factors
from aelab.data.images import parse_idx, read_idx
from aelab.data.local import read_image_folder, read_npz
from aelab.data.sequences import (
    MovingMNIST,
    OscillatorDynamics,
    SequenceSplit,
    kalman_predict,
    roll_frames,
)

__all__ = [
    "Batch",
    "ChecksumError",
    "DSprites",
    "DataConfig",
    "DataSplits",
    "DatasetInfo",
    "DownloadError",
    "ImageDataset",
    "MovingMNIST",
    "OscillatorDynamics",
    "Resources",
    "SequenceSplit",
    "Split",
    "Subset",
    "TensorImageDataset",
    "default_root",
    "download_file",
    "factors_to_index",
    "index_to_factors",
    "kalman_predict",
    "load_data",
    "parse_idx",
    "random_subset_indices",
    "read_idx",
    "read_image_folder",
    "read_npz",
    "render",
    "roll_frames",
    "sample_factors",
]
