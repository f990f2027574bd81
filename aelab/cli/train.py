"""``aelab train``: train a model, or resume a stopped run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aelab.config import ConfigError
from aelab.registry import DATASETS, MODELS
from aelab.runs import RunConfig, load_run_config, new_run_dir, train_run

#: the code priors are trained on a run's codes by ``aelab train-prior``
CODE_PRIOR_FAMILY = "code prior"


def _epoch_printer(trainer, metrics: dict[str, Any]) -> None:
    # per-dimension KLs go to metrics.jsonl and TensorBoard; one line per epoch stays readable
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "samples_per_second", "mutual_info_max")
             and not k.startswith("kl_dim_")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    print(f"epoch {metrics['epoch'] + 1} step {metrics['step']}: {text}", flush=True)


def run(args: argparse.Namespace) -> int:
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



def add_parser(command) -> None:
    models = [n for n in MODELS if MODELS.get(n).family != CODE_PRIOR_FAMILY]
    t = command("train", help="train a model (or --resume a run)")
    t.add_argument("model", nargs="?", metavar="MODEL",
                   help=f"registered model name: {', '.join(models)} (see `aelab list`)")
    t.add_argument("--data", metavar="DATA",
                   help=f"registered data set name: {', '.join(DATASETS)}")
    t.add_argument("--config", help="a run config JSON (e.g. configs/quickstart.json)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. model.latent_dim=32, trainer.epochs=5, data.root=DIR")
    t.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly")
    t.set_defaults(fn=run)
