"""Benchmark: memory and time of the dimension-wise IMQ MMD, direct formula vs chunked.

``direct`` is the formula aelab used before issue 18: whole ``(B, B, D)`` difference tensors,
differentiated by autograd (which keeps several of them per kernel scale). ``chunked`` is
:func:`aelab.losses.terms.imq_mmd_per_dimension` (row blocks of ``chunk``, gradient in the same
pass). For batch 500 and each D:

* peak memory: growth of the process's peak resident set over one forward and backward of the
  MMD, each in a fresh subprocess: the high-water mark ``VmHWM`` is reset (``/proc/self/clear_refs``,
  Linux) after a warm-up call, and the growth is ``VmHWM`` afterwards minus ``VmRSS`` before
  (``ru_maxrss`` would not do: it keeps the parent's high-water mark across ``exec``);
* seconds of that forward and backward, and of one training step of the decomposition VAE
  (default MLP backbone, ``alpha=1``, random images in [0, 1]) with its divergence term computed
  either way; interleaved in one process, medians.

Usage:
    python benchmarks/mmd_memory.py --threads 2 > benchmarks/results/mmd_memory.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _host import host_info
from torch import Tensor

from aelab.batch import Batch
from aelab.losses.terms import MMD_SCALES, imq_mmd_per_dimension
from aelab.models import build_model


def direct_mmd(x: Tensor, y: Tensor, scales: tuple[float, ...] = MMD_SCALES) -> Tensor:
    """The formula before chunking (aelab 449ae5d), verbatim."""
    b = x.shape[0]
    dxx = (x[:, None] - x[None]).pow(2)  # (B, B, D)
    dyy = (y[:, None] - y[None]).pow(2)
    dxy = (x[:, None] - y[None]).pow(2)
    total = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    for s in scales:
        c = 2.0 * s
        kxx = ((c / (c + dxx)).sum((0, 1)) - b) / (b * (b - 1))
        kyy = ((c / (c + dyy)).sum((0, 1)) - b) / (b * (b - 1))
        kxy = (c / (c + dxy)).sum((0, 1)) / (b * b)
        total = total + kxx + kyy - 2.0 * kxy
    return total


IMPLS = {"direct": direct_mmd, "chunked": imq_mmd_per_dimension}


class DirectDivergence:
    """The decomposition objective's MMD term with the direct formula (for the step-time comparison)."""

    def __call__(self, out, model) -> Tensor:
        b = out.z.shape[0]
        return direct_mmd(out.z, out.pz.rsample((b,))).sum().expand(b)


def _fwd_bwd(impl: str, b: int, d: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=g, requires_grad=True)
    y = torch.randn(b, d, generator=g, requires_grad=True)
    IMPLS[impl](x, y).sum().backward()


def _status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _peak_child(impl: str, b: int, d: int) -> None:
    _fwd_bwd(impl, 4, d)  # load the kernels before the baseline
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    _fwd_bwd(impl, b, d)
    print(json.dumps({"peak_rss_growth_mib": (_status_kib("VmHWM") - before) / 1024}))


def _train_step(model, opt, x: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    model.loss(Batch(x), 0).loss.backward()
    opt.step()


def _median_seconds(fns: dict, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(reps + 2):  # two warm-up rounds
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if rep >= 2:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--dims", default="10,32,64")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--child", nargs=3, metavar=("IMPL", "B", "D"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _peak_child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    b, results = args.batch, {}
    for d in map(int, args.dims.split(",")):
        row: dict = {"tensor_bxbxd_mib": b * b * d * 4 / 2**20}
        for impl in IMPLS:
            child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", impl,
                                    str(b), str(d)], check=True, capture_output=True, text=True)
            row[f"{impl}_peak_rss_growth_mib"] = json.loads(child.stdout)["peak_rss_growth_mib"]
        row["mmd_fwd_bwd_seconds"] = _median_seconds({k: (lambda k=k, d=d: _fwd_bwd(k, b, d)) for k in IMPLS},
                                                     args.reps)
        models, opts = {}, {}
        for impl in IMPLS:
            torch.manual_seed(0)
            models[impl] = build_model("decomposition_vae", image_shape=(1, 28, 28), latent_dim=d, alpha="1")
            if impl == "direct":
                models[impl].objective.terms["divergence"] = (DirectDivergence(),
                                                              models[impl].objective.terms["divergence"][1])
            opts[impl] = torch.optim.Adam(models[impl].parameters(), lr=1e-3)
        x = torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(0))

        row["decomposition_step_seconds"] = _median_seconds(
            {k: (lambda k=k, m=models, o=opts, x=x: _train_step(m[k], o[k], x)) for k in IMPLS}, args.reps)
        results[f"D={d}"] = row
        print(f"D={d}: {row}", file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "mmd_memory", "batch": b, "scales": list(MMD_SCALES), "chunk": 64,
                      "host": host_info(args.threads), "results": results}, indent=2))


if __name__ == "__main__":
    main()
