"""dSprites generated on demand: indexing, determinism, geometry and memory."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from aelab.data import DataConfig, DSprites, factors_to_index, index_to_factors, load_data, render, sample_factors
from aelab.data.dsprites import FACTOR_SIZES, NUM_IMAGES


def _one(shape: int = 0, scale: int = 5, orient: int = 0, px: int = 16, py: int = 16) -> torch.Tensor:
    return render(torch.tensor([[shape, scale, orient, px, py]]))[0, 0]


def _centre_of_mass(img: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.nonzero(img, as_tuple=True)
    return float(rows.float().mean()), float(cols.float().mean())


def test_size_and_splits() -> None:
    assert len(DSprites()) == NUM_IMAGES == 737_280 == math.prod(FACTOR_SIZES)
    a = load_data(DataConfig(name="dsprites", seed=0))
    b = load_data(DataConfig(name="dsprites", seed=0))
    c = load_data(DataConfig(name="dsprites", seed=1))
    assert (len(a.train), len(a.test)) == (NUM_IMAGES - 10_000, 10_000)
    assert torch.equal(a.test.indices, b.test.indices) and not torch.equal(a.test.indices, c.test.indices)
    both = torch.cat([a.train.indices, a.test.indices]).long()
    assert torch.equal(both.sort().values, torch.arange(NUM_IMAGES))  # disjoint and complete
    assert a.info.factor_names == ("shape", "scale", "orientation", "posX", "posY")
    assert a.info.factor_sizes == (3, 6, 40, 32, 32) and a.info.shape == (1, 64, 64)


def test_factor_index_round_trip() -> None:
    idx = torch.arange(NUM_IMAGES)
    factors = index_to_factors(idx)
    assert factors.shape == (NUM_IMAGES, 5)
    assert torch.equal(factors.amax(0), torch.tensor(FACTOR_SIZES) - 1)
    assert torch.equal(factors_to_index(factors), idx)
    # posY varies fastest, shape slowest, as in the original file.
    assert factors[1].tolist() == [0, 0, 0, 0, 1] and factors[32].tolist() == [0, 0, 0, 1, 0]
    assert factors[NUM_IMAGES // 3].tolist() == [1, 0, 0, 0, 0]
    with pytest.raises(IndexError):
        index_to_factors(torch.tensor([NUM_IMAGES]))
    with pytest.raises(ValueError, match="'scale' must be in \\[0, 6\\)"):
        factors_to_index(torch.tensor([[0, 6, 0, 0, 0]]))


def test_batches_are_deterministic_binary_and_carry_factors() -> None:
    ds = DSprites()
    idx = torch.randint(0, NUM_IMAGES, (64,), generator=torch.Generator().manual_seed(0))
    batch = ds.get_batch(idx)
    x, y = batch.x, batch.y
    assert x.shape == (64, 1, 64, 64) and x.dtype == torch.float32
    assert set(x.unique().tolist()) <= {0.0, 1.0} and (x.sum((1, 2, 3)) > 0).all()
    assert y.dtype == torch.int64 and torch.equal(y, index_to_factors(idx))
    # The same index gives the same image whatever else is in the batch.
    x2 = ds.get_batch(torch.cat([idx[5:9], torch.tensor([0, 1])])).x
    assert torch.equal(x2[:4], x[5:9])
    assert torch.equal(ds.render(y), x) and torch.equal(DSprites.render(y), x)


def test_subsets_map_through_the_split() -> None:
    test = load_data(DataConfig(name="dsprites", test_subset=20, seed=2)).test
    assert isinstance(test, DSprites) and len(test) == 20
    batch = test.get_batch(torch.arange(20))
    _, y = batch.x, batch.y
    assert torch.equal(factors_to_index(y), test.indices.long())


def test_shape_factor_changes_the_shape() -> None:
    square, ellipse, heart = (_one(shape=s) for s in range(3))
    assert not torch.equal(square, ellipse) and not torch.equal(square, heart) and not torch.equal(ellipse, heart)
    # A square fills its bounding box; an ellipse and a heart do not.
    for img, full in ((square, True), (ellipse, False), (heart, False)):
        rows, cols = torch.nonzero(img, as_tuple=True)
        box = (int(rows.max() - rows.min()) + 1) * (int(cols.max() - cols.min()) + 1)
        assert (int(img.sum()) == box) is full
    # The heart's lobes are at the top: its upper half is wider than its lower half.
    rows = torch.nonzero(heart)[:, 0]
    mid = (int(rows.min()) + int(rows.max())) // 2
    assert heart[: mid - 3].sum(1).max() > heart[mid + 3 :].sum(1).max()


def test_position_moves_the_centre_of_mass() -> None:
    for shape in range(3):
        xs = [_centre_of_mass(_one(shape=shape, px=p))[1] for p in range(32)]
        ys = [_centre_of_mass(_one(shape=shape, py=p))[0] for p in range(32)]
        assert all(b > a for a, b in itertools.pairwise(xs)), xs  # posX moves right
        assert all(b > a for a, b in itertools.pairwise(ys)), ys  # posY moves down
        # posX leaves the row of the centre alone, and vice versa.
        assert abs(_centre_of_mass(_one(shape=shape, px=0))[0] - _centre_of_mass(_one(shape=shape, px=31))[0]) < 0.5


def test_scale_increases_the_area() -> None:
    for shape, orient in itertools.product(range(3), (0, 7, 23)):
        areas = [int(_one(shape=shape, scale=s, orient=orient).sum()) for s in range(6)]
        assert all(b > a for a, b in itertools.pairwise(areas)), (shape, orient, areas)


def test_rotation_changes_the_image() -> None:
    square0, square45 = _one(orient=0), _one(orient=5)  # 5 of 40 steps = 45 degrees
    assert not torch.equal(square0, square45)
    assert abs(int(square0.sum()) - int(square45.sum())) < 0.1 * int(square0.sum())  # same area, turned
    ellipse = [_one(shape=1, orient=o) for o in (0, 10)]  # 90 degrees: wide becomes tall
    widths = [int(e.any(0).sum()) for e in ellipse]
    heights = [int(e.any(1).sum()) for e in ellipse]
    assert widths[0] > heights[0] and heights[1] > widths[1]


def test_every_shape_stays_inside_the_frame() -> None:
    f = torch.tensor(list(itertools.product(range(3), [5], range(40), [0, 31], [0, 31])))
    x = render(f)[:, 0]
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
    assert border.sum() == 0 and (x.sum((1, 2)) > 0).all()


def test_sample_factors_is_reproducible_and_in_range() -> None:
    a = sample_factors(500, torch.Generator().manual_seed(0))
    b = sample_factors(500, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (500, 5)
    assert (a >= 0).all() and (a < torch.tensor(FACTOR_SIZES)).all()
    assert render(a[:3]).shape == (3, 1, 64, 64)


def _rss_bytes() -> int | None:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    import resource

    return int(statm.read_text().split()[1]) * resource.getpagesize()


def test_memory_stays_small() -> None:
    before = _rss_bytes()
    splits = load_data(DataConfig(name="dsprites"))
    for ds in (splits.train, splits.test, DSprites()):
        held = sum(v.numel() * v.element_size() for v in vars(ds).values() if isinstance(v, torch.Tensor))
        assert held <= 4 * len(ds)  # an int32 index per image at most, never pixels
    splits.train.get_batch(torch.arange(0, len(splits.train), 2900))
    after = _rss_bytes()
    if before is not None and after is not None:
        assert after - before < 200 * 2**20  # holding all images would take 3 GB
