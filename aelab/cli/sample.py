"""``aelab sample``: a PNG grid of decoded prior samples (of the code prior for VQ runs); text runs
print sentences."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from aelab.nn.modes import eval_mode
from aelab.protocol import Model, require
from aelab.report.images import save_image_grid
from aelab.report.text import decode_sentences
from aelab.runs import attach_code_prior, load_run, load_vocabulary


def run_text(args: argparse.Namespace, model: Model) -> int:
    """Print ``--n`` sentences decoded from prior draws (a language model's own samples)."""
    require(model, "sample", what="aelab sample")
    if args.out is not None:
        raise ValueError("--out applies to image runs: a text run's samples are printed, one sentence a line")
    temperature = 1.0 if args.temperature is None else args.temperature
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0: greedy), got {temperature}")
    vocab = load_vocabulary(args.run_dir)
    with torch.random.fork_rng(devices=[]), eval_mode(model):
        torch.manual_seed(args.seed)
        ids = model.sample(args.n, temperature=temperature)
    for sentence in decode_sentences(vocab, ids):
        print(sentence)
    return 0


def run(args: argparse.Namespace) -> int:
    _, model = load_run(args.run_dir)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if model.capabilities.text:
        return run_text(args, model)
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
    s = command("sample", help="write a PNG grid of decoded prior samples (vqvae / vqvae2: of the code prior); "
                "text runs: print sentences, one a line")
    s.add_argument("run_dir", help="a run directory (from aelab train)")
    s.add_argument("--n", type=int, default=64, help="how many samples (default 64)")
    s.add_argument("--nrow", type=int, default=8, help="images per row")
    s.add_argument("--seed", type=int, default=0, help="seeds the draws (default 0)")
    s.add_argument("--temperature", type=float, default=None,
                   help="vqvae / vqvae2: softmax temperature of the code prior; text runs: of the decoder's words "
                   "(default 1; below 1 sharper, 0 greedy)")
    s.add_argument("--out", help="PNG path (default: RUN_DIR/figures/samples.png); not for text runs")
    s.set_defaults(fn=run)

