"""The ``aelab`` command line: list, train, eval, reconstruct."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aelab.config import ConfigError
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


def _new_run_dir(cfg) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.model}-{cfg.data.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def _epoch_printer(trainer, metrics: dict[str, Any]) -> None:
    shown = {k: v for k, v in metrics.items() if k not in ("step", "epoch", "samples_per_second")}
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    print(f"epoch {metrics['epoch'] + 1} step {metrics['step']}: {text}", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from aelab.data.base import load_data
    from aelab.models.base import build_model
    from aelab.runs import RunConfig, load_run_config
    from aelab.training.trainer import Trainer

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
        run_dir = Path(args.out) if args.out else _new_run_dir(cfg)
        if (run_dir / "trainer_state.safetensors").exists() or (run_dir / "config.json").exists():
            raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} "
                              "or choose another --out (nothing was overwritten)")
    data = load_data(cfg.data)
    cfg.model_config.image_shape = data.info.shape
    cfg = RunConfig.from_dict(cfg.to_dict())  # re-validate after filling the image shape
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, cfg.model_config)
    print(f"{'resuming' if args.resume else 'training'} {cfg.model} on {cfg.data.name} "
          f"({len(data.train)} train / {len(data.test)} test images of shape {data.info.shape}) -> {run_dir}",
          flush=True)
    trainer = Trainer(model, data.train, data.test, cfg.trainer, run_dir=run_dir,
                      on_epoch_end=[_epoch_printer], run_config=cfg.to_dict())
    if not args.resume:
        trainer.save()  # config + initial weights: the run directory is usable from the start
    trainer.fit(resume=bool(args.resume))
    print(f"done: {run_dir}")
    return 0


def _load_run(run_dir: str):
    from aelab.data.base import load_data
    from aelab.models.base import Autoencoder
    from aelab.runs import load_run_config

    cfg = load_run_config(run_dir)
    model = Autoencoder.from_pretrained(run_dir)
    return cfg, model, load_data(cfg.data)


def cmd_eval(args: argparse.Namespace) -> int:
    from aelab.registry import METRICS

    cfg, model, data = _load_run(args.run_dir)
    names = args.metrics.split(",") if args.metrics else ["reconstruction"] + (
        ["linear_probe"] if data.info.num_classes else [])
    results: dict[str, float] = {}
    for name in names:
        fn = METRICS.get(name)
        if name == "reconstruction":
            results |= fn(model, data.test, cfg.trainer.eval_batch_size)
        else:
            results |= fn(model, data.train, data.test)
    if args.json:
        print(json.dumps({"run_dir": str(args.run_dir), "model": cfg.model, "data": cfg.data.name,
                          "split": "test", "metrics": results}, indent=2))
    else:
        _print_table(results, f"{cfg.model} on {cfg.data.name} (test split, {len(data.test)} images)")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from aelab.report.images import reconstruction_grid, save_image_grid

    cfg, model, data = _load_run(args.run_dir)
    split = data.test if args.split == "test" else data.train
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(split), generator=g)[: args.n]
    x, _ = split.get_batch(idx)
    out = Path(args.out) if args.out else Path(args.run_dir) / "images" / "reconstructions.png"
    save_image_grid(reconstruction_grid(x, model.reconstruct(x)), out, nrow=8, scale=2)
    print(f"wrote {out} ({len(idx)} {args.split} images: odd rows input, even rows reconstruction)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aelab", description="Train, evaluate and look at autoencoders.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="registered models, data sets and metrics").set_defaults(fn=cmd_list)

    t = sub.add_parser("train", help="train a model (or --resume a run)")
    t.add_argument("model", nargs="?", help="registered model name (see `aelab list`)")
    t.add_argument("--data", help="registered data set name")
    t.add_argument("--config", help="a run config JSON (e.g. configs/quickstart.json)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. model.latent_dim=32, trainer.epochs=5, data.root=DIR")
    t.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="test metrics of a trained run")
    e.add_argument("run_dir")
    e.add_argument("--metrics", help="comma-separated metric names (default: reconstruction, linear_probe)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("reconstruct", help="write a PNG grid of inputs and reconstructions")
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
        print("aelab: interrupted; resume with `aelab train --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
