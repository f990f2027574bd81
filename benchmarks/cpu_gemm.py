"""Benchmark: float32 linear layers on oneDNN (``aelab.nn.Linear``) vs PyTorch's BLAS, side by side.

Measures, in one process and interleaved (``--rounds`` rounds, each timing every variant in turn,
so load from other processes falls on all of them alike):

* each layer product of the MLP VAE in ``benchmarks/vae_vs_pythae.py`` (batch 100, 784-512-16),
  forward and backward (input and weight gradients), under ``AELAB_CPU_GEMM=blas`` and ``onednn``;
* a whole training step of that VAE (forward, loss, backward, fused Adam) under ``blas`` and
  ``auto`` (the default rule).

Prints JSON: milliseconds per call (median over rounds) and the ratios blas / oneDNN.

Usage:
    python benchmarks/cpu_gemm.py [--threads 2] [--rounds 7] [--save]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from aelab.batch import Batch
from aelab.io import atomic_write_text
from aelab.models import build_model
from aelab.nn.linear import cpu_gemm, linear

RESULT = Path(__file__).resolve().parent / "results" / "cpu_gemm.json"


def timed(fn, calls: int) -> float:
    """Milliseconds per call of ``fn`` over ``calls`` calls (after two warm-up calls)."""
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def layer_case(batch: int, fan_in: int, fan_out: int, first: bool):
    """Forward + backward of one layer; the first layer needs no input gradient."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, fan_in, generator=gen).requires_grad_(not first)
    w = (torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5).requires_grad_()
    b = torch.zeros(fan_out, requires_grad=True)
    g = torch.randn(batch, fan_out, generator=gen)

    def run() -> None:
        linear(x, w, b).backward(g)

    return run


def vae_step_case():
    torch.manual_seed(0)
    model = build_model("vae", image_shape=(1, 28, 28), latent_dim=16, backbone={"kind": "mlp", "hidden": (512,)})
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    data = torch.rand(6000, 1, 28, 28).round()
    state = {"i": 0}

    def run() -> None:
        i = state["i"] = (state["i"] + 1) % 60
        out = model.loss(Batch(data[i * 100:(i + 1) * 100]), i)
        out.loss.item()
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=100, help="calls per timing")
    p.add_argument("--save", action="store_true", help=f"also write the JSON to {RESULT}")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cases = {
        "encoder 784->512 (fwd+bwd)": (layer_case(100, 784, 512, first=True), ("blas", "onednn")),
        "head 512->32 (fwd+bwd)": (layer_case(100, 512, 32, first=False), ("blas", "onednn")),
        "decoder 16->512 (fwd+bwd)": (layer_case(100, 16, 512, first=False), ("blas", "onednn")),
        "decoder 512->784 (fwd+bwd)": (layer_case(100, 512, 784, first=False), ("blas", "onednn")),
        "MLP VAE training step": (vae_step_case(), ("blas", "auto")),
    }
    times: dict[str, dict[str, list[float]]] = {name: {m: [] for m in modes} for name, (_, modes) in cases.items()}
    for _ in range(args.rounds):
        for name, (fn, modes) in cases.items():
            for mode in modes:
                with cpu_gemm(mode):
                    times[name][mode].append(timed(fn, args.calls))
    results = {}
    for name, (_, modes) in cases.items():
        med = {m: statistics.median(times[name][m]) for m in modes}
        results[name] = {**{f"ms_{m}": round(v, 4) for m, v in med.items()},
                         "blas_over_onednn": round(med["blas"] / med[modes[1]], 3)}
    text = json.dumps({
        "benchmark": "cpu_gemm",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "rounds": args.rounds,
        "calls_per_timing": args.calls,
        "results": results,
    }, indent=2)
    print(text)
    if args.save:
        atomic_write_text(RESULT, text + "\n")


if __name__ == "__main__":
    main()
