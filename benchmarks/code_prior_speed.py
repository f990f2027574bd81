"""The VQ pipeline's code prior: today's training recipe against faster ones, at equal bits per code.

Training the code prior is the VQ pipeline's dominant cost (the README's VQ table: a gated
PixelCNN of 64 channels and 6 layers, 5 epochs of Adam at 1e-3 on the 60,000 Fashion-MNIST code
grids, 800-1,050 s on one thread). This benchmark trains one VQ-VAE (the ``vq_fashion`` model, 2
epochs, seed 0; cached under ``--runs``), then fits its code prior with each variant exactly as
``aelab train-prior RUN --set ...`` does (each variant is that command's overrides), ``--jobs`` at a
time on ``--threads`` threads each, and reports for every variant the seconds of training (the
trainer's own per-epoch ``seconds``, and the wall time of the whole fit with its per-epoch test
evaluation), the test bits per code after every epoch, and against the first variant (``today``):
the speed-up of the whole fit and the difference in final bits per code. Equal bits/dim means equal
bits per code here: the VQ-VAE, hence its reconstruction term, is the same for every variant.

  python benchmarks/code_prior_speed.py --save benchmarks/results/code_prior_speed.json --markdown
  python benchmarks/code_prior_speed.py --quick          # a smoke run on 1,000 images

Variants are ``NAME=OVERRIDE,OVERRIDE`` (``--variant``, repeatable; the defaults below otherwise),
applied after today's recipe (``BASE``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _claims import finished, test_records
from _host import host_info

from aelab.io import atomic_write_text
from aelab.runs import PRIOR_DIR, RunConfig, train_prior_run, train_run

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: the VQ-VAE of benchmarks/vq_fashion.py (aelab's default vqvae), as a run
VQ_TRAINER = {"epochs": 2, "batch_size": 128, "lr": 1e-3, "seed": 0, "images": False, "progress": False,
              "diagnostics": False, "iwae_k": 0, "eval_limit": 2000}
#: today's recipe: the README's VQ table (vq_fashion --prior-epochs 5 --prior-channels 64 --prior-layers 6)
BASE = ["prior.channels=64", "prior.layers=6", "trainer.epochs=5", "trainer.lr=0.001", "trainer.batch_size=128",
        "trainer.seed=0", "trainer.progress=false"]
VARIANTS = {
    "today": [],
    "bf16": ["trainer.precision=bf16"],
    "bf16_cosine_2ep": ["trainer.precision=bf16", "trainer.epochs=2", "trainer.lr=0.003",
                        "trainer.lr_schedule=cosine", "trainer.warmup_steps=100"],
    "bf16_cosine_3ep": ["trainer.precision=bf16", "trainer.epochs=3", "trainer.lr=0.003",
                        "trainer.lr_schedule=cosine", "trainer.warmup_steps=100"],
    "cosine_2ep": ["trainer.epochs=2", "trainer.lr=0.003", "trainer.lr_schedule=cosine", "trainer.warmup_steps=100"],
}


def variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=OVERRIDE,OVERRIDE..., got {text!r}")
    return name, [o for o in overrides.split(",") if o]


def vq_run(args: argparse.Namespace) -> Path:
    """The VQ-VAE's run directory, trained if it is not there yet."""
    run_dir = Path(args.runs) / "vqvae"
    if not finished(run_dir, args.vq_epochs):
        shutil.rmtree(run_dir, ignore_errors=True)
        data = {"name": "fashion-mnist", "root": str(args.data_dir), "train_subset": args.train_subset}
        cfg = RunConfig.from_dict({"model": "vqvae", "data": data,
                                   "trainer": dict(VQ_TRAINER, epochs=args.vq_epochs)})
        torch.set_num_threads(args.threads * args.jobs)
        train_run(cfg, run_dir)
    return run_dir


def fit(job: tuple[str, list[str], Path, argparse.Namespace]) -> dict[str, Any]:
    """Train variant ``name``'s prior on a copy of the VQ run (its own ``prior/``) and read its log."""
    name, overrides, vq_dir, args = job
    torch.set_num_threads(args.threads)
    run_dir = Path(args.runs) / "variants" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(vq_dir / f, run_dir / f)
    started: list[float] = []  # the fit's start: after loading the data, encoding it and building the prior
    train_prior_run(run_dir, "pixelcnn", BASE + overrides + args.extra,
                    on_start=lambda _t, _i: started.append(time.perf_counter()))
    wall = time.perf_counter() - started[0]
    records = test_records(run_dir / PRIOR_DIR)
    config = json.loads((run_dir / PRIOR_DIR / "config.json").read_text())
    per_epoch = [{"epoch": r["epoch"], "train_seconds": r["seconds"], "bits_per_code": r["bits_per_code"]}
                 for r in records]
    return {"variant": name, "overrides": overrides, "fit_seconds": wall,
            "train_seconds": sum(e["train_seconds"] for e in per_epoch),
            "bits_per_code": per_epoch[-1]["bits_per_code"], "epochs": per_epoch,
            "trainer": config["trainer"], "prior": config["model_config"]}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| variant | overrides | epochs | fit s (train s) | bits / code | speed-up | bits / code vs first |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['variant']} | {' '.join(r['overrides']) or '(today)'} | {len(r['epochs'])} | "
                     f"{r['fit_seconds']:.0f} ({r['train_seconds']:.0f}) | {r['bits_per_code']:.4f} | "
                     f"{r['speedup']:.2f}x | {r['bits_per_code_delta']:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", type=variant, default=[], metavar="NAME=OVERRIDES",
                   help="a variant (repeatable); the first one is the reference. Default: " + ", ".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=2, help="variants trained at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    p.add_argument("--vq-epochs", type=int, default=2)
    p.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "aelab_code_prior_speed"))
    p.add_argument("--data-dir", default=str(SHARED_DATA))
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="1,000 images, 1 VQ epoch, a small prior for 1 epoch")
    p.add_argument("--save", help="write the JSON here")
    p.add_argument("--markdown", action="store_true", help="print the Markdown table to stderr")
    args = p.parse_args()
    args.extra = []
    if args.quick:
        args.train_subset, args.vq_epochs = 1000, 1
        args.extra = ["prior.channels=8", "prior.layers=2", "trainer.epochs=1", "trainer.eval_limit=200"]
    variants = args.variant or list(VARIANTS.items())
    if args.quick:  # every variant ends with the smoke settings, whatever its epochs
        variants = [(n, [o for o in ov if not o.startswith("trainer.epochs=")]) for n, ov in variants]
    if len({n for n, _ in variants}) != len(variants):
        sys.exit("variant names must be distinct")
    t0 = time.perf_counter()
    vq_dir = vq_run(args)
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(fit, [(n, ov, vq_dir, args) for n, ov in variants], chunksize=1)
    ref = results[0]
    for r in results:
        r["speedup"] = ref["fit_seconds"] / r["fit_seconds"]
        r["train_speedup"] = ref["train_seconds"] / r["train_seconds"]
        r["bits_per_code_delta"] = r["bits_per_code"] - ref["bits_per_code"]
    vq_test = test_records(vq_dir)[-1]
    report = {"benchmark": "code_prior_speed", "host": host_info(args.threads), "jobs": args.jobs,
              "command": " ".join(sys.argv), "wall_s": time.perf_counter() - t0, "base": BASE,
              "vq_run": {"epochs": args.vq_epochs, "train_subset": args.train_subset,
                         "test_recon": vq_test.get("recon"), "perplexity": vq_test.get("perplexity")},
              "results": results}
    text = json.dumps(report, indent=1)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")
    if args.markdown:
        print(markdown(results), file=sys.stderr)


if __name__ == "__main__":
    main()
