"""Where aelab calls PyTorch's private functions, and the public path it takes otherwise.

Two fast paths use functions outside PyTorch's public API, which change without notice between
releases:

* the lean Adam/AdamW step (:mod:`aelab.training.optim`): ``torch._fused_adam_``,
  ``torch._fused_adamw_``, ``torch._foreach_add_``, ``torch._C._autograd._profiler_enabled`` and
  the optimizer hook registries of ``torch.optim.optimizer``; public path: torch's own
  ``Optimizer.step`` (bitwise the same updates);
* the oneDNN linear layer (:mod:`aelab.nn.linear`): ``torch.ops.mkldnn._linear_pointwise`` and
  ``torch._C._functorch.is_functorch_wrapped_tensor``; public path:
  ``torch.nn.functional.linear`` (the same product up to float32 rounding).

A private path is taken only when all of these hold:

* PyTorch's release series (major.minor) is one in :data:`CHECKED_TORCH`, the versions whose
  private functions the test suite has been run against;
* every private function the path calls exists (probed once, by :func:`private_attr`), so a
  renamed or removed function means the public path, not a crash;
* it is not switched off: ``AELAB_TORCH_PRIVATE=0`` in the environment (read at first use), or
  :func:`set_private_torch` / the :func:`public_torch` context at run time.

Optional packages are imported where they are used; a missing one raises
:class:`MissingDependencyError` (an ``ImportError``) with a one-line message naming the install
command.

Example:
    >>> torch_series_checked("2.13.0+cpu"), torch_series_checked("2.14.0"), torch_series_checked("2.1.2")
    (True, False, False)
    >>> private_attr("torch.no_such_function_") is None
    True
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["CHECKED_TORCH", "MissingDependencyError", "private_attr", "private_torch_enabled", "public_torch",
           "set_private_torch", "torch_series_checked"]

# PyTorch release series (major, minor) the private fast paths are tested on; extend only after
# running the test suite (tests/test_optim.py, tests/test_linear.py) on the new series
CHECKED_TORCH: tuple[tuple[int, int], ...] = ((2, 13),)



class MissingDependencyError(ImportError):
    """A package aelab needs for the feature at hand is not installed (the message says how to add it)."""


_OFF = ("0", "off", "false", "no", "public")
_ON = ("", "1", "on", "true", "yes", "auto")


def torch_series_checked(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed PyTorch's) is in a checked release series."""
    m = re.match(r"(\d+)\.(\d+)", version if version is not None else str(torch.__version__))
    return m is not None and (int(m.group(1)), int(m.group(2))) in CHECKED_TORCH


def private_attr(dotted: str) -> Any:
    """The object at ``dotted`` (``"torch._fused_adam_"``, ``"torch.optim.optimizer._x"``), or ``None``
    when the installed PyTorch lacks it or is not a checked version (a feature probe: never raises)."""
    if not torch_series_checked():
        return None
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except (AttributeError, RuntimeError):  # torch.ops raises RuntimeError for unknown ops
            return None
        return obj
    return None


_enabled: bool | None = None  # None: read AELAB_TORCH_PRIVATE at first use


def _env_enabled() -> bool:
    value = os.environ.get("AELAB_TORCH_PRIVATE", "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    raise ValueError(f"AELAB_TORCH_PRIVATE: expected 1 or 0, got {value!r}")


def private_torch_enabled() -> bool:
    """Whether the private fast paths may run (the switch only; each path also probes its functions)."""
    global _enabled
    if _enabled is None:
        _enabled = _env_enabled()
    return _enabled


def set_private_torch(enabled: bool | None) -> None:
    """Allow (``True``) or forbid (``False``) the private fast paths in this process; ``None``:
    back to ``AELAB_TORCH_PRIVATE``, read now."""
    global _enabled
    _enabled = _env_enabled() if enabled is None else bool(enabled)


@contextmanager
def public_torch() -> Iterator[None]:
    """``with public_torch(): ...`` runs the block on PyTorch's public API only."""
    old = _enabled
    set_private_torch(False)
    try:
        yield
    finally:
        set_private_torch(old)
