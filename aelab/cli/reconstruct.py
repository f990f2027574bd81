"""``aelab reconstruct``: a PNG grid of inputs and their reconstructions."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aelab.protocol import require
from aelab.report.images import reconstruction_grid, save_image_grid
from aelab.runs import load_run_with_data


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    _, model, data = load_run_with_data(args.run_dir)
    require(model, "reconstruct", what="aelab reconstruct")
    split = data.test if args.split == "test" else data.train
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(split), generator=g)[: args.n]
    x = split.get_batch(idx).x
    out = Path(args.out) if args.out else Path(args.run_dir) / "figures" / "reconstructions.png"
    save_image_grid(reconstruction_grid(x, model.reconstruct(x)), out, nrow=8)
    print(f"wrote {out} ({len(idx)} {args.split} images: odd rows input, even rows reconstruction)")
    return 0


def add_parser(command) -> None:
    r = command("reconstruct", help="write a PNG grid of inputs and reconstructions")
    r.add_argument("run_dir", help="a run directory (from aelab train)")
    r.add_argument("--n", type=int, default=32, help="how many images (default 32; fewer if the split is smaller)")
    r.add_argument("--split", choices=["test", "train"], default="test", help="which split to draw from")
    r.add_argument("--seed", type=int, default=0, help="seeds the random choice of images")
    r.add_argument("--out", help="PNG path (default: RUN_DIR/figures/reconstructions.png)")
    r.set_defaults(fn=run)
