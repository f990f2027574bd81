"""Sequence data: moving MNIST (rendered per batch), the oscillator and its Kalman predictor, the user's .npz."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import require_shared_data

from aelab.config import ConfigError
from aelab.data import DataConfig, load_data
from aelab.data.sequences import (
    MovingMNIST,
    OscillatorDynamics,
    SequenceSplit,
    kalman_predict,
    oscillator,
    roll_frames,
)


@pytest.fixture(scope="module")
def mm1():
    require_shared_data()
    return load_data(DataConfig(name="moving-mnist", speed=(1, 4), frames=12))


def _tensor_numel(obj) -> int:
    return sum(v.numel() for v in vars(obj).values() if isinstance(v, torch.Tensor))


def _circular_com(frames: torch.Tensor) -> torch.Tensor:
    """Circular centre of mass along the width, in pixels: ``(..., H, W) -> (...)``."""
    w = frames.shape[-1]
    angle = 2 * math.pi * torch.arange(w, dtype=torch.float64) / w
    mass = frames.double().sum(-2)  # (..., W)
    c, s = (mass * angle.cos()).sum(-1), (mass * angle.sin()).sum(-1)
    return torch.atan2(s, c) * w / (2 * math.pi)


def _circ_diff(a: torch.Tensor, b: torch.Tensor, w: int) -> torch.Tensor:
    return torch.remainder(a - b + w / 2, w) - w / 2


def test_roll_frames_matches_torch_roll():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 9, (3, 4, 7), generator=g)
    shifts = torch.randint(-20, 20, (3, 5), generator=g)
    out = roll_frames(images, shifts)
    assert out.shape == (3, 5, 4, 7)
    for b in range(3):
        for t in range(5):
            assert torch.equal(out[b, t], torch.roll(images[b], int(shifts[b, t]), dims=-1))
    with pytest.raises(ValueError, match="shifts must be integers"):
        roll_frames(images.float(), shifts.float())


def test_moving_mnist_frames_roll_by_speed(mm1):
    ds, info = mm1.train, mm1.info
    assert info.shape == (12, 1, 28, 28) and info.num_classes is None
    assert info.factor_names == ("digit", "direction", "speed") and info.factor_sizes == (10, 2, 5)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(1))[:40]
    b = ds.get_batch(idx)
    assert b.x.shape == (40, 12, 1, 28, 28) and b.x.dtype == torch.float32
    assert b.y.shape == (40, 3) and b.y.dtype == torch.int64
    assert b.state.shape == (40, 12, 1) and b.state.dtype == torch.float32
    assert set(b.x.unique().tolist()) <= {0.0, 1.0}
    cls, direction, speed = b.y.unbind(1)
    assert set(direction.tolist()) == {0, 1} and int(speed.min()) >= 1 and int(speed.max()) <= 4
    step = (2 * direction - 1) * speed  # pixels per frame, right positive
    for i in range(40):
        first = b.x[i, 0, 0]
        assert first.sum() > 0
        for t in range(12):
            # each frame is frame 0 rolled by exactly t steps of the speed, wrapping around
            assert torch.equal(b.x[i, t, 0], torch.roll(first, int(step[i] * t), dims=-1)), (i, t)
        assert float(b.state[i, -1, 0]) == float((int(step[i]) * 11) % 28)
    # the digit is the binarised digit of the same index, and the label its class
    digits = load_data(DataConfig(name="mnist-10k")).train
    assert torch.equal(b.x[:, 0, 0], (digits.x[idx, 0] > 127).float())
    assert torch.equal(cls, digits.y[idx])


def test_moving_mnist_state_is_the_centre_of_mass_shift(mm1):
    b = mm1.test.get_batch(torch.arange(0, 2000, 97))
    com = _circular_com(b.x[:, :, 0])  # (B, T)
    moved = _circ_diff(com - com[:, :1], b.state[..., 0].double(), 28)
    assert moved.abs().max() < 1e-6


def test_moving_mnist_is_a_pure_function_of_the_index(mm1):
    idx = torch.tensor([5, 3, 5, 1999])
    a, b = mm1.test.get_batch(idx), mm1.test.get_batch(idx)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.state, b.state)
    assert torch.equal(a.x[0], a.x[2])
    # the same config builds the same sequences; another seed other motions
    again = load_data(DataConfig(name="moving-mnist", speed=(1, 4), frames=12)).test.get_batch(idx)
    assert torch.equal(again.x, a.x)
    other = load_data(DataConfig(name="moving-mnist", speed=(1, 4), frames=12, seed=1)).test.get_batch(idx)
    assert not torch.equal(other.y, a.y)
    # train and test draw distinct motions
    assert not torch.equal(mm1.train.direction[:2000], mm1.test.direction)


def test_moving_mnist_never_holds_the_frames(mm1):
    ds = mm1.train
    n, (t, _, h, w) = len(ds), ds.shape
    assert _tensor_numel(ds) < n * t * h * w / 10
    sub = ds.subset(torch.tensor([7, 3, 7000]))
    assert len(sub) == 3 and _tensor_numel(sub) < 3 * t * h * w
    full, part = ds.get_batch(torch.tensor([7, 3, 7000])), sub.get_batch(torch.arange(3))
    assert torch.equal(full.x, part.x) and torch.equal(full.y, part.y) and torch.equal(full.state, part.state)
    small = load_data(DataConfig(name="moving-mnist", train_subset=50, test_subset=20))
    assert len(small.train) == 50 and len(small.test) == 20


@pytest.mark.parametrize("directions", ["left", "right"])
def test_moving_mnist_directions(shared_data, directions):
    splits = load_data(DataConfig(name="moving-mnist", directions=directions, speed=(2, 3), frames=3))
    b = splits.train.get_batch(torch.arange(0, 8000, 50))
    assert set(b.y[:, 1].tolist()) == {int(directions == "right")}
    assert set(b.y[:, 2].tolist()) == {2, 3}
    sign = 1 if directions == "right" else -1
    for i in range(len(b)):
        assert torch.equal(b.x[i, 1, 0], torch.roll(b.x[i, 0, 0], sign * int(b.y[i, 2]), dims=-1))


def test_moving_mnist_two_digits(shared_data):
    splits = load_data(DataConfig(name="moving-mnist", digits=2, speed=(1, 3), frames=6))
    info, ds = splits.info, splits.test
    assert info.factor_names == ("digit", "direction", "speed", "digit2", "direction2", "speed2")
    assert info.factor_sizes == (10, 2, 4, 10, 2, 4)
    idx = torch.arange(0, 2000, 41)
    b = ds.get_batch(idx)
    assert b.y.shape == (len(idx), 6) and b.state.shape == (len(idx), 6, 2)
    assert not torch.equal(ds.digit[:, 0], ds.digit[:, 1])
    assert sorted(ds.digit[:, 1].tolist()) == list(range(2000))  # a permutation of the split
    digits = load_data(DataConfig(name="mnist-10k")).test
    for i, j in enumerate(idx.tolist()):
        imgs = [(digits.x[ds.digit[j, d], 0] > 127).float() for d in range(2)]
        assert b.y[i, 0] == digits.y[ds.digit[j, 0]] and b.y[i, 3] == digits.y[ds.digit[j, 1]]
        for t in range(6):
            want = torch.maximum(*(torch.roll(imgs[d], int(b.state[i, t, d]), dims=-1) for d in range(2)))
            assert torch.equal(b.x[i, t, 0], want)
            for d in range(2):
                step = (2 * int(b.y[i, 3 * d + 1]) - 1) * int(b.y[i, 3 * d + 2])
                assert float(b.state[i, t, d]) == (step * t) % 28


def test_moving_mnist_generate_is_seeded():
    img = torch.randint(0, 2, (30, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(30) % 10
    a = MovingMNIST.generate(img, labels, frames=4, speed=(1, 5), digits=2, seed=3)
    b = MovingMNIST.generate(img, labels, frames=4, speed=(1, 5), digits=2, seed=3)
    assert torch.equal(a.speed, b.speed) and torch.equal(a.direction, b.direction) and torch.equal(a.digit, b.digit)
    assert torch.equal(a.digit[:, 0], torch.arange(30))


def test_oscillator_shapes_and_noise():
    splits = load_data(DataConfig(name="oscillator", frames=30, sequences=4000))
    info, dyn = splits.info, splits.info.dynamics
    assert isinstance(dyn, OscillatorDynamics) and info.shape == (30, 1, 1, 1)
    assert len(splits.train) == 4000 and len(splits.test) == 1000
    b = splits.train.get_batch(torch.arange(4000))
    assert b.x.shape == (4000, 30, 1, 1, 1) and b.state.shape == (4000, 30, 2) and b.y is None
    assert b.x.dtype == torch.float32 and b.state.dtype == torch.float32
    s = b.state.double()
    a = dyn.transition_matrix()
    noise = (s[:, 1:] - s[:, :-1] @ a.T).reshape(-1, 2)  # w_t
    cov = noise.T @ noise / noise.shape[0]
    assert torch.allclose(cov, dyn.process_noise**2 * torch.eye(2, dtype=torch.float64), atol=2e-4)
    obs_noise = b.x[:, :, 0, 0, 0].double() - s[..., 0]
    assert abs(float(obs_noise.std()) - dyn.obs_noise) < 5e-3
    assert abs(float(s[:, 0].std()) - dyn.init_scale) < 0.05
    # train and test differ; the same seed gives the same data
    assert not torch.equal(splits.test.x[:10], splits.train.x[:10])
    again = load_data(DataConfig(name="oscillator", frames=30, sequences=4000))
    assert torch.equal(again.train.x, splits.train.x)
    sub = splits.test.subset(torch.tensor([4, 2]))
    assert torch.equal(sub.get_batch(torch.tensor([1])).state, splits.test.get_batch(torch.tensor([2])).state)


def test_oscillator_transition_matrix_is_the_exact_flow():
    dyn = OscillatorDynamics(omega=0.7)
    a = dyn.transition_matrix()
    t = torch.arange(6, dtype=torch.float64)
    x0, v0 = 0.4, -1.3  # x(t) = x0 cos(w t) + v0 / w sin(w t)
    path = torch.stack([x0 * (0.7 * t).cos() + v0 / 0.7 * (0.7 * t).sin(),
                        -x0 * 0.7 * (0.7 * t).sin() + v0 * (0.7 * t).cos()], 1)
    assert torch.allclose(path[1:], path[:-1] @ a.T, atol=1e-12)
    assert abs(float(torch.linalg.det(a)) - 1) < 1e-12
    with pytest.raises(ValueError, match="omega > 0"):
        OscillatorDynamics(omega=0.0)


def _gaussian_conditioning(obs: torch.Tensor, dyn: OscillatorDynamics, context: int, targets: list[int]):
    """The same posterior from the joint Gaussian of every state and observation (no recursion)."""
    steps = max([context - 1, *targets]) + 1
    a, q = dyn.transition_matrix(), dyn.process_noise**2 * torch.eye(2, dtype=torch.float64)
    # joint covariance of s_0..s_{steps-1}: Cov(s_t, s_u) = A^(t-u) Var(s_u) for t >= u
    var = [dyn.init_scale**2 * torch.eye(2, dtype=torch.float64)]
    for _ in range(steps - 1):
        var.append(a @ var[-1] @ a.T + q)
    big = torch.zeros(2 * steps, 2 * steps, dtype=torch.float64)
    for u in range(steps):
        block = var[u]
        for t in range(u, steps):
            big[2 * t : 2 * t + 2, 2 * u : 2 * u + 2] = block
            big[2 * u : 2 * u + 2, 2 * t : 2 * t + 2] = block.T
            block = a @ block
    pos = big[0::2, 0::2]  # (steps, steps) covariance of the positions
    c_yy = pos[:context, :context] + dyn.obs_noise**2 * torch.eye(context, dtype=torch.float64)
    c_zy = pos[targets][:, :context]
    c_zz = pos[targets][:, targets]
    gain = torch.linalg.solve(c_yy, c_zy.T).T  # (Z, context)
    mean = obs[:, :context] @ gain.T
    cov = c_zz - gain @ c_zy.T
    return mean, torch.diagonal(cov).expand_as(mean)


@pytest.mark.parametrize("context,dts", [(1, [0, 1, 5]), (7, [1, 2, 3, 10]), (12, [0, 4])])
def test_kalman_matches_gaussian_conditioning(context, dts):
    dyn = OscillatorDynamics(omega=0.45, process_noise=0.1, obs_noise=0.3, init_scale=1.5)
    obs, _ = oscillator(16, 12, dyn, seed=5)
    mean, var = kalman_predict(obs, dyn, context, dts)
    assert mean.shape == var.shape == (16, len(dts)) and mean.dtype == torch.float64
    want_mean, want_var = _gaussian_conditioning(obs, dyn, context, [context - 1 + d for d in dts])
    assert torch.allclose(mean, want_mean, atol=1e-4) and torch.allclose(var, want_var, atol=1e-4)
    assert torch.allclose(mean, want_mean, atol=1e-10)  # exact in float64 in fact


def test_kalman_is_better_than_the_prior():
    dyn = OscillatorDynamics()
    obs, state = oscillator(2000, 30, dyn, seed=9)
    mean, var = kalman_predict(obs, dyn, context=10, dts=[1, 5])
    err = (mean - state[:, [10, 14], 0]).square().mean(0)
    # the predicted variance is the expected squared error
    assert torch.allclose(err, var[0], rtol=0.1)
    assert (err < state[:, [10, 14], 0].square().mean(0)).all()
    with pytest.raises(ValueError, match="context"):
        kalman_predict(obs, dyn, context=31, dts=[1])


def _save(tmp_path, name="seq.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_user_sequences_load(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path, x=rng.normal(size=(30, 6, 3)).astype(np.float32), y=np.arange(30) % 3)
    splits = load_data(DataConfig(name="sequences", path=str(path)))
    assert splits.info.shape == (6, 1, 1, 3) and splits.info.num_classes == 3
    assert len(splits.train) == 27 and len(splits.test) == 3
    b = splits.train.get_batch(torch.arange(4))
    assert b.x.shape == (4, 6, 1, 1, 3) and b.x.dtype == torch.float32 and b.y.shape == (4,)

    frames = rng.integers(0, 256, size=(5, 4, 2, 7, 9), dtype=np.uint8)
    path = _save(tmp_path, "frames.npz", x_train=frames, x_test=frames[:2])
    splits = load_data(DataConfig(name="sequences", path=str(path)))
    assert splits.info.shape == (4, 2, 7, 9) and len(splits.train) == 5 and len(splits.test) == 2
    b = splits.test.get_batch(torch.tensor([1]))
    assert b.x.shape == (1, 4, 2, 7, 9) and b.y is None
    assert torch.allclose(b.x[0], torch.from_numpy(frames[1]).float() / 255)
    assert isinstance(splits.train, SequenceSplit) and splits.train.x.dtype == torch.uint8


@pytest.mark.parametrize("arrays,problem", [
    ({"x": np.zeros((4, 5, 6, 7), np.float32)}, r"shape \(4, 5, 6, 7\); expected \[N, T, C, H, W\].*channel axis"),
    ({"x": np.zeros((4, 5), np.float32)}, r"shape \(4, 5\); expected \[N, T, C, H, W\] frames or \[N, T, D\]"),
    ({"x": np.full((4, 5, 2), np.nan, np.float32)}, "NaN or infinite"),
    ({"x": np.zeros((4, 1, 2), np.float32)}, "expected T >= 2"),
    ({"x": np.zeros((4, 5, 2), np.int32)}, "dtype int32; expected floats or uint8"),
    ({"x_train": np.zeros((4, 5, 2)), "x_test": np.zeros((4, 6, 2))}, r"x_train sequences are \(5, 1, 1, 2\).*"
                                                                        r"x_test sequences are \(6, 1, 1, 2\)"),
    ({"x_train": np.zeros((4, 5, 2))}, "not 'x_test'"),
    ({"frames": np.zeros((4, 5, 2))}, "expected arrays 'x_train' and 'x_test', or 'x'"),
])
def test_user_sequences_bad_input(tmp_path, arrays, problem):
    path = _save(tmp_path, **arrays)
    with pytest.raises(ValueError, match=problem) as err:
        load_data(DataConfig(name="sequences", path=str(path)))
    assert str(path) in str(err.value)


def test_user_sequences_need_a_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_data(DataConfig(name="sequences"))


@pytest.mark.parametrize("kwargs,field", [
    ({"frames": 1}, "data.frames"),
    ({"speed": (0, 2)}, "data.speed"),
    ({"speed": (3, 2)}, "data.speed"),
    ({"speed": (1,)}, "data.speed"),
    ({"directions": "up"}, "data.directions"),
    ({"digits": 3}, "data.digits"),
    ({"sequences": 0}, "data.sequences"),
    ({"start": "middle"}, "data.start"),
    ({"digit_source": "fashion-mnist"}, "data.digit_source"),
])
def test_data_config_validates_sequence_fields(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DataConfig(name="moving-mnist", **kwargs)


def test_moving_mnist_speed_below_the_width(shared_data):
    with pytest.raises(ConfigError, match="data.speed"):
        load_data(DataConfig(name="moving-mnist", speed=(1, 28)))


def test_moving_mnist_random_start_shifts_frame_zero(shared_data):
    """``data.start=random``: frame 0 is the stored digit rolled by a uniform offset (the state
    says by how much); the motion after it is unchanged, and the default start is zero."""
    zero = load_data(DataConfig(name="moving-mnist", frames=6, test_subset=300)).test
    rand = load_data(DataConfig(name="moving-mnist", frames=6, start="random", test_subset=300)).test
    idx = torch.arange(300)
    a, b = zero.get_batch(idx), rand.get_batch(idx)
    assert (a.state[:, 0] == 0).all() and torch.equal(a.y, b.y)
    offsets = b.state[:, 0, 0].long()
    assert len(offsets.unique()) > 20  # spread over the 28 columns
    assert torch.equal(b.x[:, :, 0], roll_frames(a.x[:, 0, 0], offsets.unsqueeze(1) + (b.state[:, :, 0] - offsets
                                                                                     .unsqueeze(1)).long()))
    torch.testing.assert_close((b.state - b.state[:, :1]).remainder(28), a.state.remainder(28))


def test_moving_mnist_from_the_official_mnist_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist not found: looked for .*data.download=true"):
        load_data(DataConfig(name="moving-mnist", digit_source="mnist", root=str(tmp_path)))
