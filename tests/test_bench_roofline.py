"""The roofline benchmark's counter against hand counts (the independent check of its wiring: aelab's
oneDNN linear and the float32 LSTM run operators FlopCounterMode has no formula for), and a
``--quick`` run of one family on real data with the fields the README table reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from aelab.nn.linear import Linear, cpu_gemm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import roofline  # noqa: E402


@pytest.mark.parametrize("mode", ["blas", "onednn"])
def test_mlp_stack_counts_by_hand(mode):
    b, sizes = 8, [(784, 512), (512, 16)]
    torch.manual_seed(0)
    net = nn.Sequential(Linear(*sizes[0]), nn.ReLU(), Linear(*sizes[1]))
    x = torch.rand(b, 784)  # no gradient wanted for the input
    with cpu_gemm(mode):
        total, by_op = roofline.count_flops(lambda: net(x).square().sum().backward())
    forward = sum(2 * b * i * o for i, o in sizes)
    weight_grads = forward
    input_grads = 2 * b * 512 * 16  # the second layer only: the first one's input needs none
    assert total == forward + weight_grads + input_grads
    assert ("mkldnn._linear_pointwise" in by_op) == (mode == "onednn")


def test_lstm_counts_by_hand():
    b, t, e, h = 3, 5, 8, 16
    torch.manual_seed(0)
    lstm = nn.LSTM(e, h, batch_first=True)
    x = torch.randn(b, t, e, requires_grad=True)
    total, _ = roofline.count_flops(lambda: lstm(x)[0].sum().backward())
    forward = 2 * b * t * 4 * h * (e + h)  # x_t W_ih^T + h_{t-1} W_hh^T, four gates
    assert total == 3 * forward  # backward: the input/state gradients and the weight gradients


def test_quick_run_reports_every_field(capsys):
    report = roofline.main(["--quick", "--families", "mlp_vae", "--no-peers", "--threads", "1", "--markdown",
                            "--profile", "2", "--bf16"])
    out = capsys.readouterr()
    assert json.loads(out.out) == json.loads(json.dumps(report))
    assert {"cpu", "flags", "threads", "cpu_capability"} <= set(report["host"])
    bound = report["bound"]
    assert bound["fp32_gflops"] == max(m["fp32_gflops"] for m in bound["measurements"]) > 0
    assert len(bound["measurements"]) == 2  # before the round and after it
    row = report["families"]["mlp_vae"]["aelab"]
    for key in ("gflop_per_step", "gflop_per_step_by_op", "ms_per_step", "steps_per_second", "achieved_gflops",
                "fraction_of_fp32_bound"):
        assert key in row
    # the pythae protocol's VAE, batch 100: 784-512, 512-32 (mean and log-variance), 16-512, 512-784
    b = 100
    forward = 2 * b * (784 * 512 + 512 * 32 + 16 * 512 + 512 * 784)
    assert row["gflop_per_step"] * 1e9 == pytest.approx(3 * forward - 2 * b * 784 * 512, rel=1e-12)
    assert row["fraction_of_fp32_bound"] == pytest.approx(row["achieved_gflops"] / bound["fp32_gflops"])
    assert "| MLP VAE (pythae protocol) | 100 |" in out.err
    prof = row["profile"]  # where the step's time goes, per operator
    assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0 and prof["operator_calls_per_step"] > 10
    ops = prof["ms_per_step_by_operator"]
    assert any("linear" in k or "addmm" in k for k in ops) and any("adam" in k.lower() for k in ops), ops
    assert prof["in_operators_ms_per_step"] == pytest.approx(sum(ops.values()) + prof["other_operators_ms_per_step"])
    assert prof["outside_operators_ms_per_step"] == pytest.approx(prof["wall_ms_per_step"]
                                                                  - prof["in_operators_ms_per_step"])
    assert "outside any operator" in out.err
    bf16 = report["families"]["mlp_vae"]["variants"]["bf16"]  # the bfloat16 twin: the same FLOPs, its own time
    assert bf16["gflop_per_step"] == pytest.approx(row["gflop_per_step"], rel=1e-12)
    assert bf16["speedup"] == pytest.approx(row["ms_per_step"] / bf16["ms_per_step"])
    assert "| MLP VAE (pythae protocol) | bf16 |" in out.err


def test_channels_last_twins_keep_the_flops():
    report = roofline.main(["--quick", "--families", "conv_vae", "--no-peers", "--threads", "1", "--bf16",
                            "--channels-last"])
    fam = report["families"]["conv_vae"]
    row = fam["aelab"]
    assert set(fam["variants"]) == {"bf16", "channels_last", "bf16_channels_last"}
    for name, twin in fam["variants"].items():  # the same step in another layout or precision: the same FLOPs
        assert twin["gflop_per_step"] == pytest.approx(row["gflop_per_step"], rel=1e-12), name
        assert twin["bound"] == ("bf16" if name.startswith("bf16") else "fp32")
