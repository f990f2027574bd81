"""``aelab sample``: a PNG grid of decoded prior samples (of the code prior for VQ runs)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from aelab.protocol import require
from aelab.report.images import save_image_grid
from aelab.runs import attach_code_prior, load_run


def run(args: argparse.Namespace) -> int:
    _, model = load_run(args.run_dir)
    if model.capabilities.codes:
        prior = attach_code_prior(args.run_dir, model, required=True)
        temperature = 1.0 if args.temperature is None else args.temperature
        what = f"from the {prior.name} code prior at temperature {temperature:g}"

        def draw() -> torch.Tensor:
            return model.sample(args.n, temperature=temperature)
    else:
        require(model, "sample", what="aelab sample")
        if args.temperature is not None:
            raise ValueError("--temperature applies to the code priors of vqvae / vqvae2 runs only")
        what = "from the prior"

        def draw() -> torch.Tensor:
            return model.sample(args.n)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out) if args.out else Path(args.run_dir) / "figures" / "samples.png"
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        images = draw()
        seconds = time.perf_counter() - start
    save_image_grid(images, out, nrow=args.nrow)
    print(f"wrote {out} ({args.n} samples {what}, decoded to mean images; {args.n / max(seconds, 1e-9):.1f} images/s)")
    return 0



def add_parser(command) -> None:
    s = command("sample", help="write a PNG grid of decoded prior samples (vqvae / vqvae2: of the code prior)")
    s.add_argument("run_dir", help="a run directory (from aelab train)")
    s.add_argument("--n", type=int, default=64, help="how many samples (default 64)")
    s.add_argument("--nrow", type=int, default=8, help="images per row")
    s.add_argument("--seed", type=int, default=0, help="seeds the draws (default 0)")
    s.add_argument("--temperature", type=float, default=None,
                   help="vqvae / vqvae2: softmax temperature of the code prior (default 1; below 1 sharper, 0 greedy)")
    s.add_argument("--out", help="PNG path (default: RUN_DIR/figures/samples.png)")
    s.set_defaults(fn=run)

