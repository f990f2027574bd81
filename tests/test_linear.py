"""aelab.nn.Linear: oneDNN float32 products give torch's linear layer, its gradients and its semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aelab.compat import public_torch, set_private_torch
from aelab.losses.terms import encoder_jacobian_sq_norm
from aelab.nn import linear as L
from aelab.nn.linear import Linear, cpu_gemm, cpu_gemm_mode, linear, set_cpu_gemm

needs_onednn = pytest.mark.skipif(not L._onednn_available(), reason="PyTorch built without oneDNN")


def _grads(fn, x, w, b):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = b.clone().requires_grad_() if b is not None else None
    y = fn(x, w, b)
    g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
    y.backward(g)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@needs_onednn
@pytest.mark.parametrize("shape", [(100, 784), (7, 3, 64), (1, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_matches_torch_linear_and_its_gradients(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(48, shape[-1], generator=gen) / shape[-1] ** 0.5
    b = torch.randn(48, generator=gen) if bias else None
    with cpu_gemm("onednn"):
        got = _grads(linear, x, w, b)
        y = linear(x.requires_grad_(), w, b)
        assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"  # the fast path really ran
    want = _grads(F.linear, x.detach(), w, b)
    for a, e in zip(got, want):
        if e is None:
            assert a is None
        else:
            assert a.shape == e.shape
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_transposed_input_and_frozen_input():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, generator=gen).t()  # (100, 64), not contiguous
    w = torch.randn(32, 64, generator=gen, requires_grad=True)
    with cpu_gemm("onednn"):
        y = linear(x, w)
        y.sum().backward()
    torch.testing.assert_close(y, x @ w.detach().t(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.grad, torch.ones(100, 32).t() @ x, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_same_inputs_give_bitwise_same_outputs():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(100, 784, generator=gen), torch.randn(512, 784, generator=gen)
    with cpu_gemm("onednn"):
        assert torch.equal(linear(x, w), linear(x.clone(), w.clone()))


@needs_onednn
def test_double_backward_and_batched_grads_use_differentiable_ops():
    """The contractive AE differentiates through an autograd Jacobian (vmapped, create_graph)."""
    torch.manual_seed(0)
    enc = nn.Sequential(Linear(20, 30), nn.Sigmoid(), Linear(30, 6), nn.Sigmoid())
    x = torch.randn(5, 20)
    with cpu_gemm("onednn"):
        fast = encoder_jacobian_sq_norm(enc, x, create_graph=True)
        (g_fast,) = torch.autograd.grad(fast.sum(), enc[0].weight)
    with cpu_gemm("blas"):
        ref = encoder_jacobian_sq_norm(enc, x, create_graph=True)
        (g_ref,) = torch.autograd.grad(ref.sum(), enc[0].weight)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_other_dtypes_autocast_and_blas_take_torch_linear():
    x64 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with cpu_gemm("onednn"):
        assert torch.autograd.gradcheck(lambda a, b: linear(a, b), (x64, w64))
        assert type(linear(x64, w64).grad_fn).__name__ != "_OneDNNLinearBackward"
        x, w = torch.randn(8, 16), torch.randn(4, 16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x, w).dtype == torch.bfloat16
    with cpu_gemm("blas"):
        y = linear(torch.randn(100, 784), torch.randn(512, 784, requires_grad=True))
        assert type(y.grad_fn).__name__ == "MmBackward0"


def test_auto_rule_keeps_small_products_on_the_blas():
    x, w = torch.randn(4, 8), torch.randn(2, 8, requires_grad=True)
    with cpu_gemm("auto"):
        assert type(linear(x, w).grad_fn).__name__ == "MmBackward0"


def test_linear_module_is_a_drop_in_nn_linear():
    torch.manual_seed(0)
    ref = nn.Linear(10, 4)
    mine = Linear(10, 4)
    assert isinstance(mine, nn.Linear)
    mine.load_state_dict(ref.state_dict())
    assert list(mine.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 10)
    torch.testing.assert_close(mine(x), ref(x))


def test_mode_setting_and_bad_values(monkeypatch):
    monkeypatch.delenv("AELAB_CPU_GEMM", raising=False)
    assert cpu_gemm_mode() == "auto"
    with cpu_gemm("blas"):
        assert cpu_gemm_mode() == "blas"
    assert cpu_gemm_mode() == "auto"
    monkeypatch.setenv("AELAB_CPU_GEMM", "onednn")
    assert cpu_gemm_mode() == "onednn"
    monkeypatch.setenv("AELAB_CPU_GEMM", "cublas")
    with pytest.raises(ValueError, match="AELAB_CPU_GEMM.*auto, onednn, blas.*'cublas'"):
        cpu_gemm_mode()
    with pytest.raises(ValueError, match="cpu_gemm: expected one of"):
        set_cpu_gemm("fast")


@pytest.mark.parametrize("shape", [(100, 784), (7, 3, 64)])
def test_forced_public_path_is_torch_linear(shape):
    """Under public_torch() even the "onednn" rule runs torch.nn.functional.linear: bitwise its
    result and gradients, and the oneDNN result to float32 rounding where oneDNN exists."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    w = torch.randn(48, shape[-1], generator=gen) / shape[-1] ** 0.5
    b = torch.randn(48, generator=gen)
    with cpu_gemm("onednn"), public_torch():
        public = _grads(linear, x, w, b)
        assert type(linear(x.requires_grad_(), w, b).grad_fn).__name__ != "_OneDNNLinearBackward"
    for a, e in zip(public, _grads(F.linear, x.detach(), w, b)):
        assert torch.equal(a, e)
    if L._onednn_available():
        with cpu_gemm("onednn"):
            fast = _grads(linear, x.detach(), w, b)
        for a, e in zip(public, fast):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_switched_off_between_forward_and_backward():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 784, generator=gen)
    w = torch.randn(48, 784, generator=gen, requires_grad=True)
    with cpu_gemm("onednn"):
        y = linear(x, w)
        assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"
        with public_torch():
            y.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(100, 48).t() @ x, rtol=1e-5, atol=1e-4)


def test_environment_switch_forces_the_public_path(monkeypatch):
    x, w = torch.randn(100, 784), torch.randn(512, 784, requires_grad=True)
    monkeypatch.setenv("AELAB_TORCH_PRIVATE", "0")
    try:
        set_private_torch(None)  # re-read the environment
        with cpu_gemm("onednn"):
            assert type(linear(x, w).grad_fn).__name__ == "MmBackward0"
    finally:
        monkeypatch.delenv("AELAB_TORCH_PRIVATE")
        set_private_torch(None)
