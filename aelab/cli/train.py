"""``aelab train``: train a model, or resume a stopped run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aelab.config import ConfigError
from aelab.distributed import environment_rank
from aelab.registry import DATASETS, MODELS
from aelab.runs import RunConfig, check_run_directory, load_run_config, new_run_dir, resume_config, train_run

#: the code priors are trained on a run's codes by ``aelab train-prior``
CODE_PRIOR_FAMILY = "code prior"


def _epoch_printer(trainer, metrics: dict[str, Any]) -> None:
    # per-dimension KLs go to metrics.jsonl and TensorBoard; one line per epoch stays readable
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "samples_per_second", "mutual_info_max")
             and not k.startswith("kl_dim_")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    print(f"epoch {metrics['epoch'] + 1} step {metrics['step']}: test {text}", flush=True)


NO_MODEL = ("name a model to train, e.g. `aelab train ae --data fashion-mnist --set trainer.epochs=2` "
            "(`aelab list` shows the models and data sets), or run the quick start: "
            "`aelab train --config configs/quickstart.json --out runs/quickstart`")


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.model or args.config or args.data or args.init_from:
            raise ConfigError("--resume takes the run's own config; give only --set overrides (e.g. trainer.epochs)")
        run_dir = Path(args.resume)
        args.run_dir = run_dir  # for the interrupt message
        cfg = resume_config(run_dir, args.set)
    else:
        if args.config:
            cfg = load_run_config(args.config, require_data=False)
            if args.model and args.model != cfg.model:
                raise ConfigError(f"{args.config} trains model {cfg.model!r} but the command line names "
                                  f"{args.model!r}: give one of them (the file's model settings belong to its model)")
        elif args.model:
            cfg = RunConfig(model=args.model)
        else:
            raise ConfigError(NO_MODEL)
        if args.data:
            cfg.data.name = args.data
        cfg = cfg.with_overrides(args.set)
        run_dir = Path(args.out) if args.out else new_run_dir(cfg)
        args.run_dir = run_dir
        if environment_rank() == 0:  # under torchrun rank 0 creates the directory the others then find
            check_run_directory(run_dir, False, f"aelab train --resume {run_dir}")

    def started(trainer) -> None:
        for note in [*(trainer.data_info.notes if trainer.data_info is not None else ()), *trainer.notes]:
            print(f"note: {note}", flush=True)
        data, shape = trainer.train_data, getattr(trainer.train_data, "shape", None)
        what = " examples"
        if shape is not None:
            what = f" sequences of shape {shape} (T, C, H, W)" if len(shape) == 4 else f" images of shape {shape}"
        source = f"{cfg.data.name} ({cfg.data.path})" if cfg.data.path else cfg.data.name
        if trainer.resumed_from is not None and trainer.resumed_from >= trainer.total_steps:
            print(f"nothing to do: {run_dir} finished at step {trainer.resumed_from} of {trainer.total_steps}; "
                  "raise trainer.epochs (or trainer.max_steps) with --set to train on", flush=True)
            return
        step = f" from step {trainer.resumed_from} of {trainer.total_steps}" if trainer.resumed_from is not None else (
            f" for {trainer.total_steps} steps")
        init = f" from the weights of {args.init_from}" if args.init_from else ""
        procs = f", {trainer.world_size} processes (torchrun)" if trainer.world_size > 1 else ""
        print(f"{'resuming' if args.resume else 'training'} {cfg.model}{init} on {source} "
              f"({len(data)} train / {len(trainer.test_data)} test{what}){step}{procs} -> {run_dir}", flush=True)

    trainer, _ = train_run(cfg, run_dir, resume=bool(args.resume), on_epoch_end=[_epoch_printer], on_start=started,
                           init_from=args.init_from)
    if environment_rank() == 0 and (trainer.resumed_from is None or trainer.resumed_from < trainer.total_steps):
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
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly (only trainer.epochs, "
                   "trainer.max_steps and logging/evaluation settings may change with --set)")
    t.add_argument("--init-from", metavar="RUN_DIR", help="start a new run from another run's weights (fine-tuning; "
                   "same model and architecture)")
    t.set_defaults(fn=run)
