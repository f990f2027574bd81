"""Metrics of sequence models: the bound per frame, and what jumpy rollouts get right.

* :func:`sequence_bound` (the per-epoch evaluation ``sequence``): TD-VAE's bound on
  ``-log p(x_2..x_T | x_1)`` over every consecutive pair, in nats per frame, and its terms.
* :func:`moving_mnist_rollout`: after a context of frames, for each jump ``dt``: the digit
  identity of the predicted frame as a classifier judges it, the horizontal position error of
  the predicted digit (circular centre of mass, in pixels, with wrap-around) and the direction
  recovered from the rollout; the same numbers for copying the last context frame.
* :func:`oscillator_rollout`: mean squared error of predicted positions against the true
  positions, beside the Kalman filter with the true parameters and copying the last
  observation; the coverage of the true position by the central 80% of sampled rollouts.

The pure parts (:func:`circular_centre`, :func:`circular_distance`, :func:`recentre`) work on
tensors and are tested on cases with known answers.

Example:
    >>> frames = torch.zeros(1, 1, 4, 10)
    >>> frames[..., 9] = frames[..., 0] = 1.0  # a bar wrapped around the edge: centre 9.5
    >>> round(circular_centre(frames).item(), 4), circular_distance(torch.tensor([9.5]), torch.tensor([0.5])).tolist()
    (9.5, [1.0])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from aelab.data.base import DataConfig, DataSplits, Split, load_data, random_subset
from aelab.data.batches import eval_batches
from aelab.data.sequences import OscillatorDynamics, kalman_predict, roll_frames
from aelab.models.classifier import classifier_outputs
from aelab.nn.modes import eval_mode
from aelab.protocol import Model, require
from aelab.registry import CLASSIFIER_LOADERS, EPOCH_EVALUATIONS, METRICS

__all__ = ["circular_centre", "circular_distance", "digit_classifier", "moving_mnist_rollout", "oscillator_rollout",
           "recentre", "sequence_bound", "signed_displacement"]


# --- pure functions ---------------------------------------------------------------------------
def circular_centre(frames: Tensor) -> Tensor:
    """The horizontal centre of mass of images ``(..., C, H, W)`` on a circle of ``W`` columns
    (the width wraps around), in pixels in ``[0, W)``; ``NaN`` for a blank image."""
    w = frames.shape[-1]
    mass = frames.clamp_min(0).sum(dim=(-3, -2))  # (..., W)
    angle = torch.arange(w, device=frames.device, dtype=mass.dtype) * (2 * math.pi / w)
    s, c = (mass * angle.sin()).sum(-1), (mass * angle.cos()).sum(-1)
    centre = torch.atan2(s, c).remainder(2 * math.pi) * (w / (2 * math.pi))
    return torch.where(mass.sum(-1) > 0, centre, torch.full_like(centre, float("nan")))


def circular_distance(a: Tensor, b: Tensor, width: int = 10) -> Tensor:
    """``|a - b|`` on a circle of ``width`` pixels (the shorter way round)."""
    d = (a - b).remainder(width)
    return torch.minimum(d, width - d)


def signed_displacement(a: Tensor, b: Tensor, width: int) -> Tensor:
    """The shortest signed move from ``a`` to ``b`` on a circle of ``width``, in ``(-width/2, width/2]``."""
    d = (b - a).remainder(width)
    return torch.where(d > width / 2, d - width, d)


def recentre(frames: Tensor) -> Tensor:
    """Roll each image ``(N, C, H, W)`` along its width so that its circular centre of mass sits
    in the middle column (MNIST's own convention: digits centred by their centre of mass), so a
    classifier trained on still digits can judge a wrapped-around one."""
    n, c, h, w = frames.shape
    centre = torch.nan_to_num(circular_centre(frames), nan=w / 2)
    shift = (w / 2 - centre).round().long().remainder(w)
    return roll_frames(frames.reshape(n * c, h, w), shift.repeat_interleave(c).unsqueeze(1)).reshape(n, c, h, w)


# --- the per-epoch evaluation -----------------------------------------------------------------
@torch.no_grad()
def sequence_bound(model: Model, data: Split, batch_size: int = 100, limit: int | None = None,
                   seed: int = 0) -> dict[str, float]:
    """TD-VAE's bound on ``-log p(x_2..x_T | x_1)`` per frame over the consecutive pairs of the
    sequences of ``data`` (a seeded random subset of ``limit``): ``elbo_per_frame`` (nats, higher is
    better) and the mean per frame of each term (``recon``, ``kl``, ``transition``)."""
    require(model, "sequence", what="the sequence bound")
    data = random_subset(data, limit, seed=0)
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    n = 0
    with eval_mode(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in eval_batches(data, batch_size):
            lo = model.sequence_bound(batch.x.to(device))
            b = len(batch)
            sums["elbo_per_frame"] = sums.get("elbo_per_frame", 0.0) - lo.per_example.double().sum().item()
            for k, v in lo.terms.items():
                sums[k] = sums.get(k, 0.0) + v.item() * b
            n += b
    return {k: v / max(n, 1) for k, v in sums.items()}


@EPOCH_EVALUATIONS.register("sequence")
def sequence_evaluation(model: Model, data: Split, cfg: Any) -> dict[str, float]:
    """The sequence families' evaluation: :func:`sequence_bound` on ``cfg.eval_limit`` test sequences."""
    return sequence_bound(model, data, cfg.eval_batch_size, cfg.eval_limit)


# --- rollouts ---------------------------------------------------------------------------------
def _prepare(model: Model | None, data: Split, context: int, dts: Sequence[int],
             limit: int | None) -> tuple[torch.device, Split]:
    """Check the horizon and the model; the model's device and the seeded subset of ``limit``."""
    frames = data.get_batch(torch.arange(1)).x.shape[1]
    if context < 1 or not dts or min(dts) < 1 or context - 1 + max(dts) >= frames:
        raise ValueError(f"a rollout needs context >= 1 and 1 <= dt with context - 1 + dt < {frames} frames, got "
                         f"context={context}, dt={list(dts)}")
    if model is not None:
        require(model, "sequence", what="rollouts")
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    return device, random_subset(data, limit, seed=0)


@contextlib.contextmanager
def _seeded_eval(model: Model | None, seed: int) -> Iterator[None]:
    """Evaluation mode (a model) or no gradients (a baseline), on a seeded RNG stream of its own."""
    with (eval_mode(model) if model is not None else torch.no_grad()), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _Totals:
    """Per-key sums of per-example values over ``n`` examples, and their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, key: str, values: Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + values.double().sum().item()

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


@torch.no_grad()
def moving_mnist_rollout(model: Model | None, data: Split, classifier: nn.Module, context: int = 10,
                         dts: Sequence[int] = (1, 2, 3, 4, 5), samples: int = 1, limit: int | None = 1000,
                         batch_size: int = 200, seed: int = 0) -> dict[str, float]:
    """Jumpy predictions on moving MNIST, scored against the truth.

    For each test sequence (a seeded random subset of ``limit``) and each ``dt``: ``samples``
    rollouts of one prediction ``dt`` frames after the last context frame (``model.rollout``;
    ``model=None`` scores the copy-last-frame baseline). Returned per ``dt``:

    * ``digit_acc_dt{dt}``: the classifier's digit (after :func:`recentre`) equals the true digit;
    * ``position_err_dt{dt}``: circular distance in pixels between the predicted and the true
      frame's centre of mass;
    * ``direction_acc_dt{dt}``: the sign of the centre's move from the last context frame matches
      the true direction (no move counts one half: a coin flip);

    and ``digit_acc_truth``: the classifier on the true frames (the ceiling of ``digit_acc``).
    The first digit's labels are used (``y[:, 0]`` digit, ``y[:, 1]`` direction, 1 = right).
    """
    device, data = _prepare(model, data, context, dts, limit)
    totals = _Totals()
    add = totals.add
    with _seeded_eval(model, seed):
        for batch in eval_batches(data, batch_size):
            x, y = batch.x.to(device), batch.y
            b, w = x.shape[0], x.shape[-1]
            last = x[:, context - 1].cpu()
            truth_probs = classifier_outputs(classifier, recentre(x[:, context - 1 + max(dts)].cpu()))[1]
            add("digit_acc_truth", truth_probs.argmax(1).eq(y[:, 0]).float())
            for dt in dts:
                truth = x[:, context - 1 + dt].cpu()
                if model is None:
                    pred = last.unsqueeze(0).expand(samples, *last.shape)
                else:
                    pred = model.rollout(x[:, :context], [dt], samples)[:, :, 0].cpu()  # (S, B, C, H, W)
                flat = pred.reshape(samples * b, *pred.shape[2:])
                probs = classifier_outputs(classifier, recentre(flat))[1]
                add(f"digit_acc_dt{dt}", probs.argmax(1).view(samples, b).eq(y[:, 0]).float().mean(0))
                centre = circular_centre(pred)  # (S, B)
                add(f"position_err_dt{dt}", torch.nan_to_num(
                    circular_distance(centre, circular_centre(truth), w), nan=w / 4).mean(0))
                move = signed_displacement(circular_centre(last), centre, w)
                right = y[:, 1].eq(1)
                score = torch.where(move.abs() < 0.5, 0.5, (move > 0).eq(right).float())
                add(f"direction_acc_dt{dt}", torch.nan_to_num(score, nan=0.5).mean(0))
            totals.n += b
    return totals.means()


@torch.no_grad()
def oscillator_rollout(model: Model | None, data: Split, dynamics: OscillatorDynamics, context: int = 10,
                       dts: Sequence[int] = tuple(range(1, 11)), samples: int = 100, limit: int | None = 1000,
                       batch_size: int = 200, level: float = 0.8, seed: int = 0) -> dict[str, float]:
    """Jumpy predictions of a noisy oscillator's position against the truth and the optimal filter.

    For each ``dt``: ``mse_dt{dt}`` of the mean of ``samples`` rollouts (``model=None``: skip the
    model) against the true position ``context - 1 + dt``; ``kalman_mse_dt{dt}`` of the Kalman
    filter's prediction with the true parameters from the same context (the optimum among all
    predictors); ``copy_mse_dt{dt}`` of the last observation; ``coverage_dt{dt}``: the fraction of
    true positions inside the central ``level`` interval of the sampled rollouts (calibrated: =
    ``level``), and ``kalman_coverage_dt{dt}`` for the filter's Gaussian interval.
    """
    device, data = _prepare(model, data, context, dts, limit)
    z = _normal_quantile(0.5 + level / 2)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    totals = _Totals()
    add = totals.add
    with _seeded_eval(model, seed):
        for batch in eval_batches(data, batch_size):
            if batch.state is None:
                raise ValueError("the oscillator rollout needs the true state of each step (batch.state)")
            obs = batch.x.reshape(batch.x.shape[0], batch.x.shape[1], -1)[..., 0]  # (B, T) positions
            truth = batch.state[..., 0]
            k_mean, k_var = kalman_predict(obs.double(), dynamics, context, dts)
            for i, dt in enumerate(dts):
                target = truth[:, context - 1 + dt].double()
                add(f"kalman_mse_dt{dt}", (k_mean[:, i] - target) ** 2)
                add(f"kalman_coverage_dt{dt}", ((k_mean[:, i] - target).abs() <= z * k_var[:, i].sqrt()).float())
                add(f"copy_mse_dt{dt}", (obs[:, context - 1].double() - target) ** 2)
                if model is not None:
                    x = batch.x[:, :context].to(device)
                    pred = model.rollout(x, [dt], samples)[:, :, 0].reshape(samples, x.shape[0], -1)[..., 0]
                    pred = pred.double().cpu()
                    add(f"mse_dt{dt}", (pred.mean(0) - target) ** 2)
                    lo, hi = torch.quantile(pred, lo_q, dim=0), torch.quantile(pred, hi_q, dim=0)
                    add(f"coverage_dt{dt}", ((target >= lo) & (target <= hi)).float())
            totals.n += obs.shape[0]
    return totals.means()


def digit_classifier(root: str | None = None, device: str | torch.device = "cpu",
                     cache_dir: str | None = None) -> nn.Module:
    """The in-library MNIST classifier (the feature classifier of :mod:`aelab.metrics.generative`,
    trained once on the ``mnist-10k`` digits of the data directory ``root`` and cached)."""
    if "default" not in CLASSIFIER_LOADERS:
        raise RuntimeError("no feature-classifier loader is registered: import aelab (or aelab.training)")
    splits = load_data(DataConfig(name="mnist-10k", root=root))
    return CLASSIFIER_LOADERS.get("default")(splits, None, cache_dir, None, device)


def _normal_quantile(p: float) -> float:
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p, dtype=torch.float64)))


@METRICS.register("rollout")
def rollout_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Jumpy rollouts on the test split: :func:`moving_mnist_rollout` on moving MNIST (with the
    in-library MNIST classifier, ``classifier=`` to give another; the copy-last-frame baseline's
    scores as ``copy_*``), :func:`oscillator_rollout` on the oscillator (its true dynamics from the
    data set; Kalman filter and copy baselines included)."""
    info = splits.info
    root, cache_dir = options.pop("root", None), options.pop("cache_dir", None)
    if info.dynamics is not None:
        return oscillator_rollout(model, splits.test, info.dynamics, **options)
    if info.factor_names and info.factor_names[:2] == ("digit", "direction"):
        classifier = options.pop("classifier", None)
        if classifier is None:
            classifier = digit_classifier(root, next(model.parameters()).device, cache_dir)
        copy = moving_mnist_rollout(None, splits.test, classifier, **options)
        return moving_mnist_rollout(model, splits.test, classifier, **options) | {
            f"copy_{k}": v for k, v in copy.items() if k != "digit_acc_truth"}
    raise ValueError(f"the rollout metric scores moving-mnist and oscillator; data set {info.name!r} has no "
                     "ground truth it knows (use the per-epoch bound, metric 'sequence_bound')")


@METRICS.register("sequence_bound")
def sequence_bound_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """TD-VAE's bound per frame on the test split (:func:`sequence_bound`)."""
    return sequence_bound(model, splits.test, **options)
