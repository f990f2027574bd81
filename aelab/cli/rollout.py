"""``aelab rollout``: jumpy predictions of a sequence model (TD-VAE) after a context of frames."""

from __future__ import annotations

import argparse
from pathlib import Path

from aelab.protocol import require
from aelab.report.sequence import write_rollout
from aelab.runs import load_run_with_data


def parse_jumps(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; anything but positive integers is a one-line error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"--dt: expected comma-separated jump lengths >= 1 (e.g. 1,2,3), got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    _, model, data = load_run_with_data(args.run_dir)
    require(model, "sequence", what="aelab rollout")
    dts = parse_jumps(args.dt)
    if args.jumps < 1 or args.n < 1 or args.sequences < 1:
        raise ValueError(f"--jumps, --n and --sequences must be >= 1, got {args.jumps}, {args.n}, {args.sequences}")
    out_dir = Path(args.out) if args.out else Path(args.run_dir) / "figures"
    for dt in dts:
        path = write_rollout(model, data.test, out_dir / f"rollout_c{args.context}_dt{dt}x{args.jumps}.png",
                             args.context, [dt] * args.jumps, args.n, n=args.sequences, seed=args.seed)
        print(f"wrote {path}")
    return 0


def add_parser(command) -> None:
    r = command("rollout", help="sequence models: sample futures after a context, jumping dt steps at a time "
                "(an image strip for frames, a trajectory plot for 1-D signals)")
    r.add_argument("run_dir", help="a tdvae run directory (from aelab train)")
    r.add_argument("--context", type=int, default=10, help="observed frames before the rollout (default 10)")
    r.add_argument("--jumps", type=int, default=4, help="jumps per rollout (default 4)")
    r.add_argument("--dt", default="1", help="jump lengths, comma-separated: one picture each (default 1)")
    r.add_argument("--n", type=int, default=8, help="sampled futures per sequence (default 8)")
    r.add_argument("--sequences", type=int, default=2, help="test sequences shown (spread over the split; default 2)")
    r.add_argument("--seed", type=int, default=0, help="seeds the sampled futures (default 0)")
    r.add_argument("--out", help="folder for the pictures (default RUN_DIR/figures)")
    r.set_defaults(fn=run)
