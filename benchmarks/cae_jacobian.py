"""Benchmark: the contractive penalty computed exactly, in closed form, and by the Hutchinson estimator.

Two encoders on Fashion-MNIST, Bernoulli likelihood, sigmoid codes of size 32, lambda = 0.1, Adam
1e-3, batch 128:

* ``deep``: the CAE of ``benchmarks/deterministic_aes.py`` (MLP 784-512-256-32, ReLU). No closed
  form exists for it (``auto`` is ``exact``): exact vs Hutchinson.
* ``one_layer``: Rifai et al.'s encoder, ``z = sigmoid(W x + b)`` (``backbone.hidden=()``, the
  decoder then a single layer too): exact vs closed form (``auto``) vs Hutchinson.

For each, the seconds of one training step (forward, penalty, backward, Adam), interleaved
between the modes in one process, median over ``--reps``; then ``--steps`` training steps from the
same initialisation and data order for each mode, and the test objective (reconstruction NLL plus
lambda times the exact penalty; at evaluation every mode computes the penalty exactly).

Usage:
    python benchmarks/cae_jacobian.py --threads 2 > benchmarks/results/cae_jacobian.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from _host import host_info

from aelab.batch import Batch
from aelab.data.base import DataConfig, load_data
from aelab.metrics.reconstruction import evaluate_reconstruction
from aelab.models import build_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ENCODERS = {"deep": (512, 256), "one_layer": ()}


def _model(hidden: tuple[int, ...], jacobian: str, samples: int, shape) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cae", image_shape=shape, latent_dim=32, backbone={"kind": "mlp", "hidden": hidden},
                       contractive_weight=0.1, jacobian=jacobian, jacobian_samples=samples)


def _step(model, opt, x) -> None:
    opt.zero_grad(set_to_none=True)
    model.loss(Batch(x), 0).loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=30, help="timed steps per mode (interleaved)")
    p.add_argument("--steps", type=int, default=400, help="training steps per mode before the test loss")
    p.add_argument("--samples", type=int, default=1, help="Hutchinson probes per example")
    p.add_argument("--encoders", default=",".join(ENCODERS))
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name="fashion-mnist", root=args.data_dir))
    shape = data.info.shape
    results: dict = {}
    for enc in args.encoders.split(","):
        hidden = ENCODERS[enc]
        modes = ["exact", "hutchinson"] + (["auto"] if not hidden else [])
        g = torch.Generator().manual_seed(0)
        x = data.train.get_batch(torch.randperm(len(data.train), generator=g)[:128]).x
        models = {m: _model(hidden, m, args.samples, shape) for m in modes}
        opts = {m: torch.optim.Adam(models[m].parameters(), lr=1e-3) for m in modes}
        times: dict[str, list[float]] = {m: [] for m in modes}
        for rep in range(args.reps + 2):  # two warm-up rounds
            for m in modes:
                t0 = time.perf_counter()
                _step(models[m], opts[m], x)
                if rep >= 2:
                    times[m].append(time.perf_counter() - t0)
        out = {}
        for m in modes:
            model = _model(hidden, m, args.samples, shape)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            g = torch.Generator().manual_seed(1)
            torch.manual_seed(1)  # the same Hutchinson probes stream for every run
            order = torch.randperm(len(data.train), generator=g)
            t0 = time.perf_counter()
            for s in range(args.steps):
                idx = order[(s * 128) % len(order):][:128]
                _step(model, opt, data.train.get_batch(idx).x)
            train_s = time.perf_counter() - t0
            test = evaluate_reconstruction(model, data.test)
            name = "closed_form" if m == "auto" else m
            out[name] = {"step_seconds_median": statistics.median(times[m]),
                         "step_seconds_iqr": statistics.quantiles(times[m], n=4)[::2],
                         "train_seconds": train_s, "test_loss": test["loss"], "test_recon_nll": test["recon"],
                         "test_contractive": test["contractive"], "test_mse_per_pixel": test["mse"]}
            print(f"{enc} {name}: {out[name]}", file=sys.stderr, flush=True)
        results[enc] = {"network": f"MLP {'-'.join(map(str, (784, *hidden, 32)))}, sigmoid codes", "modes": out}
    print(json.dumps({
        "benchmark": "cae_jacobian", "data": "fashion-mnist", "batch": 128, "contractive_weight": 0.1,
        "hutchinson_samples": args.samples, "reps": args.reps, "train_steps": args.steps,
        "test_size": len(data.test), "host": host_info(args.threads), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
