"""The ``aelab`` command line: list, train, train-prior, eval, reconstruct, sample, traverse, figures."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aelab.config import ConfigError
from aelab.protocol import require
from aelab.registry import UnknownNameError


def _print_table(rows: dict[str, Any], title: str = "") -> None:
    if title:
        print(title)
    width = max((len(k) for k in rows), default=0)
    for k, v in rows.items():
        text = f"{v:.6g}" if isinstance(v, float) else str(v)
        print(f"  {k:<{width}}  {text}")


def cmd_list(args: argparse.Namespace) -> int:
    import aelab  # noqa: F401  (registers everything)
    from aelab.nn.corruption import CORRUPTIONS
    from aelab.registry import BACKBONES, DATASETS, LIKELIHOODS, METRICS, MODELS

    for title, reg in [("models", MODELS), ("data sets", DATASETS), ("metrics", METRICS),
                       ("likelihoods", LIKELIHOODS), ("backbones", BACKBONES), ("corruptions", CORRUPTIONS)]:
        print(f"{title}:")
        width = max((len(n) for n in reg), default=0)
        for name in reg:
            print(f"  {name:<{width}}  {reg.describe(name)}")
    return 0


def _epoch_printer(trainer, metrics: dict[str, Any]) -> None:
    # per-dimension KLs go to metrics.jsonl and TensorBoard; one line per epoch stays readable
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "samples_per_second", "mutual_info_max")
             and not k.startswith("kl_dim_")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    print(f"epoch {metrics['epoch'] + 1} step {metrics['step']}: {text}", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from aelab.runs import RunConfig, load_run_config, new_run_dir, train_run

    if args.resume:
        if args.model or args.config or args.data:
            raise ConfigError("--resume takes the run's own config; give only --set overrides (e.g. trainer.epochs)")
        run_dir = Path(args.resume)
        cfg = load_run_config(run_dir).with_overrides(args.set)
    else:
        if args.config:
            cfg = load_run_config(args.config, require_data=False)
            if args.model:
                cfg = RunConfig(model=args.model, data=cfg.data, trainer=cfg.trainer)
        else:
            cfg = RunConfig(model=args.model or "ae")
        if args.data:
            cfg.data.name = args.data
        cfg = cfg.with_overrides(args.set)
        run_dir = Path(args.out) if args.out else new_run_dir(cfg)
        if (run_dir / "trainer_state.safetensors").exists() or (run_dir / "config.json").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} "
                              "or choose another --out (nothing was overwritten)")

    def started(trainer) -> None:
        data, shape = trainer.train_data, getattr(trainer.train_data, "shape", None)
        what = f" images of shape {shape}" if shape is not None else " examples"
        print(f"{'resuming' if args.resume else 'training'} {cfg.model} on {cfg.data.name} "
              f"({len(data)} train / {len(trainer.test_data)} test{what}) -> {run_dir}", flush=True)

    train_run(cfg, run_dir, resume=bool(args.resume), on_epoch_end=[_epoch_printer], on_start=started)
    print(f"done: {run_dir}")
    return 0


def _prior_epoch_printer(trainer, metrics: dict[str, Any]) -> None:
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "samples_per_second", "seconds")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    print(f"epoch {metrics['epoch'] + 1} step {metrics['step']}: test {text} "
          f"({metrics['samples_per_second']:.0f} grids/s)", flush=True)


def cmd_train_prior(args: argparse.Namespace) -> int:
    from aelab.runs import PRIOR_DIR, train_prior_run

    run_dir = Path(args.run_dir)
    prior_dir = run_dir / PRIOR_DIR

    def started(trainer, info: dict[str, Any]) -> None:
        model, cfg, prior = info["vq_model"], info["vq_config"], trainer.model
        params = sum(p.numel() for p in prior.parameters())
        grids = " + ".join(f"{h}x{w}" for h, w in model.code_shapes)
        print(f"{'resuming' if args.resume else 'training'} the {prior.name} code prior ({params / 1e6:.2f}M "
              f"parameters) on the {grids} codes (K={'/'.join(map(str, model.num_codes))}) of {cfg.model} run "
              f"{run_dir}: {len(trainer.train_data)} train / {len(trainer.test_data)} test images encoded in "
              f"{info['encode_seconds']:.1f}s -> {prior_dir}", flush=True)

    _, metrics = train_prior_run(run_dir, args.name, args.set, args.resume, on_epoch_end=[_prior_epoch_printer],
                                 on_start=started)
    summary = (f" (test nll {metrics['nll']:.4g} nats per image, {metrics['bits_per_code']:.4g} bits per code)"
               if "nll" in metrics else "")
    print(f"done: {prior_dir}{summary}; sample with `aelab sample {run_dir}`")
    return 0


def _load_model(run_dir: str):
    from aelab.runs import load_run

    return load_run(run_dir)


def _load_run(run_dir: str):
    from aelab.data.base import load_data

    cfg, model = _load_model(run_dir)
    return cfg, model, load_data(cfg.data)


def _attach_code_prior(run_dir: str | Path, model, required: bool):
    from aelab.runs import attach_code_prior

    return attach_code_prior(run_dir, model, required)


def _default_metrics(model, data) -> list[str]:
    names = ["reconstruction"]
    if model.capabilities.codes:
        # no linear probe by default: the flattened quantised latents are thousands of dimensions wide
        # (64 x 7 x 7 = 3136 for the default VQ-VAE), slow and memory-hungry for full-batch L-BFGS
        return names + ["codebook"] + (["code_likelihood"] if model.capabilities.sample else [])
    if model.capabilities.latent_prior:
        names += ["likelihood", "latent_diagnostics"]
    if data.info.num_classes:
        names.append("linear_probe")
    return names


def _run_metric(name: str, model, data, options: dict[str, Any]) -> dict[str, float]:
    """Call a registered metric: ``(model, train, test)`` metrics get both splits, ``(model, data)``
    metrics the test split; each gets those of ``options`` its signature names."""
    from aelab.registry import METRICS

    fn = METRICS.get(name)
    params = inspect.signature(fn).parameters
    if "splits" in params:  # metrics that need both splits and the data set's info (frechet)
        return fn(model, data, **{k: v for k, v in options.items() if k in params})
    if "train" in params:
        return fn(model, data.train, data.test)
    return fn(model, data.test, **{k: v for k, v in options.items() if k in params})


def cmd_eval(args: argparse.Namespace) -> int:
    from aelab.config import apply_overrides
    from aelab.metrics.generative import ClassifierConfig
    from aelab.registry import METRICS

    cfg, model, data = _load_run(args.run_dir)
    vq = model.capabilities.codes
    if vq:
        _attach_code_prior(args.run_dir, model, required=False)
    names = args.metrics.split(",") if args.metrics else _default_metrics(model, data)
    for name in names:
        METRICS.get(name)  # unknown names fail before any work
        if vq and name in ("likelihood", "latent_diagnostics"):
            raise ValueError(f"metric {name!r} needs a continuous prior p(z); a {cfg.model} run has discrete codes: "
                             "use code_likelihood (the bound with its code prior) and codebook")
        if vq and name in ("frechet", "code_likelihood") and not model.capabilities.sample:
            raise FileNotFoundError(f"metric {name!r} needs the run's code prior: train one first with "
                                    f"`aelab train-prior {args.run_dir}`")
    classifier = apply_overrides(ClassifierConfig(), args.classifier) if args.classifier else None
    limit = None if args.limit == 0 else args.limit
    results: dict[str, float] = {}
    for name in names:
        # only the likelihood takes --k and --limit: IWAE with k=1000 costs k decoder passes per image
        options = {"batch_size": cfg.trainer.eval_batch_size}
        if name == "likelihood":
            options |= {"k": args.k, "limit": limit, "batch_size": 100}
        metric_data = data
        if name == "frechet":
            options |= {"n": args.samples, "classifier_config": classifier, "cache_dir": args.classifier_dir}
            if cfg.data.train_subset is not None or cfg.data.test_subset is not None:
                # the feature classifier and the real statistics use the whole data set, not the run's subsets
                from aelab.data.base import load_data

                metric_data = load_data(dataclasses.replace(cfg.data, train_subset=None, test_subset=None))
        results |= _run_metric(name, model, metric_data, options)
    if args.figures:
        written = _write_figures(args.run_dir, model, data)
        if not args.json:
            print(f"wrote {len(written)} figures to {Path(args.run_dir) / 'figures'}")
    if args.json:
        print(json.dumps({"run_dir": str(args.run_dir), "model": cfg.model, "data": cfg.data.name,
                          "split": "test", "metrics": results}, indent=2))
        return 0
    per_dim = [v for k, v in results.items() if k.startswith("kl_dim_")]
    table = {k: v for k, v in results.items() if not k.startswith("kl_dim_") and k != "mutual_info_max"}
    _print_table(table, f"{cfg.model} on {cfg.data.name} (test split, {len(data.test)} images)")
    if "likelihood" in names:
        n = len(data.test) if limit is None else min(limit, len(data.test))
        print(f"  (neg_elbo and nll_iwae_k{args.k}: nats per image on {n} random test images, same samples)")
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
    if "mutual_info_max" in results:
        print(f"  (mutual_info is a minibatch estimate, at most log M = {results['mutual_info_max']:.3g} nats)")
    if per_dim:
        print("  kl per dimension:  " + " ".join(f"{v:.2f}" for v in per_dim))
    return 0


def _write_figures(run_dir: str, model, data, out: str | None = None) -> list[Path]:
    from aelab.report.figures import plot_training_curves, write_run_figures

    out_dir = Path(out) if out else Path(run_dir) / "figures"
    metrics = Path(run_dir) / "metrics.jsonl"
    if model.capabilities.codes:
        return _write_vq_figures(run_dir, model, data, out_dir, metrics)
    if model.capabilities.latent_prior:
        return write_run_figures(model, data.test, out_dir, class_names=data.info.class_names, metrics=metrics)
    return [plot_training_curves(metrics, out_dir / "training_curves.png")] if metrics.is_file() else []


def _write_vq_figures(run_dir: str, model, data, out_dir: Path, metrics: Path) -> list[Path]:
    """Reconstructions, samples (with a code prior) and training curves; traversals do not apply to codes."""
    from aelab.metrics.likelihood import evaluation
    from aelab.report.figures import plot_training_curves
    from aelab.report.images import reconstruction_grid, save_image_grid

    if not model.capabilities.sample:
        _attach_code_prior(run_dir, model, required=False)
    idx = torch.linspace(0, len(data.test) - 1, min(32, len(data.test))).long()  # a spread of test images
    x = data.test.get_batch(idx).x
    written = [save_image_grid(reconstruction_grid(x, model.reconstruct(x)), out_dir / "reconstructions.png",
                               nrow=8, scale=2)]
    if model.capabilities.sample:
        with evaluation(model, 0):
            written.append(save_image_grid(model.sample(64), out_dir / "samples.png", nrow=8, scale=2))
    else:
        print(f"no samples: the run has no code prior yet (`aelab train-prior {run_dir}`)")
    if metrics.is_file():
        written.append(plot_training_curves(metrics, out_dir / "training_curves.png"))
    print("no latent traversals: they sweep continuous latents, and a VQ model's latents are discrete codes")
    return written


def cmd_figures(args: argparse.Namespace) -> int:
    _, model, data = _load_run(args.run_dir)
    written = _write_figures(args.run_dir, model, data, args.out)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing to draw: this model has no prior and the run has no metrics.jsonl")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from aelab.report.images import save_image_grid

    _, model = _load_model(args.run_dir)
    if model.capabilities.codes:
        prior = _attach_code_prior(args.run_dir, model, required=True)
        temperature = 1.0 if args.temperature is None else args.temperature
        what = f"from the {prior.name} code prior at temperature {temperature:g}"

        def draw() -> torch.Tensor:
            return model.sample(args.n, temperature=temperature)
    else:
        require(model, "sample", what="aelab sample")
        if args.temperature is not None:
            raise ValueError("--temperature applies to the code priors of vqvae / vqvae2 runs only")
        what = "from the prior"

        def draw() -> torch.Tensor:
            return model.sample(args.n)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out) if args.out else Path(args.run_dir) / "images" / "samples.png"
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        images = draw()
        seconds = time.perf_counter() - start
    save_image_grid(images, out, nrow=args.nrow, scale=2)
    print(f"wrote {out} ({args.n} samples {what}, decoded to mean images; {args.n / max(seconds, 1e-9):.1f} images/s)")
    return 0


def cmd_traverse(args: argparse.Namespace) -> int:
    from aelab.metrics.latent import collect_latent_statistics
    from aelab.metrics.likelihood import evaluation
    from aelab.report.figures import latent_traversal, plot_traversal, top_dimensions, traversal_values

    _, model, data = _load_run(args.run_dir)
    require(model, "latent_prior", what="aelab traverse")
    if not 0 <= args.index < len(data.test):
        raise ValueError(f"--index must be in [0, {len(data.test)}), got {args.index}")
    stats = collect_latent_statistics(model, data.test, limit=2000)
    if args.dims:
        dims = [int(d) for d in args.dims.split(",")]
        if not all(0 <= d < model.latent_dim for d in dims):
            raise ValueError(f"--dims must be in [0, {model.latent_dim}), got {args.dims}")
    else:
        dims = top_dimensions(stats, args.n_dims)
    t, values = traversal_values(model, args.steps, args.span)
    b = data.test.get_batch(torch.tensor([args.index]))
    x, y = b.x, b.y
    with evaluation(model, 0):
        images = latent_traversal(model, x, dims, values)
    out = Path(args.out) if args.out else Path(args.run_dir) / "figures" / f"traversal_{args.index}.png"
    label = ""
    if data.info.class_names and y.dim() == 1 and int(y[0]) >= 0:
        label = f" ({data.info.class_names[int(y[0])]})"
    plot_traversal(images, dims, t, out, title=f"Latent traversals of test image {args.index}{label}",
                   kl=stats.kl.mean(0) if stats.kl.dim() == 2 else None)
    print(f"wrote {out} (rows: latent dimensions {dims})")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from aelab.report.images import reconstruction_grid, save_image_grid

    cfg, model, data = _load_run(args.run_dir)
    split = data.test if args.split == "test" else data.train
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(split), generator=g)[: args.n]
    x = split.get_batch(idx).x
    out = Path(args.out) if args.out else Path(args.run_dir) / "images" / "reconstructions.png"
    save_image_grid(reconstruction_grid(x, model.reconstruct(x)), out, nrow=8, scale=2)
    print(f"wrote {out} ({len(idx)} {args.split} images: odd rows input, even rows reconstruction)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aelab", description="Train, evaluate and look at autoencoders.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)
    # --threads is accepted before or after the command ("aelab train ... --threads 2" works too)
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[threads], **kw)


    command("list", help="registered models, data sets and metrics").set_defaults(fn=cmd_list)

    t = command("train", help="train a model (or --resume a run)")
    t.add_argument("model", nargs="?", help="registered model name (see `aelab list`)")
    t.add_argument("--data", help="registered data set name")
    t.add_argument("--config", help="a run config JSON (e.g. configs/quickstart.json)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. model.latent_dim=32, trainer.epochs=5, data.root=DIR")
    t.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly")
    t.set_defaults(fn=cmd_train)

    tp = command("train-prior", help="train a code prior on a vqvae / vqvae2 run's codes (into RUN_DIR/prior)")
    tp.add_argument("run_dir", help="a vqvae or vqvae2 run directory")
    tp.add_argument("--name", choices=["pixelcnn", "pixelsnail", "vqvae2_prior"],
                    help="code prior (default: pixelcnn for vqvae, vqvae2 (PixelSNAIL top, conditioned PixelCNN "
                    "bottom) for vqvae2)")
    tp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. prior.channels=64, prior.layers=8, prior.top.channels=64 (vqvae2), "
                    "trainer.epochs=5, trainer.device=cuda")
    tp.add_argument("--resume", action="store_true", help="continue RUN_DIR/prior exactly (only trainer.* overrides)")
    tp.set_defaults(fn=cmd_train_prior)

    e = command("eval", help="test metrics of a trained run")
    e.add_argument("run_dir")
    e.add_argument("--metrics", help="comma-separated metric names (default: reconstruction, linear_probe, and "
                   "likelihood, latent_diagnostics for models with a prior; for vqvae / vqvae2: reconstruction, "
                   "codebook, and code_likelihood with a code prior); frechet (sample quality) is opt-in")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--k", type=int, default=1000, help="importance samples of the IWAE NLL (default 1000)")
    e.add_argument("--limit", type=int, default=1000,
                   help="IWAE and ELBO on a seeded random subset of this many test images (0: all; default 1000)")
    e.add_argument("--samples", type=int, default=10000,
                   help="samples (and real test images) of the frechet metric (default 10000)")
    e.add_argument("--classifier", action="append", default=[], metavar="KEY=VALUE",
                   help="frechet: the feature classifier's config, e.g. epochs=2, train_limit=5000 (part of its "
                   "cache key)")
    e.add_argument("--classifier-dir", help="frechet: classifier cache (default: $AELAB_CLASSIFIER_DIR, else beside "
                   "the data)")
    e.add_argument("--figures", action="store_true", help="also write all figures to RUN_DIR/figures")
    e.set_defaults(fn=cmd_eval)

    f = command("figures", help="write all figures of a run (traversals, KL, manifold, curves; VQ runs: "
                       "reconstructions, samples)")
    f.add_argument("run_dir")
    f.add_argument("--out", help="directory (default: RUN_DIR/figures)")
    f.set_defaults(fn=cmd_figures)

    s = command("sample", help="write a PNG grid of decoded prior samples (vqvae / vqvae2: of the code prior)")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--nrow", type=int, default=8, help="images per row")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=None,
                   help="vqvae / vqvae2: softmax temperature of the code prior (default 1; below 1 sharper, 0 greedy)")
    s.add_argument("--out", help="PNG path (default: RUN_DIR/images/samples.png)")
    s.set_defaults(fn=cmd_sample)

    v = command("traverse", help="write latent traversals of one test image")
    v.add_argument("run_dir")
    v.add_argument("--index", type=int, default=0, help="test image index")
    v.add_argument("--dims", help="comma-separated dimensions (default: the --n-dims with the largest KL)")
    v.add_argument("--n-dims", type=int, default=8)
    v.add_argument("--steps", type=int, default=11)
    v.add_argument("--span", type=float, default=3.0, help="sweep the prior's quantiles at +-span std devs")
    v.add_argument("--out", help="PNG path (default: RUN_DIR/figures/traversal_INDEX.png)")
    v.set_defaults(fn=cmd_traverse)

    r = command("reconstruct", help="write a PNG grid of inputs and reconstructions")
    r.add_argument("run_dir")
    r.add_argument("--n", type=int, default=32)
    r.add_argument("--split", choices=["test", "train"], default="test")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", help="PNG path (default: RUN_DIR/images/reconstructions.png)")
    r.set_defaults(fn=cmd_reconstruct)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.fn(args)
    except (ConfigError, UnknownNameError, FileNotFoundError, ValueError) as e:
        print(f"aelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "aelab train-prior RUN_DIR --resume" if args.command == "train-prior" else "aelab train --resume RUN_DIR"
        print(f"aelab: interrupted; resume with `{how}`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
