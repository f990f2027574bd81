"""``aelab traverse``: latent traversals of one test image."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aelab.metrics.latent import collect_latent_statistics
from aelab.nn.modes import evaluation
from aelab.protocol import require
from aelab.report.figures import latent_traversal, plot_traversal, top_dimensions, traversal_values
from aelab.runs import load_run_with_data


def run(args: argparse.Namespace) -> int:
    _, model, data = load_run_with_data(args.run_dir)
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



def add_parser(command) -> None:
    v = command("traverse", help="write latent traversals of one test image")
    v.add_argument("run_dir", help="a run directory (from aelab train)")
    v.add_argument("--index", type=int, default=0, help="test image index")
    v.add_argument("--dims", help="comma-separated dimensions (default: the --n-dims with the largest KL)")
    v.add_argument("--n-dims", type=int, default=8, help="rows: this many dimensions (default 8)")
    v.add_argument("--steps", type=int, default=11, help="columns: values per dimension (default 11)")
    v.add_argument("--span", type=float, default=3.0, help="sweep the prior's quantiles at +-span std devs")
    v.add_argument("--out", help="PNG path (default: RUN_DIR/figures/traversal_INDEX.png)")
    v.set_defaults(fn=run)

