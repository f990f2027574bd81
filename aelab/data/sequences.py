"""Sequences of frames: moving MNIST digits, a noisy oscillator, and the user's own ``.npz``.

Three registered data sets, for sequence models such as TD-VAE:

* ``moving-mnist``: each sequence is one binarised MNIST digit (from ``mnist-10k``: 8,000 train /
  2,000 test sequences, one per digit) moving horizontally by ``data.speed`` pixels per step,
  left or right (``data.directions``), wrapping around the 28-pixel width; with
  ``data.digits=2`` a second digit of the same split moves on its own and the two are overlaid.
  Only the digits and a few numbers per sequence are held; frames are rendered per batch.
* ``oscillator``: a noisy harmonic oscillator (:class:`OscillatorDynamics`) seen through noisy
  positions; the true parameters are in :attr:`DatasetInfo.dynamics`, and
  :func:`kalman_predict` is the optimal predictor to compare a model with.
* ``sequences``: the user's ``.npz`` (``data.path``) of ``[N, T, C, H, W]`` frames or
  ``[N, T, D]`` vectors.

A batch's ``x`` is always float32 frames ``(B, T, C, H, W)``; vectors ``[N, T, D]`` are served
as ``(B, T, 1, 1, D)`` (as the 2-D pinwheel points are ``(N, 1, 1, 2)``), so one frame encoder
built for ``image_shape=(C, H, W)`` serves every data set, and ``DatasetInfo.shape`` is
``(T, C, H, W)``. Generated data sets also fill ``Batch.state``, the true per-step state
``(B, T, K)``, for evaluation only.

References:
    Gregor, Papamakarios, Besse, Buesing and Weber. Temporal Difference Variational
    Auto-Encoder (ICLR 2019). arXiv:1806.03107

    Srivastava, Mansimov and Salakhutdinov. Unsupervised Learning of Video Representations
    using LSTMs (ICML 2015). (Moving MNIST; here the digits move horizontally with wrap-around,
    as in TD-VAE's experiment, not bouncing in a 64x64 frame.)

    Kalman. A New Approach to Linear Filtering and Prediction Problems (1960).

Example:
    >>> import torch
    >>> digit = torch.zeros(1, 3, 5)
    >>> digit[0, 1, 0] = 1.0  # one lit pixel in the first column
    >>> frames = roll_frames(digit, torch.tensor([[0, 2, -1]]))  # shift right by 2, then left by 1
    >>> frames.shape, frames[0, :, 1].argmax(-1).tolist()
    (torch.Size([1, 3, 3, 5]), [0, 2, 4])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.data import images as _images  # noqa: F401  (registers mnist-10k, whose digits move)
from aelab.data.base import DataConfig, DatasetInfo, DataSplits, Split, load_data
from aelab.data.local import TEST_FRACTION, _info, has_split_arrays, labels_to_int64, read_npz
from aelab.data.splits import split_indices
from aelab.registry import DATASETS

__all__ = [
    "MovingMNIST",
    "OscillatorDynamics",
    "SequenceSplit",
    "kalman_predict",
    "oscillator",
    "roll_frames",
    "sequences_to_float",
]

#: train and test sequences of ``oscillator`` (the train count is ``data.sequences``)
OSCILLATOR_TRAIN, OSCILLATOR_TEST = 10_000, 1_000


def _split_seed(seed: int, split: str) -> int:
    # train and test draw from distinct streams for every seed (even and odd)
    return 2 * seed + (split == "test")


class SequenceSplit(Split):
    """An in-memory split of sequences: frames ``(N, T, C, H, W)``, optional labels and states.

    uint8 frames stay uint8 (a quarter of float32's memory) and are divided by 255 per batch;
    float frames are served as they are.

    Arguments:
        x: frames ``(N, T, C, H, W)``, uint8 or float.
        y: int64 labels ``(N,)`` or factors ``(N, K)``, or ``None``.
        state: float per-step states ``(N, T, K)``, or ``None``.

    Example:
        >>> s = SequenceSplit(torch.zeros(4, 3, 1, 1, 2), state=torch.zeros(4, 3, 2))
        >>> b = s.get_batch(torch.tensor([1, 2]))
        >>> b.x.shape, b.y, b.state.shape, s.shape
        (torch.Size([2, 3, 1, 1, 2]), None, torch.Size([2, 3, 2]), (3, 1, 1, 2))
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, state: Tensor | None = None) -> None:
        if x.dim() != 5 or not (x.is_floating_point() or x.dtype == torch.uint8):
            raise ValueError(f"x must be uint8 or float of shape (N, T, C, H, W), got {x.dtype} {tuple(x.shape)}")
        n, t = int(x.shape[0]), int(x.shape[1])
        if y is not None and (y.dim() not in (1, 2) or y.shape[0] != n):
            raise ValueError(f"y must have shape ({n},) or ({n}, K), got {tuple(y.shape)}")
        if state is not None and (state.dim() != 3 or tuple(state.shape[:2]) != (n, t)):
            raise ValueError(f"state must have shape ({n}, {t}, K), got {tuple(state.shape)}")
        self.x = x if x.dtype == torch.uint8 else x.float()
        self.y = None if y is None else y.long()
        self.state = None if state is None else state.float()
        self.shape: tuple[int, int, int, int] = tuple(int(s) for s in x.shape[1:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def get_batch(self, idx: Tensor) -> Batch:
        x = self.x.index_select(0, idx)
        return Batch(
            torch.div(x, 255.0) if x.dtype == torch.uint8 else x,
            None if self.y is None else self.y.index_select(0, idx),
            state=None if self.state is None else self.state.index_select(0, idx),
        )

    def subset(self, idx: Tensor) -> SequenceSplit:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return SequenceSplit(self.x[idx], None if self.y is None else self.y[idx],
                             None if self.state is None else self.state[idx])

    def __repr__(self) -> str:
        return f"SequenceSplit(n={len(self)}, shape={self.shape})"


# ----------------------------------------------------------------------------- moving MNIST


def roll_frames(images: Tensor, shifts: Tensor) -> Tensor:
    """Each image rolled circularly along its width by each of its shifts.

    Frame ``t`` of image ``b`` is ``torch.roll(images[b], shifts[b, t], dims=-1)``: a positive
    shift moves the content right, and what leaves one edge comes back at the other. One
    ``gather`` for the whole batch.

    Arguments:
        images: ``(B, H, W)``, any dtype.
        shifts: integer shifts in pixels ``(B, T)`` (any sign, any size).

    Returns:
        The frames ``(B, T, H, W)``, of the dtype of ``images``.

    Example:
        >>> roll_frames(torch.tensor([[[1, 2, 3]]]), torch.tensor([[0, 1, -1]]))[0, :, 0].tolist()
        [[1, 2, 3], [3, 1, 2], [2, 3, 1]]
    """
    if images.dim() != 3 or shifts.dim() != 2 or shifts.shape[0] != images.shape[0]:
        raise ValueError(f"roll_frames needs images (B, H, W) and shifts (B, T), got {tuple(images.shape)} "
                         f"and {tuple(shifts.shape)}")
    if shifts.is_floating_point():
        raise ValueError(f"shifts must be integers, got {shifts.dtype}")
    b, h, w = images.shape
    t = shifts.shape[1]
    # output column j reads input column (j - shift) mod W
    cols = (torch.arange(w, device=images.device) - shifts.long().unsqueeze(-1)).remainder(w)  # (B, T, W)
    return images.unsqueeze(1).expand(b, t, h, w).gather(3, cols.unsqueeze(2).expand(b, t, h, w))


class MovingMNIST(Split):
    """Binarised MNIST digits moving horizontally with wrap-around, rendered per batch.

    Sequence ``i`` shows digit ``digit[i, d]`` (for each of its ``D`` digits) rolled right by
    ``offset + (2 direction - 1) * speed * t`` pixels at frame ``t``: with ``offset`` 0 (the
    default, the public protocol) frame 0 is the digit as stored; a ``direction`` of 0 moves it
    left and 1 right. Two digits are overlaid with ``max``. The split
    holds the digits it uses and ``3 D`` integers per sequence, never the frames.

    ``get_batch`` returns ``x`` float32 binary frames ``(B, T, 1, H, W)``, ``y`` int64
    ``(B, 3 D)`` with ``[class, direction, speed]`` per digit, and ``state`` float32
    ``(B, T, D)``, each digit's shift at each frame modulo the width ``W`` (the digit's centre of
    mass at frame ``t`` is its frame-0 centre plus ``state``, circularly).

    Arguments:
        images: binary digits ``(M, H, W)``, uint8 0/1.
        labels: their classes ``(M,)``.
        digit: which digit each sequence shows ``(N, D)``, indices into ``images``.
        direction: ``(N, D)``, 0 (left) or 1 (right).
        speed: pixels per step ``(N, D)``, positive.
        frames: frames per sequence ``T``.
        offset: the shift of frame 0 ``(N, D)`` in pixels (``None``: 0).

    Example:
        >>> img = torch.zeros(2, 4, 6, dtype=torch.uint8)
        >>> img[0, 0, 0] = img[1, 3, 5] = 1
        >>> ds = MovingMNIST.generate(img, torch.tensor([3, 7]), frames=3, speed=(2, 2), directions="right")
        >>> b = ds.get_batch(torch.tensor([1]))
        >>> b.x.shape, b.y.tolist(), b.state[0, :, 0].tolist()
        (torch.Size([1, 3, 1, 4, 6]), [[7, 1, 2]], [0.0, 2.0, 4.0])
    """

    def __init__(self, images: Tensor, labels: Tensor, digit: Tensor, direction: Tensor, speed: Tensor,
                 frames: int, offset: Tensor | None = None) -> None:
        if images.dim() != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"images must be (M, H, W) with labels (M,), got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        if digit.dim() != 2 or direction.shape != digit.shape or speed.shape != digit.shape:
            raise ValueError(f"digit, direction and speed must share one shape (N, D), got {tuple(digit.shape)}, "
                             f"{tuple(direction.shape)}, {tuple(speed.shape)}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.images = images.to(torch.uint8)
        self.labels = labels.long()
        self.digit, self.direction, self.speed = digit.long(), direction.long(), speed.long()
        self.offset = torch.zeros_like(self.digit) if offset is None else offset.long()
        if self.offset.shape != self.digit.shape:
            raise ValueError(f"offset must have the shape (N, D) of digit, got {tuple(self.offset.shape)}")
        self.frames = int(frames)
        self.shape = (self.frames, 1, int(images.shape[1]), int(images.shape[2]))

    @classmethod
    def generate(cls, images: Tensor, labels: Tensor, frames: int = 20, speed: tuple[int, int] = (1, 1),
                 directions: str = "both", digits: int = 1, seed: int = 0, start: str = "zero") -> MovingMNIST:
        """One sequence per digit of ``images``, its motion drawn from a generator seeded with ``seed``.

        Sequence ``i`` moves digit ``i``; with ``digits=2`` its second digit is entry ``i`` of a
        seeded permutation of the digits. Directions (per ``directions``) and speeds (uniform in
        ``[speed[0], speed[1]]``) are drawn per digit, so they are a pure function of ``seed``
        and the index.

        Arguments:
            images: binary digits ``(M, H, W)``.
            labels: their classes ``(M,)``.
            frames: frames per sequence.
            speed: the least and the most pixels per step.
            directions: ``both``, ``left`` or ``right``.
            digits: 1 or 2 digits per sequence.
            seed: seeds the draws.
            start: ``zero``: frame 0 shows each digit where it is stored (the public protocol);
                ``random``: each digit starts shifted by a uniform number of pixels.
        """
        if directions not in ("both", "left", "right"):
            raise ValueError(f"directions must be 'both', 'left' or 'right', got {directions!r}")
        if digits not in (1, 2) or not 1 <= speed[0] <= speed[1]:
            raise ValueError(f"need digits in (1, 2) and 1 <= speed[0] <= speed[1], got {digits}, {speed}")
        n = int(images.shape[0])
        g = torch.Generator().manual_seed(seed)
        second = torch.randperm(n, generator=g)
        digit = torch.stack([torch.arange(n), second], dim=1)[:, :digits]
        if directions == "both":
            direction = torch.randint(0, 2, (n, digits), generator=g)
        else:
            direction = torch.full((n, digits), int(directions == "right"), dtype=torch.long)
        pixels = torch.randint(speed[0], speed[1] + 1, (n, digits), generator=g)
        if start not in ("zero", "random"):
            raise ValueError(f"start must be 'zero' or 'random', got {start!r}")
        offset = torch.randint(0, int(images.shape[-1]), (n, digits), generator=g) if start == "random" else None
        return cls(images, labels, digit, direction, pixels, frames, offset)

    def __len__(self) -> int:
        return int(self.digit.shape[0])

    def shifts(self, idx: Tensor) -> Tensor:
        """Each digit's shift in pixels (right positive, not wrapped) at each frame: int64 ``(B, D, T)``."""
        velocity = (2 * self.direction.index_select(0, idx) - 1) * self.speed.index_select(0, idx)  # (B, D)
        return self.offset.index_select(0, idx).unsqueeze(-1) + velocity.unsqueeze(-1) * torch.arange(self.frames)

    def get_batch(self, idx: Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.long)
        digit = self.digit.index_select(0, idx)  # (B, D)
        b, d = digit.shape
        h, w = self.shape[2], self.shape[3]
        shifts = self.shifts(idx)  # (B, D, T)
        frames = roll_frames(self.images[digit.flatten()], shifts.flatten(0, 1))  # (B D, T, H, W) uint8
        x = frames.view(b, d, self.frames, h, w).amax(1).unsqueeze(2).float()  # (B, T, 1, H, W)
        y = torch.stack([self.labels[digit], self.direction.index_select(0, idx), self.speed.index_select(0, idx)],
                        dim=2).flatten(1)  # (B, 3 D): class, direction, speed per digit
        state = shifts.remainder(w).transpose(1, 2).float()  # (B, T, D)
        return Batch(x, y, state=state)

    def subset(self, idx: Tensor) -> MovingMNIST:
        idx = torch.as_tensor(idx, dtype=torch.long)
        # keep only the digits the subset shows
        used, digit = torch.unique(self.digit[idx], return_inverse=True)
        return MovingMNIST(self.images[used], self.labels[used], digit.view(len(idx), -1), self.direction[idx],
                           self.speed[idx], self.frames, self.offset[idx])

    def __repr__(self) -> str:
        return f"MovingMNIST(n={len(self)}, shape={self.shape}, digits={self.digit.shape[1]})"


@DATASETS.register("moving-mnist")
def build_moving_mnist(cfg: DataConfig) -> DataSplits:
    """Moving MNIST: binarised MNIST digits moving horizontally with wrap-around (one sequence a digit
    of ``data.digit_source``: ``mnist-10k``, 8,000 / 2,000, or the official ``mnist``, 60,000 / 10,000).

    ``data.frames`` frames of 28x28, ``data.speed`` pixels per step, ``data.directions``,
    ``data.digits`` (1 or 2), ``data.start`` (``zero``: frame 0 is the stored digit, the public
    protocol; ``random``: a uniform initial shift); labels ``[class, direction, speed]`` per digit, ``state`` the
    shifts.
    """
    digits = load_data(DataConfig(name=cfg.digit_source, root=cfg.root, download=cfg.download))
    out = {}
    for split, ds in (("train", digits.train), ("test", digits.test)):
        images = (ds.x[:, 0] > 127).to(torch.uint8)  # (M, 28, 28)
        width = images.shape[-1]
        if cfg.speed[1] >= width:
            raise ConfigError(f"data.speed: at most {width - 1} pixels per step (a digit moving by the frame "
                              f"width {width} would stand still), got {list(cfg.speed)}")
        out[split] = MovingMNIST.generate(images, ds.y, cfg.frames, cfg.speed, cfg.directions, cfg.digits,
                                          _split_seed(cfg.seed, split), cfg.start)
    names = ("digit", "direction", "speed")
    sizes = (10, 2, cfg.speed[1] + 1)  # speed is stored in pixels: its values lie in [0, max]
    info = DatasetInfo(
        name="moving-mnist",
        shape=out["train"].shape,
        factor_names=names + tuple(f"{k}2" for k in names) if cfg.digits == 2 else names,
        factor_sizes=sizes * cfg.digits,
    )
    return DataSplits(out["train"], out["test"], info)


# ----------------------------------------------------------------------------- oscillator


@dataclass(frozen=True)
class OscillatorDynamics:
    """A noisy unit-mass harmonic oscillator observed through noisy positions.

    The state ``s_t = (position, velocity)`` evolves as ``s_{t+1} = A s_t + w_t`` with ``A`` the
    exact one-step flow of ``x'' = -omega^2 x`` (:meth:`transition_matrix`) and
    ``w_t ~ N(0, process_noise^2 I)``; the observation is ``y_t = position_t + v_t`` with
    ``v_t ~ N(0, obs_noise^2)``; ``s_0 ~ N(0, init_scale^2 I)``. A linear-Gaussian model, so the
    Kalman filter (:func:`kalman_predict`) is the optimal predictor.

    Attributes:
        omega: angular frequency per step (radians), > 0.
        process_noise: standard deviation of the state noise per step and coordinate.
        obs_noise: standard deviation of the observation noise.
        init_scale: standard deviation of the initial position and velocity.

    Example:
        >>> OscillatorDynamics(omega=math.pi / 2).transition_matrix().round(decimals=4).tolist()
        [[0.0, 0.6366], [-1.5708, 0.0]]
    """

    omega: float = 0.3
    process_noise: float = 0.05
    obs_noise: float = 0.2
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        values = (self.omega, self.process_noise, self.obs_noise, self.init_scale)
        if not all(math.isfinite(v) for v in values) or self.omega <= 0 or self.init_scale <= 0 \
                or self.process_noise < 0 or self.obs_noise < 0:
            raise ValueError(f"OscillatorDynamics needs omega > 0, init_scale > 0 and noise levels >= 0, all "
                             f"finite, got {self}")

    def transition_matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``A = [[cos w, sin w / w], [-w sin w, cos w]]`` ``(2, 2)``: one step of the noiseless flow."""
        w = self.omega
        return torch.tensor([[math.cos(w), math.sin(w) / w], [-w * math.sin(w), math.cos(w)]], dtype=dtype)


def oscillator(n: int, frames: int, dynamics: OscillatorDynamics, seed: int) -> tuple[Tensor, Tensor]:
    """Draw ``n`` sequences of ``frames`` steps from a seeded generator (float64 throughout).

    Returns:
        The observed positions ``(n, frames)`` and the true states ``(n, frames, 2)``
        (position, velocity), both float64.
    """
    g = torch.Generator().manual_seed(seed)
    a = dynamics.transition_matrix()
    s = torch.randn(n, 2, generator=g, dtype=torch.float64) * dynamics.init_scale
    states = [s]
    for _ in range(frames - 1):
        s = s @ a.T + dynamics.process_noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
        states.append(s)
    state = torch.stack(states, dim=1)  # (n, T, 2)
    obs = state[..., 0] + dynamics.obs_noise * torch.randn(n, frames, generator=g, dtype=torch.float64)
    return obs, state


def kalman_predict(obs: Tensor, dynamics: OscillatorDynamics, context: int,
                   dts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The optimal prediction of the oscillator's position ``dt`` steps after the context.

    Filters the first ``context`` observations with the exact Kalman filter (prior
    ``s_0 ~ N(0, init_scale^2 I)``), then predicts the state forward: the result for each ``dt``
    is the posterior of the true position (no observation noise) at time ``context - 1 + dt``.
    Computed in the dtype of ``obs`` (use float64 for comparisons).

    Arguments:
        obs: observed positions ``(B, T)`` with ``T >= context``.
        dynamics: the process.
        context: observations to filter, ``1 <= context <= T``.
        dts: steps ahead, each ``>= 0`` (0: the filtered position at the last context step).

    Returns:
        The predicted position mean ``(B, len(dts))`` and its variance ``(B, len(dts))``.

    Example:
        >>> dyn = OscillatorDynamics(process_noise=0.0, obs_noise=1e-4)
        >>> obs = torch.tensor([[1.0, math.cos(0.3)]], dtype=torch.float64)  # x_t = cos(0.3 t)
        >>> mean, var = kalman_predict(obs, dyn, context=2, dts=[1, 2])
        >>> mean.round(decimals=3).tolist(), bool((var < 1e-6).all())
        ([[0.825, 0.622]], True)
    """
    if obs.dim() != 2 or not obs.is_floating_point():
        raise ValueError(f"obs must be float positions (B, T), got {obs.dtype} {tuple(obs.shape)}")
    if not 1 <= context <= obs.shape[1]:
        raise ValueError(f"context must be in [1, {obs.shape[1]}] (the observations given), got {context}")
    if any(dt < 0 for dt in dts):
        raise ValueError(f"dts must be >= 0, got {list(dts)}")
    dtype, device = obs.dtype, obs.device
    a = dynamics.transition_matrix(dtype).to(device)
    q = dynamics.process_noise**2 * torch.eye(2, dtype=dtype, device=device)
    r = dynamics.obs_noise**2
    mean = obs.new_zeros(obs.shape[0], 2)  # (B, 2)
    cov = dynamics.init_scale**2 * torch.eye(2, dtype=dtype, device=device)  # (2, 2), the same for every sequence
    for t in range(context):
        if t > 0:
            mean, cov = mean @ a.T, a @ cov @ a.T + q
        gain = cov[:, 0] / (cov[0, 0] + r)  # (2,): H = [1, 0]
        mean = mean + (obs[:, t] - mean[:, 0]).unsqueeze(1) * gain
        cov = cov - gain.unsqueeze(1) * cov[0].unsqueeze(0)  # (I - K H) P
    means, variances = [], []
    horizon = max(dts, default=0)
    for dt in range(horizon + 1):
        if dt > 0:
            mean, cov = mean @ a.T, a @ cov @ a.T + q
        means.append(mean[:, 0])
        variances.append(cov[0, 0].expand(obs.shape[0]))
    steps = list(dts)
    return torch.stack([means[d] for d in steps], 1), torch.stack([variances[d] for d in steps], 1)


@DATASETS.register("oscillator")
def build_oscillator(cfg: DataConfig) -> DataSplits:
    """A noisy harmonic oscillator seen through noisy positions (10,000 / 1,000 sequences).

    ``x`` the observed positions ``(B, T, 1, 1, 1)``, ``state`` the true (position, velocity)
    ``(B, T, 2)``; ``info.dynamics`` is the :class:`OscillatorDynamics` (default parameters);
    ``data.frames`` steps, ``data.sequences`` train sequences.
    """
    dynamics = OscillatorDynamics()
    sizes = {"train": OSCILLATOR_TRAIN if cfg.sequences is None else cfg.sequences, "test": OSCILLATOR_TEST}
    out = {}
    for split, n in sizes.items():
        obs, state = oscillator(n, cfg.frames, dynamics, _split_seed(cfg.seed, split))
        out[split] = SequenceSplit(obs.float().view(n, cfg.frames, 1, 1, 1), state=state)
    info = DatasetInfo(name="oscillator", shape=(cfg.frames, 1, 1, 1), dynamics=dynamics)
    return DataSplits(out["train"], out["test"], info)


# ----------------------------------------------------------------------------- user's sequences


def sequences_to_float(x: np.ndarray, key: str, source: str | os.PathLike) -> Tensor:
    """Check and convert a sequence array to ``(N, T, C, H, W)``: uint8 kept (served / 255), floats as float32.

    Layouts: ``[N, T, C, H, W]`` frames or ``[N, T, D]`` vectors (served as ``(N, T, 1, 1, D)``).

    Raises:
        ValueError: another rank, fewer than 2 steps, no sequences, another dtype, or NaN/inf
            values (the message names ``source`` and ``key``).
    """
    where = f"{source}: array {key!r}"
    given = x.shape
    if x.ndim == 3:
        x = x[:, :, None, None, :]
    elif x.ndim != 5:
        hint = " (add a channel axis: [N, T, 1, H, W])" if x.ndim == 4 else ""
        raise ValueError(f"{where} has shape {x.shape}; expected [N, T, C, H, W] frames or [N, T, D] vectors{hint}")
    if x.shape[0] == 0 or min(x.shape[2:]) == 0:
        raise ValueError(f"{where} has shape {given}: no sequences, or frames of size 0")
    if x.shape[1] < 2:
        raise ValueError(f"{where} has shape {given}: sequences of {x.shape[1]} step(s); expected T >= 2")
    if x.dtype == np.uint8:
        out = np.ascontiguousarray(x)
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{where} holds {int(np.sum(~np.isfinite(x)))} NaN or infinite values")
        out = np.ascontiguousarray(x, dtype=np.float32)
    else:
        raise ValueError(f"{where} has dtype {x.dtype}; expected floats or uint8 (0..255)")
    if not out.flags.writeable:  # torch.from_numpy warns on read-only buffers
        out = out.copy()
    return torch.from_numpy(out)


def _npz_sequences(arrays: dict[str, np.ndarray], key: str, ykey: str, path: Path) -> SequenceSplit:
    x = sequences_to_float(arrays[key], key, path)
    y = labels_to_int64(arrays[ykey], ykey, x.shape[0], path) if ykey in arrays else None
    return SequenceSplit(x, y)


@DATASETS.register("sequences")
def build_sequences(cfg: DataConfig) -> DataSplits:
    """Your own sequences (data.path, .npz): x_train/x_test (+ y_train/y_test), or x (+ y) split 90/10.

    ``[N, T, C, H, W]`` frames or ``[N, T, D]`` vectors, floats or uint8 (divided by 255).
    """
    if cfg.path is None:
        raise ConfigError("data.path must name the .npz file of sequences to load for data set 'sequences'")
    path = Path(cfg.path).expanduser()
    arrays = read_npz(path)
    found = ", ".join(sorted(arrays)) or "none"
    if has_split_arrays(arrays, path):
        train = _npz_sequences(arrays, "x_train", "y_train", path)
        test = _npz_sequences(arrays, "x_test", "y_test", path)
        if train.shape != test.shape:
            raise ValueError(f"{path}: x_train sequences are {train.shape} (T, C, H, W) but x_test sequences are "
                             f"{test.shape}")
    elif "x" in arrays:
        data = _npz_sequences(arrays, "x", "y", path)
        n = len(data)
        if n < 2:
            raise ValueError(f"{path}: need at least 2 sequences to hold out a test split, got {n}")
        tr, te = split_indices(n, cfg.seed, min(n - 1, max(1, round(n * TEST_FRACTION))))
        train, test = data.subset(tr), data.subset(te)
    else:
        raise ValueError(f"{path}: expected arrays 'x_train' and 'x_test', or 'x' (arrays found: {found})")
    if train.y is None or test.y is None:
        info = DatasetInfo(name="sequences", shape=train.shape)
    else:
        info = _info("sequences", train.shape, [train.y, test.y])  # type: ignore[arg-type]
    return DataSplits(train, test, info)
