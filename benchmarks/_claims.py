"""What the claim benchmarks share: merging nested overrides, finished runs, mean and s.d. per row."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from aelab.io import atomic_write_text
from aelab.training.trainer import read_metrics


def merge(a: dict, b: dict) -> dict:
    """``a`` updated with ``b``, nested dicts merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_records(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch evaluation records of a run's ``metrics.jsonl``."""
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("split") == "test"]


def finished(run_dir: Path, epochs: int) -> bool:
    """Whether the run in ``run_dir`` has logged all ``epochs`` epochs."""
    return (run_dir / "metrics.jsonl").is_file() and len(test_records(run_dir)) >= epochs


def seconds_per_epoch(run_dir: Path, train_size: int) -> float:
    """From the logged throughput, which a resumed epoch also gets right (its ``seconds`` cover
    only the part after the resume)."""
    return statistics.mean(train_size / r["samples_per_second"] for r in test_records(run_dir))


def summarise(results: list[dict[str, Any]], rows: list[str], labels: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per row: its label, the number of seeds, and the mean and s.d. of every float result."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        runs = [r for r in results if r["row"] == row and not r.get("missing")]
        if not runs:
            continue
        keys = [k for k, v in runs[0].items() if isinstance(v, float) and k not in ("seed",)]
        out[row] = {"label": labels[row], "seeds": len(runs)}
        for k in keys:
            vals = [r[k] for r in runs if k in r]
            out[row][k] = {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def common_arguments(p: argparse.ArgumentParser, rows: list[str], runs: str, shared_data: Path) -> None:
    """The options every claim benchmark takes: rows, seeds, step cap, jobs and threads, where
    the runs go and the data are, retraining or only summarising, the JSON and Markdown outputs."""
    p.add_argument("--rows", default=",".join(rows), help=f"comma-separated, from {', '.join(rows)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-steps", type=int, default=None, help="cap the steps of every run (smoke runs)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / runs), help="where the run directories go")
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(shared_data)))
    p.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    p.add_argument("--finished-only", action="store_true", help="train nothing: summarise the finished runs")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--markdown", action="store_true", help="print the Markdown table to stderr")


def emit(report: dict[str, Any], args: argparse.Namespace, table: str) -> None:
    """Print the JSON report (and write it to ``--out``, atomically); with ``--markdown`` the table to stderr."""
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    if args.markdown:
        print(table, file=sys.stderr)
