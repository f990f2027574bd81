"""Benchmark: the five deterministic autoencoders on Fashion-MNIST.

Trains each model with the same MLP (784-512-256-32, ReLU, Bernoulli likelihood, Adam 1e-3,
batch 128) for ``--epochs`` epochs, side by side in one process, and prints JSON with the test
reconstruction error, the linear-probe accuracy on the frozen codes (softmax regression, the
classic measure in these papers), seconds per epoch and training samples per second. A probe on
the raw pixels is reported as the reference.

Usage:
    python benchmarks/deterministic_aes.py --epochs 5 --threads 2 > benchmarks/results/deterministic_aes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import aelab
from aelab.data.base import DataConfig, load_data
from aelab.metrics.probe import linear_probe
from aelab.metrics.reconstruction import encode_dataset, evaluate_reconstruction
from aelab.models import build_model
from aelab.training.trainer import Trainer, TrainerConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

MODELS = {
    "ae": {},
    "dae": {"corruption": {"kind": "masking", "level": 0.25}},
    "sparse_ae": {"rho": 0.05, "sparsity_weight": 1.0},
    "ksparse_ae": {"k": 8, "k_start": 32, "k_steps": 2000, "alpha": 2.0},
    "cae": {"contractive_weight": 0.1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=None, help="for a quick smoke run only")
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)),
                   help="data directory (default: $AELAB_DATA_DIR, else ../shared/data beside the checkout)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name=args.data, root=args.data_dir, train_subset=args.train_subset))
    batch = data.train.get_batch(torch.arange(len(data.train)))
    x_tr, y_tr = batch.x, batch.y
    batch = data.test.get_batch(torch.arange(len(data.test)))
    x_te, y_te = batch.x, batch.y
    t0 = time.perf_counter()
    raw = linear_probe(x_tr.flatten(1), y_tr, x_te.flatten(1), y_te)
    results = {"raw_pixels": {"probe_test_acc": raw["probe_test_acc"], "probe_seconds": time.perf_counter() - t0}}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, image_shape=data.info.shape, latent_dim=32,
                            backbone={"kind": "mlp", "hidden": (512, 256)}, **MODELS[name])
        cfg = TrainerConfig(epochs=args.epochs, batch_size=128, lr=1e-3, images=False, progress=False,
                            seed=0)
        epoch_stats: list[dict] = []
        trainer = Trainer(model, data.train, None, cfg, on_epoch_end=[lambda t, m, s=epoch_stats: s.append(m)])
        trainer.fit()
        test = evaluate_reconstruction(model, data.test)
        z_tr, _ = encode_dataset(model, data.train)
        z_te, _ = encode_dataset(model, data.test)
        probe = linear_probe(z_tr, y_tr, z_te, y_te)
        secs = [m["seconds"] for m in epoch_stats]
        results[name] = {
            "test_mse_per_pixel": test["mse"],
            "test_recon_nll_nats": test["recon"],
            "probe_test_acc": probe["probe_test_acc"],
            "seconds_per_epoch": sum(secs) / len(secs),
            "train_samples_per_second": sum(m["samples_per_second"] for m in epoch_stats) / len(epoch_stats),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "deterministic_aes", "data": args.data, "epochs": args.epochs, "threads": args.threads,
        "train_size": len(data.train), "test_size": len(data.test),
        "network": "MLP 784-512-256-32 (ReLU), Bernoulli likelihood, Adam 1e-3, batch 128",
        "aelab": aelab.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
