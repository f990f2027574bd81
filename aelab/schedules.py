"""Schedules: pure functions of the training step.

A schedule maps ``step -> value``; ``step=None`` means "after the schedule", the value used at
evaluation time. Because they hold no state, resuming a run at step s continues them exactly.
Schedules are written in configs as short specs, parsed by :func:`parse_schedule`:

- ``"0.5"``: constant
- ``"linear(start, end, steps[, delay])"``: linear from start to end over ``steps`` after ``delay``
- ``"cosine(start, end, steps[, delay])"``: half-cosine from start to end
- ``"cyclical(start, end, period[, ratio])"``: Fu et al. 2019 cyclical annealing; rises during the
  first ``ratio`` of each period, then holds ``end``

Example:
    >>> s = parse_schedule("linear(0, 1, 100)")
    >>> s(0), s(50), s(1000), s(None)
    (0.0, 0.5, 1.0, 1.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[int | None], float]


def _progress(step: int, steps: float, delay: float = 0) -> float:
    """Fraction of a ``steps``-long ramp done at ``step`` after ``delay``, clamped to [0, 1]."""
    return min(max((step - delay) / max(steps, 1), 0.0), 1.0)


def _finite(name: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: values must be finite, got {values}")


@dataclass(frozen=True)
class constant:  # noqa: N801 - reads like a function in specs
    value: float

    def __post_init__(self) -> None:
        _finite("constant", self.value)

    def __call__(self, step: int | None) -> float:
        return float(self.value)


@dataclass(frozen=True)
class _Ramp:
    """``start`` to ``end`` over ``steps`` steps after ``delay`` (the shape is the subclass's)."""

    start: float
    end: float
    steps: float
    delay: float = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _finite(name, self.start, self.end, self.steps, self.delay)
        if self.steps < 0 or self.delay < 0:
            raise ValueError(f"{name}(start, end, steps, delay): steps and delay must be >= 0, "
                             f"got steps={self.steps:g}, delay={self.delay:g}")


@dataclass(frozen=True)
class linear(_Ramp):  # noqa: N801
    def __call__(self, step: int | None) -> float:
        if step is None:
            return float(self.end)
        return float(self.start + (self.end - self.start) * _progress(step, self.steps, self.delay))


@dataclass(frozen=True)
class cosine(_Ramp):  # noqa: N801
    def __call__(self, step: int | None) -> float:
        if step is None:
            return float(self.end)
        t = _progress(step, self.steps, self.delay)
        return float(self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass(frozen=True)
class cyclical:  # noqa: N801
    start: float
    end: float
    period: float
    ratio: float = 0.5

    def __post_init__(self) -> None:
        _finite("cyclical", self.start, self.end, self.period, self.ratio)
        if self.period <= 0 or not 0 < self.ratio <= 1:
            raise ValueError(f"cyclical(start, end, period, ratio): period must be > 0 and ratio in (0, 1], "
                             f"got period={self.period:g}, ratio={self.ratio:g}")

    def __call__(self, step: int | None) -> float:
        if step is None:
            return float(self.end)
        t = (step % self.period) / self.period
        return float(self.start + (self.end - self.start) * min(t / self.ratio, 1.0))


_KINDS: dict[str, type] = {"constant": constant, "linear": linear, "cosine": cosine, "cyclical": cyclical}
_SPEC = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$")


def parse_schedule(spec: str | float | int) -> Schedule:
    """Parse a schedule spec (see the module docstring); a bare number is a constant."""
    if isinstance(spec, (int, float)):
        return constant(float(spec))
    try:
        return constant(float(spec))
    except ValueError:
        pass
    m = _SPEC.match(spec)
    if not m or m.group(1) not in _KINDS:
        raise ValueError(
            f"cannot parse schedule {spec!r}; expected a number or one of "
            f"{', '.join(f'{k}(...)' for k in _KINDS)}"
        )
    try:
        args = [float(a) for a in m.group(2).split(",") if a.strip()]
        return _KINDS[m.group(1)](*args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad arguments in schedule {spec!r}: {e}") from None


def lr_multiplier(kind: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Learning-rate multiplier: linear warm-up, then ``constant``, ``cosine`` or ``linear`` decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if kind == "linear":
        return 1.0 - t
    raise ValueError(f"unknown trainer.lr_schedule {kind!r}; expected constant, cosine or linear")
