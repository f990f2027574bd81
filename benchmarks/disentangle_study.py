"""disentanglement_lib's study at laptop scale: eight models on dSprites, the ``dlib`` metric protocol.

Every run is an ordinary run directory (``aelab train``: RUNS/MODEL/seedS, resumable, usable by
``aelab eval``, ``aelab traverse`` and ``aelab figures``) of the same network, disentanglement_lib's
conv architecture (4x4 stride-2 convs of 32, 32, 64, 64 channels, a dense layer of 256, 10
latents, Bernoulli pixels), trained with Adam (lr 1e-4, disentanglement_lib's) at batch 64 for
``--steps`` steps (11,000 by default: the steps that fit 20 minutes on the 2-core machine, measured
at 9.3 steps/s with 2 threads: 704,000 images, 0.97 of an epoch of the 737,280 dSprites images,
where disentanglement_lib's study trains 300,000 steps). Each model has one setting, the one its
paper used on dSprites (see ``MODELS``). The metrics are the whole suite under the ``dlib``
protocol (:func:`aelab.metrics.disentanglement.evaluate_disentanglement_dlib`), seeded with the
run's seed, plus the test reconstruction and KL.

  python benchmarks/disentangle_study.py --seeds 0,1,2 --out benchmarks/results/disentangle_study.json \\
      --markdown --figure docs/figures/study_traversals.png
  python benchmarks/disentangle_study.py --rows vae,factor_vae --seeds 0 --quick   # a smoke run

Phases: ``--phase train`` trains (``--jobs`` at a time, ``--threads`` each; a stopped run
resumes from its last checkpoint, a finished one is skipped), ``--phase eval`` scores the finished
runs (cached in each run directory), ``--phase all`` (default) does both. The study is long (24
runs of about 20 minutes): run it across sessions with ``--phase train``, and summarise whatever
has finished with ``--phase eval`` (rows with fewer seeds say so in the table).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _claims import common_arguments, emit, merge, summarise, test_records
from _host import host_info

from aelab.config import to_dict
from aelab.data.base import load_data
from aelab.io import atomic_write_text
from aelab.metrics.disentanglement import disentanglement_metric
from aelab.metrics.latent import collect_latent_statistics
from aelab.metrics.reconstruction import evaluate_reconstruction
from aelab.report.figures import latent_traversal, plot_image_rows, top_dimensions, traversal_values
from aelab.runs import RunConfig, load_run, train_run
from aelab.training.trainer import read_metrics

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STEPS = 11_000
#: disentanglement_lib's encoder/decoder (conv_encoder / deconv_decoder), 10 latents
MODEL = {"latent_dim": 10, "backbone": {"kind": "conv", "channels": [32, 32, 64, 64], "fc": 256}}
TRAINER = {"batch_size": 64, "lr": 1e-4, "epochs": 1, "progress": False, "images": False, "iwae_k": 0,
           "checkpoint_every": 500, "log_every": 100}
DATA = {"name": "dsprites", "test_subset": 2000}
#: row -> (registered model, its settings, label); settings are those the papers used on dSprites
MODELS: dict[str, tuple[str, dict[str, Any], str]] = {
    "vae": ("vae", {}, "VAE"),
    "beta_vae": ("beta_vae", {"beta": "4"}, "beta-VAE (beta 4)"),
    "annealed_vae": ("annealed_vae", {"gamma": 1000.0, "c_max": 25.0}, "AnnealedVAE (gamma 1000, C 0->25)"),
    "beta_tcvae": ("beta_tcvae", {"tc_beta": 6.0}, "beta-TCVAE (beta 6)"),
    "factor_vae": ("factor_vae", {"gamma": 35.0, "discriminator_hidden": [1000] * 6}, "FactorVAE (gamma 35)"),
    "dip_vae_i": ("dip_vae", {"kind": "i", "lambda_od": 10.0}, "DIP-VAE-I (lambda_od 10, lambda_d 100)"),
    "dip_vae_ii": ("dip_vae", {"kind": "ii", "lambda_od": 10.0}, "DIP-VAE-II (lambda_od 10, lambda_d 10)"),
    "anisotropic": ("decomposition_vae", {"prior": {"name": "anisotropic"}},
                    "anisotropic-prior VAE (Mathieu et al.)"),
}
#: published dSprites numbers, as tabulated in the InfoGAN-CR paper (Lin et al., ICML 2020, Table 1)
#: from the FactorVAE (Kim & Mnih 2018) and beta-TCVAE (Chen et al. 2018) papers
PUBLISHED = {"factor_vae": {"factorvae_score": 0.82}, "beta_vae": {"factorvae_score": 0.63, "mig": 0.21},
             "beta_tcvae": {"mig": 0.45}, "vae": {"mig": 0.10}}
METRICS = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness_test", "sap",
           "betavae_score", "factorvae_score")


def run_config(row: str, seed: int, args: argparse.Namespace) -> RunConfig:
    name, settings, _ = MODELS[row]
    settings = dict(settings)
    if name == "annealed_vae":  # C reaches c_max a third of the way, as disentanglement_lib's 100k of 300k
        settings["c_steps"] = max(1, args.steps // 3)
    settings |= dict(args.set)  # --set: probes of other settings (in their own --runs directory)
    return RunConfig.from_dict({
        "model": name, "model_config": merge(MODEL, settings), "data": dict(DATA, root=str(args.data_dir)),
        "trainer": dict(TRAINER, seed=seed, max_steps=args.steps)})


def finished_steps(run_dir: Path, steps: int) -> bool:
    return (run_dir / "metrics.jsonl").is_file() and any(r["step"] >= steps for r in test_records(run_dir))


def train(job: tuple[str, int, argparse.Namespace]) -> None:
    row, seed, args = job
    torch.set_num_threads(args.threads)
    run_dir = Path(args.runs) / row / f"seed{seed}"
    if finished_steps(run_dir, args.steps) and not args.retrain:
        return
    t0 = time.perf_counter()
    train_run(run_config(row, seed, args), run_dir,
              resume=not args.retrain and (run_dir / "trainer_state.safetensors").is_file())
    print(f"{row} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON where it parses (numbers, lists), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def curves(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """A run's training reconstruction every ``--curve-every`` steps and its last test record."""
    run_dir = Path(args.runs) / row / f"seed{seed}"
    if not (run_dir / "metrics.jsonl").is_file():
        return {"row": row, "seed": seed, "missing": True}
    records = read_metrics(run_dir / "metrics.jsonl")
    test = [r for r in records if r["split"] == "test"]
    model_config = json.loads((run_dir / "config.json").read_text())["model_config"]
    settings = {k: v for k, v in model_config.items() if k in MODELS[row][1] or k in dict(args.set) or k == "c_steps"}
    return {"row": row, "seed": seed, "settings": settings,
            "train_recon": {r["step"]: round(r["recon"], 1) for r in records
                            if r["split"] == "train" and r["step"] % args.curve_every == 0},
            "test": {k: test[-1][k] for k in ("step", "recon", "kl") if k in test[-1]} if test else None}


def evaluate(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.runs) / row / f"seed{seed}"
    if not finished_steps(run_dir, args.steps):
        return {"row": row, "seed": seed, "missing": True}
    cache = run_dir / f"study_eval_{args.protocol}.json"
    if cache.is_file() and not args.retrain:
        return json.loads(cache.read_text())
    cfg, model = load_run(run_dir)
    splits = load_data(cfg.data)
    rec = evaluate_reconstruction(model, splits.test)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    scores = disentanglement_metric(model, splits.test, protocol=args.protocol, seed=seed, timings=timings)
    record = test_records(run_dir)[-1]
    result = {"row": row, "seed": seed, "run_dir": str(run_dir), **scores,
              **{f"seconds_{k}": v for k, v in timings.items()},
              "test_recon": rec["recon"], "test_kl": rec["kl"], "metric_s": time.perf_counter() - t0,
              "samples_per_s": record["samples_per_second"], "steps": float(record["step"])}
    atomic_write_text(cache, json.dumps(result) + "\n")
    print(f"{row} seed {seed}: {json.dumps({k: round(v, 3) for k, v in result.items() if isinstance(v, float)})}",
          file=sys.stderr, flush=True)
    return result


def _cell(s: dict[str, Any], key: str) -> str:
    return f"{s[key]['mean']:.2f} ± {s[key]['sd']:.2f}" if key in s else "-"


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    head = ["model", "seeds", "MIG", "DCI dis.", "DCI compl.", "DCI info.", "SAP", "BetaVAE", "FactorVAE",
            "recon (nats)", "KL", "published"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, s in summary.items():
        pub = ", ".join(f"{k.replace('_score', '')} {v:.2f}" for k, v in PUBLISHED.get(row, {}).items()) or "-"
        cells = [s["label"], str(s["seeds"]), *(_cell(s, k) for k in METRICS), _cell(s, "test_recon"),
                 _cell(s, "test_kl"), pub]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.no_grad()
def traversal_figure(results: list[dict[str, Any]], rows: list[str], path: Path, dims: int = 5, steps: int = 9) -> None:
    """One figure: for each model its best seed (highest MIG), its ``dims`` dimensions of largest KL."""
    images, labels = [], []
    for row in rows:
        runs = [r for r in results if r["row"] == row and not r.get("missing")]
        if not runs:
            continue
        best = max(runs, key=lambda r: r["mig"])
        cfg, model = load_run(best["run_dir"])
        test = load_data(cfg.data).test
        stats = collect_latent_statistics(model, test, limit=500)
        top = top_dimensions(stats, dims)
        t, values = traversal_values(model, steps=steps, span=2.0)
        x = test.get_batch(torch.tensor([0])).x
        images.append(latent_traversal(model, x, top, values))
        labels += [f"{row} s{best['seed']} $z_{{{j}}}$" for j in top]
    if images:
        cols = [f"{v:+.1f}" if v else "0" for v in t.tolist()]
        plot_image_rows(torch.cat(images), path, "dSprites study: best seed (MIG) of each model, "
                        f"its {dims} dimensions of largest KL", row_labels=labels, col_labels=cols, scale=1,
                        xlabel="$t$: $z_j$ at the prior's quantile $\\Phi(t)$; other dimensions at the posterior mean")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p, list(MODELS), "aelab_disentangle_study", SHARED_DATA)
    p.add_argument("--steps", type=int, default=STEPS, help="training steps of every run")
    p.add_argument("--phase", choices=("train", "eval", "all", "curves"), default="all",
                   help="curves: print each finished run's training reconstruction every --curve-every steps and "
                   "its final test reconstruction and KL (JSON), no metrics")
    p.add_argument("--curve-every", type=int, default=500)
    p.add_argument("--set", action="append", default=[], type=setting, metavar="KEY=VALUE",
                   help="override a model setting of every row (a probe; give it its own --runs)")
    p.add_argument("--figure", help="write the traversal figure here (PNG)")
    p.add_argument("--protocol", choices=("dlib", "fast"), default="dlib", help="the metrics' protocol")
    p.add_argument("--quick", action="store_true", help="50 steps a run (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.steps = 50
    if args.max_steps:
        args.steps = args.max_steps
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in MODELS]
    if unknown:
        sys.exit(f"unknown row {unknown[0]!r}; rows: {', '.join(MODELS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(r, s, args) for s in seeds for r in rows]  # every model's first seed first
    t0 = time.perf_counter()
    if args.phase in ("train", "all") and not args.finished_only:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            pool.map(train, jobs, chunksize=1)
    if args.phase == "train":
        return
    if args.phase == "curves":
        print(json.dumps([curves(r, s, args) for r, s, _ in jobs], indent=1))
        return
    torch.set_num_threads(args.threads * args.jobs)
    results = [evaluate(r, s, args) for r, s, _ in jobs]
    summary = summarise(results, rows, {r: MODELS[r][2] for r in rows})
    if args.figure:
        traversal_figure(results, rows, Path(args.figure))
    report = {"host": host_info(args.threads), "command": " ".join(sys.argv), "wall_s": time.perf_counter() - t0,
              "protocol": {"steps": args.steps, "model": MODEL, "trainer": TRAINER, "data": DATA,
                           "jobs": args.jobs, "threads": args.threads, "metrics": args.protocol},
              "published": PUBLISHED, "summary": summary, "runs": results,
              "model_configs": {r: to_dict(run_config(r, 0, args).model_config) for r in rows}}
    emit(report, args, markdown(summary))


if __name__ == "__main__":
    main()
