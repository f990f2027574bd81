"""Benchmark: do flows tighten the bound? VAE, beta-VAE, IAF posterior, flow prior and both.

Trains each variant with the same convolutional network (conv 32-64 stride 2, dense 256, 16-d
latent, Bernoulli likelihood on [0, 1] pixels, Adam 1e-3, batch 128) and reports on the test
split: the IWAE NLL (k importance samples on a seeded random test subset), the negative ELBO,
the KL, active units, and seconds per training epoch. One seed per cell (the 2-core budget);
differences of about a nat are within seed noise.

Usage:
    python benchmarks/vae_variants.py --epochs 5 --threads 2 --k 1000 --test-subset 1000 \
        --save benchmarks/results/vae_variants.json
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
from aelab.io import atomic_write_text
from aelab.metrics.latent import latent_diagnostics
from aelab.metrics.likelihood import likelihood_metric
from aelab.models import build_model
from aelab.training.trainer import Trainer, TrainerConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NETWORK = {"kind": "conv", "channels": (32, 64), "fc": 256}
FLOW_PRIOR = {"name": "flow", "flows": 2, "hidden": 128}
VARIANTS = {
    "vae": ("vae", {}),
    "beta_vae (beta=4)": ("beta_vae", {"beta": "4.0"}),
    "iaf_vae": ("iaf_vae", {"flows": 2, "flow_hidden": 128, "context_dim": 32}),
    "vae + flow prior": ("vae", {"prior": FLOW_PRIOR}),
    "iaf_vae + flow prior": ("iaf_vae", {"flows": 2, "flow_hidden": 128, "context_dim": 32, "prior": FLOW_PRIOR}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--k", type=int, default=1000, help="importance samples for the NLL")
    p.add_argument("--test-subset", type=int, default=1000, help="seeded random test examples for the NLL")
    p.add_argument("--data", default="fashion-mnist,mnist-10k")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)))
    p.add_argument("--save", help="also write the JSON here (atomically)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    for data_name in args.data.split(","):
        data = load_data(DataConfig(name=data_name, root=args.data_dir))
        results[data_name] = {}
        for label in args.variants.split(","):
            name, extra = VARIANTS[label]
            torch.manual_seed(args.seed)
            model = build_model(name, image_shape=data.info.shape, latent_dim=args.latent_dim, backbone=NETWORK,
                                **extra)
            cfg = TrainerConfig(epochs=args.epochs, batch_size=128, lr=1e-3, images=False, progress=False,
                                seed=args.seed, diagnostics=False, iwae_k=0)
            epochs: list[dict] = []
            Trainer(model, data.train, None, cfg, on_epoch_end=[lambda t, m, e=epochs: e.append(m)]).fit()
            t0 = time.perf_counter()
            lik = likelihood_metric(model, data.test, k=args.k, limit=args.test_subset, seed=args.seed)
            eval_seconds = time.perf_counter() - t0
            diag = latent_diagnostics(model, data.test, limit=args.test_subset, seed=args.seed)
            results[data_name][label] = {
                f"nll_iwae_k{args.k}": lik[f"nll_iwae_k{args.k}"],
                "neg_elbo": lik["neg_elbo"],
                "kl": diag["kl_total"],
                "active_units": diag["active_units"],
                "mutual_info": diag["mutual_info"],
                "seconds_per_epoch": sum(m["seconds"] for m in epochs) / len(epochs),
                "nll_eval_seconds": eval_seconds,
                "parameters": sum(q.numel() for q in model.parameters()),
            }
            print(f"{data_name} {label}: {results[data_name][label]}", file=sys.stderr, flush=True)
    text = json.dumps({
        "benchmark": "vae_variants", "epochs": args.epochs, "threads": args.threads, "k": args.k,
        "test_subset": args.test_subset, "latent_dim": args.latent_dim, "seed": args.seed,
        "network": "conv 32-64 (4x4, stride 2) + dense 256, Bernoulli likelihood, Adam 1e-3, batch 128",
        "aelab": aelab.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "results": results,
    }, indent=2)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    main()
