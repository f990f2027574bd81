"""``aelab train-prior``: train a code prior on the codes of a vqvae / vqvae2 run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aelab.cli.train import CODE_PRIOR_FAMILY
from aelab.registry import MODELS
from aelab.runs import PRIOR_DIR, train_prior_run


def _prior_epoch_printer(trainer, metrics: dict[str, Any]) -> None:
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "samples_per_second", "seconds")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    print(f"epoch {metrics['epoch'] + 1} step {metrics['step']}: test {text} "
          f"({metrics['samples_per_second']:.0f} grids/s)", flush=True)


def run(args: argparse.Namespace) -> int:
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



def add_parser(command) -> None:
    priors = [n for n in MODELS if MODELS.get(n).family == CODE_PRIOR_FAMILY]
    tp = command("train-prior", help="train a code prior on a vqvae / vqvae2 run's codes (into RUN_DIR/prior)")
    tp.add_argument("run_dir", help="a vqvae or vqvae2 run directory")
    tp.add_argument("--name", choices=priors,
                    help="code prior (default: pixelcnn for vqvae, vqvae2 (PixelSNAIL top, conditioned PixelCNN "
                    "bottom) for vqvae2)")
    tp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override, e.g. prior.channels=64, prior.layers=8, prior.top.channels=64 (vqvae2), "
                    "trainer.epochs=5, trainer.device=cuda")
    tp.add_argument("--resume", action="store_true", help="continue RUN_DIR/prior exactly (only trainer.* overrides)")
    tp.set_defaults(fn=run)
