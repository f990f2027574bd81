"""``aelab sweep``: run a grid (and random draws) of settings over seeds as Ray tasks, and summarise it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aelab.training.sweep import (
    SPEC_NAME,
    TABLE_NAME,
    RayOptions,
    default_sweep_dir,
    load_sweep_spec,
    run_sweep,
    summarize_sweep,
    sweep_table,
    write_summary,
)


def _metrics_text(metrics: dict[str, float], keys: tuple[str, ...] = ("loss", "neg_elbo", "nll", "mse")) -> str:
    return "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)


def print_trials(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"{'trial':<{width}}  {'status':<7}  {'attempts':>8}  {'step':>11}")
    for r in rows:
        step = f"{r['step']}/{r['total_steps']}" if r["total_steps"] else "-"
        print(f"{r['name']:<{width}}  {r['status']:<7}  {r['attempts']:>8}  {step:>11}")


def run(args: argparse.Namespace) -> int:
    spec = load_sweep_spec(args.spec)
    sweep_dir = Path(args.out) if args.out else default_sweep_dir(spec)
    if args.dry_run:
        rows = sweep_table(spec, sweep_dir)
        print(f"{spec.name}: {len(rows)} trials -> {sweep_dir}/trials/ (dry run: nothing written)")
        print_trials(rows)
        return 0
    failed: list[str] = []
    if not args.summary:
        options = RayOptions(address=args.address, cpus=args.cpus, gpus=args.gpus, cpus_per_trial=args.cpus_per_trial,
                             gpus_per_trial=args.gpus_per_trial, max_retries=args.max_retries)
        todo = [r for r in sweep_table(spec, sweep_dir) if r["status"] != "done"]
        print(f"{spec.name}: {len(spec.trials())} trials, {len(todo)} to run -> {sweep_dir}", flush=True)

        def finished(row: dict[str, Any]) -> None:
            resumed = f", resumed from step {row['resumed_from']}" if row["resumed_from"] else ""
            what = _metrics_text(row["metrics"]) if row["status"] == "done" else row["error"]
            print(f"{row['status']} {row['name']} ({row['attempts']} attempt{'s' * (row['attempts'] != 1)}{resumed}):"
                  f" {what}", flush=True)

        rows = run_sweep(spec, sweep_dir, options, on_finish=finished)
        failed = [r["name"] for r in rows if r["status"] != "done"]
        print(f"{len(rows) - len(failed)} of {len(rows)} trials done; table: {sweep_dir / TABLE_NAME}", flush=True)
        if failed:
            print(f"not done: {', '.join(failed)} (errors in {sweep_dir / TABLE_NAME}; run the sweep again to retry "
                  "them)", file=sys.stderr)
    summary = summarize_sweep(spec, sweep_dir)
    metrics = args.metrics.split(",") if args.metrics else None
    print(summary.table(metrics))
    csv, js = write_summary(summary, sweep_dir)
    print(f"wrote {csv} and {js}")
    return 1 if not args.summary and failed else 0


def add_parser(command) -> None:
    s = command("sweep", help="run a sweep: a grid (and seeded random draws) of --set values over seeds, each trial "
                "an ordinary run directory, on Ray; then summarise it per setting over seeds",
                description="Run the trials of SPEC.json that are not done yet (a killed trial continues from its "
                "last checkpoint; re-running skips finished trials), then print and write the summary: per setting, "
                "the mean, s.d. and 95% t-interval over seeds of every final metric. Needs Ray: "
                "pip install 'aelab[sweep]'.")
    s.add_argument("spec", metavar="SPEC.json", help="the sweep spec: {\"name\", \"base\": run config or its path, "
                   "\"grid\": {key: [values]}, \"random\": {\"n\", \"seed\", \"params\"}, \"seeds\": [...], "
                   "\"metrics\": [aelab eval metrics run on each trained trial]} (see configs/sweeps/)")
    s.add_argument("--out", metavar="SWEEP_DIR", help="the sweep directory (default: runs/sweeps/NAME); it keeps "
                   f"{SPEC_NAME}, {TABLE_NAME}, trials/NAME/ and the summary")
    s.add_argument("--summary", action="store_true", help="only summarise the trials done so far (no Ray needed): "
                   "a table here, summary.csv and summary.json in the sweep directory")
    s.add_argument("--dry-run", action="store_true", help="validate the spec and print the trial table (and each "
                   "trial's status in the sweep directory); write and run nothing")
    s.add_argument("--metrics", metavar="M1,M2", help="show only these metrics in the printed summary (the files "
                   "keep all)")
    ray = s.add_argument_group("Ray")
    ray.add_argument("--address", help="join this Ray cluster (e.g. ray://HEAD:10001, or auto) instead of starting "
                     "a local Ray; the sweep directory must then be on a file system all nodes share, with aelab "
                     "installed on every node")
    ray.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: all)")
    ray.add_argument("--gpus", type=int, help="GPUs of the local Ray (default: Ray's detection)")
    ray.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs (and torch threads) per trial (default: 1)")
    ray.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial (default: 0; set "
                     "trainer.device=cuda in the spec's base)")
    ray.add_argument("--max-retries", type=int, default=3, help="restarts of a trial whose worker died (default: 3)")
    s.set_defaults(fn=run)
