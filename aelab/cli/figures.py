"""``aelab figures``: write all figures of a run."""

from __future__ import annotations

import argparse

from aelab.report.run import write_figures
from aelab.runs import load_run_with_data


def run(args: argparse.Namespace) -> int:
    _, model, data = load_run_with_data(args.run_dir)
    written, notes = write_figures(args.run_dir, model, data, args.out)
    for note in notes:
        print(note)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing to draw: this model has no prior and the run has no metrics.jsonl")
    return 0



def add_parser(command) -> None:
    f = command("figures", help="write all figures of a run (traversals, KL, manifold, curves; VQ runs: "
                       "reconstructions, samples)")
    f.add_argument("run_dir", help="a run directory (from aelab train)")
    f.add_argument("--out", help="directory (default: RUN_DIR/figures)")
    f.set_defaults(fn=run)

