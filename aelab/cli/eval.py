"""``aelab eval``: test metrics of a trained run, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aelab.config import apply_overrides
from aelab.metrics.generative import ClassifierConfig
from aelab.metrics.suite import check_metrics, default_metrics, metric_options, run_metric
from aelab.nn.modes import model_device
from aelab.nn.precision import PRECISIONS, precision_context
from aelab.registry import METRICS
from aelab.report.run import write_figures
from aelab.runs import attach_code_prior, load_run_with_data, metric_splits


def print_table(rows: dict[str, Any], title: str = "") -> None:
    if title:
        print(title)
    width = max((len(k) for k in rows), default=0)
    for k, v in rows.items():
        text = f"{v:.6g}" if isinstance(v, float) else str(v)
        print(f"  {k:<{width}}  {text}")


def run(args: argparse.Namespace) -> int:
    cfg, model, data = load_run_with_data(args.run_dir)
    vq = model.capabilities.codes
    if vq:
        attach_code_prior(args.run_dir, model, required=False)
    names = args.metrics.split(",") if args.metrics else default_metrics(model, data.info)
    check_metrics(model, names, cfg.model, str(args.run_dir))
    classifier = apply_overrides(ClassifierConfig(), args.classifier) if args.classifier else None
    limit = None if args.limit == 0 else args.limit
    results: dict[str, float] = {}
    if (args.k is not None and args.k < 1) or args.limit < 0 or args.samples < 2:
        raise ValueError(f"--k must be >= 1, --limit >= 0 and --samples >= 2, got {args.k}, {args.limit}, "
                         f"{args.samples}")
    for i, name in enumerate(names):
        if sys.stderr.isatty():  # progress: the IWAE with k=1000 and frechet take a while (the table goes to stdout)
            print(f"aelab: [{i + 1}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        options = metric_options(name, batch_size=cfg.trainer.eval_batch_size, k=args.k, limit=limit,
                                 samples=args.samples, classifier_config=classifier, cache_dir=args.classifier_dir,
                                 protocol=args.protocol)
        with precision_context(args.precision, model_device(model)):
            results |= run_metric(name, model, metric_splits(cfg, data, name), **options)
    if args.figures:
        written, notes = write_figures(args.run_dir, model, data)
        for note in notes:
            print(note)
        if not args.json:
            print(f"wrote {len(written)} figures to {Path(args.run_dir) / 'figures'}")
    if args.json:
        print(json.dumps({"run_dir": str(args.run_dir), "model": cfg.model, "data": cfg.data.name,
                          "split": "test", "precision": args.precision, "metrics": results}, indent=2))
        return 0
    per_dim = [v for k, v in results.items() if k.startswith("kl_dim_")]
    if model.capabilities.text:
        print_text_table(cfg, data, names, results, limit)
    elif model.capabilities.sequence:
        print_sequence_table(cfg, data, names, results, limit)
    else:
        print_image_table(args, cfg, model, data, names, results, limit)
    if "mutual_info_max" in results:
        print(f"  (mutual_info is a minibatch estimate, at most log M = {results['mutual_info_max']:.3g} nats)")
    if per_dim:
        print("  kl per dimension:  " + " ".join(f"{v:.2f}" for v in per_dim))
    if args.precision != "fp32":
        print(f"  (computed under {args.precision} autocast: the networks' matrix products in bfloat16, "
              "likelihoods and sums in float32; an approximation of the float32 numbers)")
    return 0


#: the order of a text run's table (the others follow)
TEXT_ORDER = ("nll", "ppl", "neg_elbo", "ppl_elbo", "kl", "mutual_info", "active_units", "recon_token_accuracy",
              "recon_bleu", "kl_total", "tokens")


def print_text_table(cfg: Any, data: Any, names: list[str], results: dict[str, float], limit: int | None) -> None:
    n = len(data.test) if limit is None else min(limit, len(data.test))
    hidden = ("mutual_info_max",)
    rows = {k: results[k] for k in TEXT_ORDER if k in results}
    rows |= {k: v for k, v in results.items() if k not in rows and not k.startswith(("kl_dim_", "nll_iwae_k"))
             and k not in hidden}
    print_table(rows, f"{cfg.model} on {cfg.data.name} (test split, {len(data.test)} sentences)")
    iwae = next((k for k in results if k.startswith("nll_iwae_k")), None)
    if iwae:
        print(f"  (nll: the IWAE bound with k={iwae.removeprefix('nll_iwae_k')} ({iwae} in --json); neg_elbo from the "
              f"same samples, kl on the same sentences: nats per sentence on {n} random test sentences)")
    elif "nll" in results:
        print(f"  (nll: exact, nats per sentence on {n} random test sentences)")
    if "ppl" in results:
        elbo = ", ppl_elbo the same from neg_elbo" if "ppl_elbo" in results else ""
        print(f"  (ppl = exp(total nll / tokens){elbo}, every sentence's <eos> counted as a token; tokens: per "
              "sentence)")
    if "text_reconstruction" in names:
        print(f"  (recon_token_accuracy and recon_bleu (BLEU-4, in [0, 1]): greedy decodings from the posterior mean "
              f"of {n} random test sentences against the inputs, <eos> counted)")
    if "latent_diagnostics" in names:
        print(f"  (kl_total and active_units: latent_diagnostics on all {len(data.test)} test sentences, mutual_info "
              f"on {min(2000, len(data.test))} of them)")


def print_sequence_table(cfg: Any, data: Any, names: list[str], results: dict[str, float], limit: int | None) -> None:
    n = len(data.test) if limit is None else min(limit, len(data.test))
    print_table(results, f"{cfg.model} on {cfg.data.name} (test split, {len(data.test)} sequences)")
    print("  (elbo_per_frame: the bound on log p(x_2..x_T | x_1) per frame, nats; recon, kl, transition: its terms "
          "per frame)")
    if "rollout" in names:
        print(f"  (rollout: {n} random test sequences, 10 context frames, one prediction dt steps after the last "
              "context frame; *_dt{dt} per jump)")


def print_image_table(args: argparse.Namespace, cfg: Any, model: Any, data: Any, names: list[str],
                      results: dict[str, float], limit: int | None) -> None:
    vq = model.capabilities.codes
    table = {k: v for k, v in results.items() if not k.startswith("kl_dim_") and k != "mutual_info_max"}
    print_table(table, f"{cfg.model} on {cfg.data.name} (test split, {len(data.test)} images)")
    if "likelihood" in names:
        n = len(data.test) if limit is None else min(limit, len(data.test))
        k = metric_options("likelihood", k=args.k)["k"]
        print(f"  (neg_elbo and nll_iwae_k{k}: nats per image on {n} random test images, same samples)")
        if "bits_per_dim" not in results:
            print(f"  (no bits_per_dim: the {cfg.model_config.likelihood.name} likelihood is not a normalised "
                  "distribution over 8-bit pixel values; use discretized_logistic for a code length)")
    if "bits_per_dim_bernoulli" in results:
        print("  (bits_per_dim_bernoulli: the bound (recon_nll + prior_nll of the codes) / (C*H*W*ln 2) under the "
              "Bernoulli likelihood on grey values: NOT comparable with 8-bit bits/dim; train with "
              "model.likelihood.name=discretized_logistic for a code length)")
    elif vq and "bits_per_dim" in results:
        print("  (bits_per_dim: the bound (recon_nll + prior_nll of the codes) / (C*H*W*ln 2), 8-bit code length)")
    if vq and not model.capabilities.sample:
        print(f"  (no code prior yet: `aelab train-prior {args.run_dir}` enables sampling, frechet and the "
              "likelihood bound)")
    if vq and not args.metrics and data.info.num_classes:
        print(f"  (linear_probe is skipped by default for VQ models ({model.latent_dim}-dim flattened latents); "
              "ask for it with --metrics)")
    if "frechet_distance" in results:
        print(f"  (frechet_* and classifier_score*: {args.samples} samples vs real test images in the features of "
              f"aelab's own {cfg.data.name} classifier; NOT Inception-FID, comparable only on this data set at this n)")
        n_real = min(args.samples, len(metric_splits(cfg, data, "frechet").test))
        if n_real < 1000:
            print(f"  (warning: a Frechet distance from {n_real} real images is strongly biased upward and noisy; "
                  "compare numbers only at the same n, and prefer n >= 1000)")


def add_parser(command) -> None:
    e = command("eval", help="test metrics of a trained run")
    e.add_argument("run_dir", help="a run directory (from aelab train)")
    e.add_argument("--metrics", help=f"comma-separated metric names, of {', '.join(METRICS)} (default: "
                   "reconstruction, linear_probe, and "
                   "likelihood, latent_diagnostics for models with a prior; for vqvae / vqvae2: reconstruction, "
                   "codebook, and code_likelihood with a code prior; for text models: text_likelihood, and "
                   "latent_diagnostics, text_reconstruction for text VAEs); frechet (sample quality) is opt-in")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--k", type=int, default=None, help="importance samples of the IWAE NLL (default 1000 for images, "
                   "500 for sentences)")
    e.add_argument("--limit", type=int, default=1000,
                   help="IWAE and ELBO (text runs: also the reconstructions) on a seeded random subset of this many "
                   "test examples (0: all; default 1000)")
    e.add_argument("--samples", type=int, default=10000,
                   help="samples (and real test images) of the frechet metric (default 10000)")
    e.add_argument("--classifier", action="append", default=[], metavar="KEY=VALUE",
                   help="frechet: the feature classifier's config, e.g. epochs=2, train_limit=5000 (part of its "
                   "cache key)")
    e.add_argument("--classifier-dir", help="frechet: classifier cache (default: $AELAB_CLASSIFIER_DIR, else "
                   "~/.cache/aelab/classifiers)")
    e.add_argument("--protocol", choices=("dlib", "fast"), default="dlib",
                   help="disentanglement: dlib (disentanglement_lib's estimators and sample sizes, comparable with "
                   "published numbers; minutes per dSprites model) or fast (aelab's quick estimators; default dlib)")
    e.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="bf16: the networks under bfloat16 autocast (faster on CPUs with AVX-512 BF16 or AMX; "
                   "likelihoods still summed in float32; default fp32)")
    e.add_argument("--figures", action="store_true", help="also write all figures to RUN_DIR/figures")
    e.set_defaults(fn=run)

