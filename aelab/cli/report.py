"""``aelab report``: one self-contained HTML page of runs and groups of runs (sweeps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aelab.report.html import write_report


def run(args: argparse.Namespace) -> int:
    def progress(run_dir: Path) -> None:
        print(f"reading {run_dir}", file=sys.stderr)

    out, n = write_report(args.paths, args.out, figures=not args.no_figures, title=args.title,
                          progress=progress)
    print(f"wrote {out} ({n} runs, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_parser(command) -> None:
    r = command("report", help="write one self-contained HTML report of runs: configs, metrics, curves and "
                "pictures, a sortable comparison table; a directory of run directories is a group (a sweep)")
    r.add_argument("paths", nargs="+", metavar="RUN_DIR|GROUP_DIR",
                   help="run directories, or directories whose subdirectories are runs (summarised per setting)")
    r.add_argument("--out", default="report.html", help="the HTML file (default: report.html); written atomically")
    r.add_argument("--no-figures", action="store_true",
                   help="configs, metrics and the group curves only: load no model and no data (fast)")
    r.add_argument("--title", default="aelab report", help="the page title")
    r.set_defaults(fn=run)
