"""Reproduce the claims of Mathieu et al. (2019), "Disentangling Disentanglement in VAEs", on 2 CPU cores.

One command per claim, several seeds each; prints JSON with every run and the mean and standard
deviation per setting, and writes pictures (latent traversals; aggregate posterior vs prior for
2-D latents) under ``--out``. Claim 1 (rotation invariance) is a test:
``tests/test_decomposition.py::test_rotation_invariance_only_with_an_isotropic_prior``.

  python benchmarks/decomposition_claims.py dsprites --seeds 0,1,2   # 2: anisotropic vs isotropic prior
  python benchmarks/decomposition_claims.py dsprites --protocol fast  # 2, with the first table's quick metrics
  python benchmarks/decomposition_claims.py sparsity --seeds 0,1,2   # 3: sparse prior, alpha > 0 vs 0
  python benchmarks/decomposition_claims.py pinwheel --seeds 0,1,2   # 4: mixture prior, alpha > 0 vs 0

The dSprites protocol (``--train-images``, default 120,000 seeded random images, one pass, batch
64) is sized so that one training run and its full metric suite take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _host import host_info

import aelab
from aelab.data.base import DataConfig, load_data
from aelab.io import atomic_write_text
from aelab.metrics.clustering import clustering_metric
from aelab.metrics.disentanglement import disentanglement_metric
from aelab.metrics.reconstruction import encode_dataset, evaluate_reconstruction
from aelab.metrics.sparsity import sparsity_metric
from aelab.models import build_model
from aelab.report.figures import plot_latent_scatter, write_run_figures
from aelab.training.trainer import Trainer, TrainerConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: claim -> (data config, model settings shared by all runs, {setting label: model overrides}, trainer settings)
CLAIMS: dict[str, dict[str, Any]] = {
    "dsprites": {
        "data": {"name": "dsprites", "test_subset": 2000},
        "model": {"latent_dim": 10, "backbone": {"kind": "conv", "channels": (32, 32, 64, 64), "fc": 256}},
        "settings": {"isotropic N(0, I)": {"prior": {"name": "standard_normal"}},
                     "anisotropic N(0, diag v)": {"prior": {"name": "anisotropic"}}},
        "trainer": {"epochs": 1, "batch_size": 64, "lr": 5e-4},
    },
    "sparsity": {
        "data": {"name": "fashion-mnist"},
        "model": {"latent_dim": 50, "backbone": {"kind": "mlp", "hidden": (512, 256)}},
        "settings": {"N(0, I), alpha=0": {"prior": {"name": "standard_normal"}, "alpha": "0"},
                     "sparse gamma=0.8, alpha=0": {"prior": {"name": "sparse", "gamma": 0.8}, "alpha": "0"},
                     "sparse gamma=0.8, alpha=100": {"prior": {"name": "sparse", "gamma": 0.8}, "alpha": "100"}},
        # batch 200: the dimension-wise MMD is O(B^2 D) in time and memory; at B = 500, D = 50 one
        # step cost 3.3 s on one thread (memory-bound), at B = 200 0.19 s
        "trainer": {"epochs": 5, "batch_size": 200, "lr": 1e-3},
    },
    "pinwheel": {
        "data": {"name": "pinwheel"},
        "model": {"latent_dim": 2, "backbone": {"kind": "mlp", "hidden": (64, 64)},
                  "likelihood": {"name": "gaussian", "scale": 0.1, "learn_scale": True}},
        "settings": {"N(0, I), alpha=0 (k-means)": {"prior": {"name": "standard_normal"}, "alpha": "0"},
                     "mixture K=5 fixed, alpha=0": {"prior": {"name": "mixture", "components": 5}, "alpha": "0"},
                     "mixture K=5 fixed, alpha=10": {"prior": {"name": "mixture", "components": 5}, "alpha": "10"},
                     "mixture K=5 fixed, alpha=0->10": {"prior": {"name": "mixture", "components": 5},
                                                        "alpha": "linear(0, 10, 600)"},
                     "mixture K=5 learned, alpha=0->10": {"prior": {"name": "mixture", "components": 5, "learn": True},
                                                          "alpha": "linear(0, 10, 600)"}},
        "trainer": {"epochs": 30, "batch_size": 100, "lr": 1e-3},
    },
}


def run_one(claim: str, label: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    spec = CLAIMS[claim]
    data_cfg = dict(spec["data"], root=args.data_dir, seed=seed)
    if claim == "dsprites":
        data_cfg["train_subset"] = args.train_images
    data = load_data(DataConfig(**data_cfg))
    torch.manual_seed(seed)
    model = build_model("decomposition_vae", image_shape=data.info.shape, **spec["model"], **spec["settings"][label])
    cfg = TrainerConfig(**spec["trainer"], seed=seed, images=False, progress=False, diagnostics=False, iwae_k=0)
    epochs: list[dict] = []
    t0 = time.perf_counter()
    Trainer(model, data.train, None, cfg, on_epoch_end=[lambda t, m: epochs.append(m)]).fit()
    out = {"train_seconds": time.perf_counter() - t0}
    rec = evaluate_reconstruction(model, data.test)
    out |= {"test_recon_nll": rec["recon"], "test_kl": rec["kl"], "test_mse": rec["mse"]}
    t0 = time.perf_counter()
    if claim == "dsprites":
        timings: dict[str, float] = {}
        out |= disentanglement_metric(model, data.test, protocol=args.protocol, seed=seed, timings=timings)
        out |= {f"seconds_{k}": v for k, v in timings.items()}
    elif claim == "sparsity":
        out |= sparsity_metric(model, data.test, seed=seed)
    else:  # k-means for every model (same footing); the prior's own components where it has them
        out |= {f"kmeans_{k}": v for k, v in clustering_metric(model, data.test, seed=seed, assign="kmeans").items()}
        if model.config.prior.name == "mixture":
            out |= {f"prior_{k}": v for k, v in clustering_metric(model, data.test, seed=seed, assign="prior").items()}
    out["metric_seconds"] = time.perf_counter() - t0
    if args.out and seed == int(args.seeds.split(",")[0]):
        if model.latent_dim == 2:
            _aggregate_vs_prior(model, data, Path(args.out) / f"{claim}_{_slug(label)}.png", label)
        else:  # latent traversals of every dimension, ranked by KL
            tmp = Path(args.out) / f"_{claim}_{_slug(label)}"
            (written,) = write_run_figures(model, data.test, tmp, n_dims=model.latent_dim, samples=False,
                                           kl_chart=False, caption=f"{label}, seed {seed}")
            written.replace(Path(args.out) / f"{claim}_{_slug(label)}_traversals.png")
            tmp.rmdir()
    return out


def _cache_path(claim: str, label: str, seed: int, args: argparse.Namespace) -> Path | None:
    """Where a finished run's row is kept (``--cache``), keyed by everything that changes it."""
    if not args.cache:
        return None
    key = f"{claim}_{_slug(label)}_seed{seed}"
    if claim == "dsprites":
        key += f"_{args.train_images}img_{args.protocol}"
    return Path(args.cache) / f"{key}.json"


def _job(job: tuple[str, str, int, argparse.Namespace]) -> dict[str, float] | None:
    claim, label, seed, args = job
    cache = _cache_path(claim, label, seed, args)
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    if args.cached_only:
        return None
    torch.set_num_threads(args.threads)
    row = run_one(claim, label, seed, args)
    print(f"{label} seed {seed}: {json.dumps(row)}", file=sys.stderr, flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(row) + "\n")
    return row


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def _aggregate_vs_prior(model, data, path: Path, label: str) -> None:
    """Two panels in one PNG: the aggregate posterior (codes by class) and samples of the prior."""
    codes, labels = encode_dataset(model, data.test)
    plot_latent_scatter(codes, labels, path.with_name(path.stem + "_posterior.png"),
                        f"Aggregate posterior E[z|x] — {label}", class_names=data.info.class_names)
    with torch.no_grad():
        prior = model.prior().sample((len(codes),))
    plot_latent_scatter(prior, None, path.with_name(path.stem + "_prior.png"), f"Prior samples — {label}")


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    for label, rows in runs.items():
        out[label] = {}
        for key in rows[0]:
            vals = [r[key] for r in rows]
            out[label][key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("claim", choices=sorted(CLAIMS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (processes of --threads threads each)")
    p.add_argument("--cache", help="keep each finished run's results here and reuse them (a stopped study "
                   "continues where it was)")
    p.add_argument("--cached-only", action="store_true", help="run nothing: summarise the cached runs")
    p.add_argument("--train-images", type=int, default=120_000, help="dSprites training images (one pass)")
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)))
    p.add_argument("--protocol", choices=("dlib", "fast"), default="dlib",
                   help="dSprites: the disentanglement metrics' protocol (dlib: disentanglement_lib's definitions "
                        "and sample sizes; fast: the quick estimators the first claim table used)")
    p.add_argument("--out", help="folder for pictures")
    p.add_argument("--save", help="also write the JSON here (atomically)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(args.claim, label, int(seed), args) for seed in args.seeds.split(",")
            for label in CLAIMS[args.claim]["settings"]]  # every setting's first seed first
    if args.jobs > 1:  # each job one process of --threads threads; results in the order of the jobs
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.map(_job, jobs, chunksize=1)
    else:
        rows = [_job(job) for job in jobs]
    runs: dict[str, list[dict[str, float]]] = {}
    for (_, label, _, _), row in zip(jobs, rows):
        if row is not None:
            runs.setdefault(label, []).append(row)
    text = json.dumps({
        "benchmark": f"decomposition_claims/{args.claim}", "seeds": args.seeds, "threads": args.threads,
        "jobs": args.jobs, "host": host_info(args.threads), "command": " ".join(sys.argv),
        "protocol": {k: v for k, v in CLAIMS[args.claim].items() if k != "settings"}
        | ({"train_images": args.train_images, "metrics": args.protocol} if args.claim == "dsprites" else {}),
        "aelab": aelab.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "seeds_done": {label: len(rows) for label, rows in runs.items()}, "summary": summarise(runs), "runs": runs,
    }, indent=2, default=list)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    main()
