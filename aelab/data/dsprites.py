"""dSprites, generated on demand: 737,280 binary 64x64 images of 2D shapes with known factors.

The five factors and their values are those of the original data set: shape (square,
ellipse, heart), scale (6 values in ``[0.5, 1]``), orientation (40 angles in ``[0, 2 pi)``),
and x and y position (32 values each in ``[0, 1]``). Every combination appears exactly once,
and the flat index is the mixed-radix number ``(shape, scale, orientation, posX, posY)``
with ``posY`` varying fastest, which is the order of the original ``.npz``.

Images are rendered per batch from the index with a few vectorized tensor operations
(inside tests of implicit curves at the pixel centres), so all 737,280 images are usable
while the data set holds nothing but an index permutation, and metrics can render images
for any chosen factors with :func:`render`.

Geometry (pixel units; the image spans ``[0, 64]`` and pixel ``(i, j)`` is the point
``(j + 0.5, i + 0.5)``): at scale 1 the square has side 20, the ellipse semi-axes 12 and 6,
and the heart is the curve ``(x^2 + y^2 - 1)^3 = x^2 y^3`` at 10 pixels per unit (about
23 x 22). Each shape rotates counter-clockwise (as displayed) about its centroid, which
moves from 15 to 49 as its position goes from 0 to 1: any shape at any scale and rotation
stays inside the frame. ``posX`` moves the shape right and ``posY`` moves it down. The
original generator was not published; these sizes were chosen to look like its images.

References:
    Matthey, Higgins, Hassabis and Lerchner. dSprites: Disentanglement testing Sprites
    dataset (2017). https://github.com/deepmind/dsprites-dataset

    Higgins et al. beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
    Framework (ICLR 2017).

Example:
    >>> import torch
    >>> factors = torch.tensor([[2, 5, 0, 16, 16]])  # a large upright heart in the middle
    >>> x = render(factors)
    >>> x.shape, sorted(x.unique().tolist())
    (torch.Size([1, 1, 64, 64]), [0.0, 1.0])
    >>> index_to_factors(factors_to_index(factors)).tolist()
    [[2, 5, 0, 16, 16]]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.data import factors
from aelab.data.base import DataConfig, DatasetInfo, DataSplits, ImageDataset
from aelab.data.splits import split_indices
from aelab.registry import DATASETS

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "NUM_IMAGES",
    "SHAPE_NAMES",
    "DSprites",
    "factor_values",
    "factors_to_index",
    "index_to_factors",
    "render",
    "sample_factors",
]

FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
NUM_IMAGES: int = math.prod(FACTOR_SIZES)  # 737,280
SIZE = 64
TEST_SIZE = 10_000

# Mixed-radix place values, posY fastest: (245760, 40960, 1024, 32, 1).
_STRIDES = tuple(math.prod(FACTOR_SIZES[i + 1 :]) for i in range(len(FACTOR_SIZES)))

# Centre range in pixels. The largest shape reaches 10 * sqrt(2) = 14.1 pixels from its
# centre (the square at 45 degrees), so centres in [15, 49] keep every shape in the frame.
_CENTRE_LO, _CENTRE_HI = 15.0, 49.0
# Per shape, pixels per local unit along the shape's own (u, v) axes at scale 1.
_HALF_EXTENT = ((10.0, 10.0), (12.0, 6.0), (10.0, 10.0))
# The heart curve's centroid sits at y = 0.2935 in its own units; rotating about it (not
# about the curve's origin) keeps the heart in place as it turns.
_HEART_CENTROID_Y = 0.2935


def factor_values() -> dict[str, Tensor]:
    """The value of each factor level: scale, orientation (radians) and positions in [0, 1].

    Example:
        >>> [round(s, 2) for s in factor_values()["scale"].tolist()]
        [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    """
    return {
        "shape": torch.arange(3, dtype=torch.float32),
        "scale": torch.linspace(0.5, 1.0, FACTOR_SIZES[1]),
        # Endpoint excluded: 2 pi is the same rotation as 0.
        "orientation": torch.arange(FACTOR_SIZES[2], dtype=torch.float64).mul(2 * math.pi / FACTOR_SIZES[2]).float(),
        "posX": torch.linspace(0.0, 1.0, FACTOR_SIZES[3]),
        "posY": torch.linspace(0.0, 1.0, FACTOR_SIZES[4]),
    }


def _tables() -> tuple[Tensor, Tensor, Tensor]:
    """Lookup tables, so that every image is computed from the same float32 constants
    whatever batch it is rendered in (bitwise deterministic)."""
    values = factor_values()
    theta = values["orientation"].double()
    cos, sin = torch.cos(theta), torch.sin(theta)  # (40,)
    scale = values["scale"].double()  # (6,)
    ext = torch.tensor(_HALF_EXTENT, dtype=torch.float64)  # (3, 2)
    su = (scale[None, :] * ext[:, None, 0])[:, :, None]  # (3, 6, 1) pixels per u unit
    sv = (scale[None, :] * ext[:, None, 1])[:, :, None]
    # u = (cos dx + sin dy) / su,  v = (-sin dx + cos dy) / sv, with dy pointing up.
    coef = torch.stack([cos / su, sin / su, -sin / sv, cos / sv], dim=-1)  # (3, 6, 40, 4)
    pixel = torch.arange(SIZE, dtype=torch.float64) + 0.5
    centre = _CENTRE_LO + values["posX"].double() * (_CENTRE_HI - _CENTRE_LO)  # (32,)
    dx = pixel[None, :] - centre[:, None]  # (32, 64) column offsets, right positive
    dy = centre[:, None] - pixel[None, :]  # (32, 64) row offsets, up positive
    return coef.float(), dx.float(), dy.float()


_TABLES: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {torch.device("cpu"): _tables()}


def _tables_on(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    # Copied once per device, so rendering on a GPU costs no host-to-device copy per batch.
    if device not in _TABLES:
        _TABLES[device] = tuple(t.to(device) for t in _TABLES[torch.device("cpu")])  # type: ignore[assignment]
    return _TABLES[device]


def factors_to_index(factors: Tensor) -> Tensor:
    """Flat index of each factor combination.

    Arguments:
        factors: int64 factor indices ``(..., 5)``.

    Returns:
        int64 indices ``(...)`` in ``[0, 737280)``.
    """
    factors = _check_factors(factors)
    strides = torch.tensor(_STRIDES, dtype=torch.long)
    return (factors * strides).sum(-1)


def index_to_factors(index: Tensor) -> Tensor:
    """Factor indices of each flat index (mixed-radix decoding).

    Arguments:
        index: int64 indices ``(...)`` in ``[0, 737280)``.

    Returns:
        int64 factor indices ``(..., 5)``.
    """
    index = torch.as_tensor(index, dtype=torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= NUM_IMAGES):
        raise IndexError(f"dSprites index out of range [0, {NUM_IMAGES}): {int(index.min())}..{int(index.max())}")
    out = []
    rest = index
    for size in reversed(FACTOR_SIZES):
        out.append(rest % size)
        rest = rest // size
    return torch.stack(out[::-1], dim=-1)


def sample_factors(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` factor combinations drawn uniformly and independently
    (:func:`aelab.data.factors.sample_factors` over dSprites' factor sizes).

    Arguments:
        n: The number of samples.
        generator: Source of randomness (for reproducible draws).

    Returns:
        int64 factor indices ``(n, 5)``.
    """
    return factors.sample_factors((n,), FACTOR_SIZES, generator)


def _check_factors(factors: Tensor) -> Tensor:
    factors = torch.as_tensor(factors)
    if factors.is_floating_point() or factors.shape[-1:] != (len(FACTOR_SIZES),):
        raise ValueError(
            f"factors must be integer indices of shape (..., 5), got {factors.dtype} {tuple(factors.shape)}"
        )
    factors = factors.long()
    if factors.numel():
        sizes = torch.tensor(FACTOR_SIZES)
        bad = (factors < 0) | (factors >= sizes)
        if bad.any():
            k = int(bad.reshape(-1, len(FACTOR_SIZES)).any(0).nonzero()[0])
            got = factors[..., k].unique().tolist()
            raise ValueError(f"factor {FACTOR_NAMES[k]!r} must be in [0, {FACTOR_SIZES[k]}), got values {got}")
    return factors


# Each test returns float 0/1 in place: an in-place float ``le_`` is about 8x faster on CPU
# than a comparison that allocates a bool tensor and converts it afterwards.
def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs_(), v.abs_()).le_(1.0)


def _ellipse(u: Tensor, v: Tensor) -> Tensor:
    return u.square_().add_(v.square_()).le_(1.0)


def _heart(u: Tensor, v: Tensor) -> Tensor:
    # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, the classic heart curve (lobes up, point down).
    x2 = u.square_()
    y2 = v.square()
    r = (x2 + y2).sub_(1.0)
    return r.mul(r).mul_(r).sub_(x2.mul_(y2).mul_(v)).le_(0.0)


_INSIDE = (_square, _ellipse, _heart)


def render(factors: Tensor) -> Tensor:
    """Render dSprites images for the given factor indices.

    Images are rendered on the device of ``factors``.

    Arguments:
        factors: int64 factor indices ``(B, 5)`` (shape, scale, orientation, posX, posY).

    Returns:
        float32 binary images ``(B, 1, 64, 64)``.
    """
    factors = _check_factors(factors)
    if factors.dim() != 2:
        raise ValueError(f"factors must have shape (B, 5), got {tuple(factors.shape)}")
    coef_table, dx_table, dy_table = _tables_on(factors.device)
    shape, scale, orient, px, py = factors.unbind(-1)
    coef = coef_table[shape, scale, orient]  # (B, 4)
    dx, dy = dx_table[px], dy_table[py]  # (B, 64) each: column and row offsets from the centre
    out = torch.empty(factors.shape[0], SIZE, SIZE, device=factors.device)
    for k, inside in enumerate(_INSIDE):
        sel = (shape == k).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        c, sx, sy = coef[sel], dx[sel], dy[sel]
        # Separable affine map: each big (n, 64, 64) tensor costs one broadcast add.
        u = (c[:, 0:1] * sx)[:, None, :] + (c[:, 1:2] * sy)[:, :, None]
        vy = c[:, 3:4] * sy
        if k == 2:
            vy = vy + _HEART_CENTROID_Y
        v = (c[:, 2:3] * sx)[:, None, :] + vy[:, :, None]
        out[sel] = inside(u, v)
    return out.unsqueeze(1)


class DSprites(ImageDataset):
    """dSprites, rendered on demand; a split is a list of flat indices.

    ``get_batch`` returns the images and their factor indices ``(B, 5)`` as ``y``. The object
    stores only its indices (int32, 4 bytes per image), never pixels.

    Arguments:
        indices: Flat indices of this split; ``None`` means all 737,280 in order.

    Example:
        >>> ds = DSprites()
        >>> b = ds.get_batch(torch.tensor([0, 737279]))
        >>> len(ds), b.x.shape, b.y.tolist()
        (737280, torch.Size([2, 1, 64, 64]), [[0, 0, 0, 0, 0], [2, 5, 39, 31, 31]])
    """

    shape = (1, SIZE, SIZE)
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    shape_names = SHAPE_NAMES

    render = staticmethod(render)
    factors_to_index = staticmethod(factors_to_index)
    index_to_factors = staticmethod(index_to_factors)
    sample_factors = staticmethod(sample_factors)

    def __init__(self, indices: Tensor | None = None) -> None:
        if indices is not None:
            indices = torch.as_tensor(indices)
            if indices.dim() != 1 or indices.is_floating_point():
                raise ValueError(f"indices must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}")
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= NUM_IMAGES):
                raise IndexError(f"dSprites indices must be in [0, {NUM_IMAGES})")
            indices = indices.to(torch.int32)
        self.indices = indices

    def __len__(self) -> int:
        return NUM_IMAGES if self.indices is None else int(self.indices.shape[0])

    def global_index(self, idx: Tensor) -> Tensor:
        """Flat dSprites indices of this split's positions ``idx``."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return idx if self.indices is None else self.indices[idx].long()

    def get_batch(self, idx: Tensor) -> Batch:
        factors = index_to_factors(self.global_index(idx))
        return Batch(render(factors), factors)

    def subset(self, idx: Tensor) -> DSprites:
        return DSprites(self.global_index(idx))

    def __repr__(self) -> str:
        return f"DSprites(n={len(self)})"


@DATASETS.register("dsprites")
def build_dsprites(cfg: DataConfig) -> DataSplits:
    """dSprites (2D shapes with 5 known factors), 64x64 binary, rendered on demand.

    A random test split of 10,000 images (seeded by ``cfg.seed``); the rest is train.
    """
    train, test = split_indices(NUM_IMAGES, cfg.seed, TEST_SIZE)
    info = DatasetInfo(
        name="dsprites",
        shape=DSprites.shape,
        factor_names=FACTOR_NAMES,
        factor_sizes=FACTOR_SIZES,
    )
    return DataSplits(train=DSprites(train), test=DSprites(test), info=info)
