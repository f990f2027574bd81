"""Linear layers whose float32 CPU matrix products can run on oneDNN instead of the BLAS.

PyTorch sends a float32 ``nn.Linear`` on the CPU to its BLAS (MKL in the official wheels). MKL
picks its AVX-512 kernels only on Intel processors; on AMD processors with AVX-512 (Zen 4 and
later) it runs its AVX2 kernels, about half the speed the hardware allows. oneDNN, which PyTorch
also ships (it already runs PyTorch's CPU convolutions), chooses kernels by instruction set, not
by vendor. ``aelab.nn.Linear`` is an ``nn.Linear`` (same parameters, same state-dict keys, same
result up to float32 rounding) whose forward and backward products go to oneDNN when that is
where they are faster.

Which backend runs is decided by a rule, never by timing, so a run and its resume use the same
kernels (exact resume):

The environment variable is read when a layer first runs (``set_cpu_gemm`` and the ``cpu_gemm``
context change the rule later):

* ``AELAB_CPU_GEMM=auto`` (the default): oneDNN when PyTorch reports AVX-512 on the CPU and the
  product is large enough (``batch * in * out >= 2**22``; the small ones are as fast or faster in
  the BLAS), the BLAS otherwise.
* ``AELAB_CPU_GEMM=onednn``: oneDNN for every eligible product, whatever the size or CPU.
* ``AELAB_CPU_GEMM=blas``: never oneDNN (exactly ``torch.nn.functional.linear``).

Eligible means: CPU tensors, float32 input and weight, no autocast (under autocast PyTorch's own
bfloat16 path, already oneDNN, runs), no ``torch.func`` transform, not being compiled. Anything
else, and double backward (``create_graph=True``, as in the contractive AE), uses the ordinary
differentiable operations. ``benchmarks/cpu_gemm.py`` measures both backends side by side.

The oneDNN path calls PyTorch's private ``torch.ops.mkldnn._linear_pointwise`` (and
``torch._C._functorch.is_functorch_wrapped_tensor``), so it runs only on a checked PyTorch where
both exist (:mod:`aelab.compat`); elsewhere, and under ``AELAB_TORCH_PRIVATE=0`` or
:func:`aelab.compat.public_torch`, every product is ``torch.nn.functional.linear``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aelab.compat import private_attr, private_torch_enabled

MODES = ("auto", "onednn", "blas")
MIN_WORK = 1 << 22  # batch * in * out below which "auto" keeps the BLAS

# the private functions of the oneDNN path; None where this torch lacks one or is unchecked
_linear_pointwise = private_attr("torch.ops.mkldnn._linear_pointwise")
_is_functorch_wrapped = private_attr("torch._C._functorch.is_functorch_wrapped_tensor")

_mode: str | None = None  # None: read AELAB_CPU_GEMM


def cpu_gemm_mode() -> str:
    """The backend rule in force: ``auto``, ``onednn`` or ``blas`` (see the module doc)."""
    if _mode is not None:
        return _mode
    return _env_mode(os.environ.get("AELAB_CPU_GEMM", "auto"))


_dispatch_mode: str | None = None  # what the layers use: cpu_gemm_mode() at first use or last set


def _layer_mode() -> str:
    global _dispatch_mode
    if _dispatch_mode is None:
        _dispatch_mode = cpu_gemm_mode()
    return _dispatch_mode


@functools.lru_cache(maxsize=8)
def _env_mode(value: str) -> str:
    mode = value.strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"AELAB_CPU_GEMM: expected one of {', '.join(MODES)}, got {value!r}")
    return mode


def set_cpu_gemm(mode: str | None) -> None:
    """Set the backend rule for this process (``None``: back to ``AELAB_CPU_GEMM``, read now)."""
    global _mode, _dispatch_mode
    if mode is not None and mode not in MODES:
        raise ValueError(f"cpu_gemm: expected one of {', '.join(MODES)}, got {mode!r}")
    _mode = mode
    _dispatch_mode = cpu_gemm_mode()


@contextmanager
def cpu_gemm(mode: str) -> Iterator[None]:
    """``with cpu_gemm("blas"): ...`` runs the block under another backend rule."""
    old = _mode
    set_cpu_gemm(mode)
    try:
        yield
    finally:
        set_cpu_gemm(old)


@functools.cache
def _onednn_available() -> bool:
    return (torch.backends.mkldnn.is_available() and _linear_pointwise is not None
            and _is_functorch_wrapped is not None)


@functools.cache
def _has_avx512() -> bool:
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _transformed(t: Tensor) -> bool:
    return _is_functorch_wrapped(t)


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    # cheapest tests first: this runs on every call of every layer
    if x.dtype is not torch.float32 or weight.dtype is not torch.float32 or x.device.type != "cpu":
        return False
    mode = _layer_mode()
    if mode == "blas" or weight.device.type != "cpu" or x.dim() == 0 or x.numel() == 0:
        return False
    if mode == "auto" and (not _has_avx512()
                           or x.numel() // x.shape[-1] * weight.shape[0] * weight.shape[1] < MIN_WORK):
        return False
    if not _onednn_available() or not private_torch_enabled():
        return False
    return not (torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or _transformed(x)
                or _transformed(weight))


def _mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T (+ bias)`` by oneDNN, for 2-D float32 CPU tensors (transposed views are fine)."""
    return _linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        ctx.in_shape = x.shape
        return _mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        # double backward or a vmapped backward: ordinary, differentiable operations (and the
        # public ones if private functions were switched off since the forward)
        plain = (torch.is_grad_enabled() or _transformed(g) or g.dtype != torch.float32
                 or not private_torch_enabled())
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gx = g @ weight if plain else _mm(g, weight.t())
            grad_x = gx.view(ctx.in_shape)
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ x2 if plain else _mm(g.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` like ``torch.nn.functional.linear``, on oneDNN where it is faster."""
    if _use_onednn(x, weight) and (bias is None or bias.dtype == torch.float32):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``torch.nn.Linear`` computed by :func:`linear` (same parameters and state-dict keys).

    Example:
        >>> layer = Linear(3, 2)
        >>> layer(torch.zeros(4, 3)).shape
        torch.Size([4, 2])
    """

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
