"""Honest dependencies: private PyTorch functions only on checked versions, with a public fallback;
optional packages fail with a one-line message where they are used."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from aelab import compat
from aelab.compat import MissingDependencyError, private_attr, set_private_torch, torch_series_checked
from aelab.report import figures


def test_checked_versions_and_probe(monkeypatch):
    assert torch_series_checked("2.13.0") and torch_series_checked("2.13.1+cpu")
    assert not torch_series_checked("2.12.1") and not torch_series_checked("2.14.0.dev20260101")
    assert not torch_series_checked("3.13.0") and not torch_series_checked("nightly")
    assert private_attr("torch.no_such_function_") is None
    assert private_attr("torch.ops.mkldnn._no_such_op") is None
    assert private_attr("torch.nn.functional.linear") is torch.nn.functional.linear
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert private_attr("torch.nn.functional.linear") is None  # unchecked torch: nothing private


def test_switch_values(monkeypatch):
    try:
        for value, enabled in [("0", False), ("off", False), ("", True), ("1", True)]:
            monkeypatch.setenv("AELAB_TORCH_PRIVATE", value)
            set_private_torch(None)
            assert compat.private_torch_enabled() is enabled
        monkeypatch.setenv("AELAB_TORCH_PRIVATE", "maybe")
        with pytest.raises(ValueError, match="AELAB_TORCH_PRIVATE: expected 1 or 0, got 'maybe'"):
            set_private_torch(None)
    finally:
        monkeypatch.delenv("AELAB_TORCH_PRIVATE")
        set_private_torch(None)
    assert compat.private_torch_enabled()


def test_unchecked_torch_takes_the_public_paths():
    """On a PyTorch outside CHECKED_TORCH no private function is even looked up: Adam is torch's
    Adam (bitwise torch's fused result) and every linear product is torch.nn.functional.linear."""
    code = """
import torch
torch.__version__ = "2.99.0"
from aelab.nn import linear as L
from aelab.training import optim
assert not optim.LEAN_AVAILABLE and optim._LeanStep not in optim.Adam.__mro__
assert not L._onednn_available() and L._linear_pointwise is None
x, w = torch.randn(100, 784), torch.randn(512, 784, requires_grad=True)
with L.cpu_gemm("onednn"):
    assert torch.equal(L.linear(x, w), torch.nn.functional.linear(x, w))
nets = []
for cls in (optim.Adam, torch.optim.Adam):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = cls(net.parameters(), lr=0.1, fused=True)
    for _ in range(3):
        opt.zero_grad(); (net(torch.ones(2, 4)) ** 2).sum().backward(); opt.step()
    nets.append(net)
assert all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), nets[1].parameters()))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_matplotlib_gives_one_clear_line(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "import matplotlib" fails
    with pytest.raises(MissingDependencyError) as err:
        figures.plot_kl_per_dimension([0.5, 0.1], tmp_path / "kl.png")
    assert str(err.value) == "aelab: figures need matplotlib: pip install 'matplotlib>=3.7'"
    assert isinstance(err.value, ImportError)
    assert not (tmp_path / "kl.png").exists()
