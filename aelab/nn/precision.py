"""Mixed precision: which parts of a model may run in bfloat16.

Under ``trainer.precision=bf16`` the trainer runs ``model.loss`` inside ``torch.autocast``. The
backbones (encoder and decoder matrix products and convolutions: nearly all of the arithmetic)
then run in bfloat16, but everything probabilistic must not: a Bernoulli log-likelihood summed
over 784 pixels needs more than bfloat16's 8 significant bits, flows need exact log-determinants,
and a quantizer's nearest-code search must not flip on rounding. Models wrap those parts in
:func:`float32_region` and cast their inputs with :func:`upcast` (16-bit floats to float32;
float32 and float64 unchanged).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

#: ``trainer.precision`` and ``aelab eval --precision``: each setting's autocast dtype (``None``:
#: float32, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def precision_context(precision: str, device: torch.device | str = "cpu") -> AbstractContextManager:
    """The context a forward pass runs in at ``precision``: nothing for ``fp32``, bfloat16
    autocast on ``device``'s type for ``bf16``.

    Example:
        >>> with precision_context("bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def float32_region(x: Tensor) -> AbstractContextManager:
    """A context in which autocast is off on ``x``'s device, so ops run in their inputs' dtype.

    Outside autocast it is a no-op context (entering a disabled autocast costs a few microseconds
    on every call, which small models pay several times a step).

    Example:
        >>> x = torch.randn(2, 3)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     with float32_region(x):
        ...         y = x @ x.T
        >>> y.dtype
        torch.float32
    """
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return nullcontext()
    return torch.autocast(device, enabled=False)


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in a 16-bit float type (autocast output), else unchanged (float64 stays).

    Example:
        >>> upcast(torch.ones(2, dtype=torch.bfloat16)).dtype, upcast(torch.ones(2, dtype=torch.float64)).dtype
        (torch.float32, torch.float64)
    """
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
