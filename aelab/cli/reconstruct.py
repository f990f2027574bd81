"""``aelab reconstruct``: a PNG grid of inputs and their reconstructions; text runs print sentences
and their greedy reconstructions."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from aelab.data.base import DataSplits
from aelab.protocol import Model, require
from aelab.report.images import reconstruction_grid, save_image_grid
from aelab.report.text import decode_sentences, encode_text
from aelab.runs import load_run, load_run_with_data, load_vocabulary


def print_pairs(inputs: list[str], outputs: list[str], notes: list[str]) -> None:
    for sentence, rec, note in zip(inputs, outputs, notes):
        print(f"input:          {sentence}")
        print(f"reconstruction: {rec}")
        if note:
            print(f"  ({note})")
        print()


def run_text(args: argparse.Namespace, model: Model, data: DataSplits | None) -> int:
    """Greedy reconstructions from the posterior mean of ``--text`` sentences or of random test sentences."""
    require(model, "reconstruct", "text", what="aelab reconstruct")
    if args.out is not None:
        raise ValueError("--out applies to image runs: a text run's reconstructions are printed")
    vocab = load_vocabulary(args.run_dir)
    if args.text:
        x, unknown = encode_text(vocab, args.text)
        notes = [f"not in the vocabulary, read as <unk>: {' '.join(u)}" if u else "" for u in unknown]
    else:
        split = data.test if args.split == "test" else data.train
        idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))[: args.n or 5]
        x, notes = split.get_batch(idx).x, [""] * len(idx)
    rec = model.reconstruct(x, max_len=model.config.max_len)
    print_pairs(decode_sentences(vocab, x), decode_sentences(vocab, rec), notes)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.text:  # no data needed: the sentences are given
        _, model = load_run(args.run_dir)
        data = None
        if not model.capabilities.text:
            raise ValueError(f"--text applies to text runs; {args.run_dir} is a {model.name!r} run")
    else:
        _, model, data = load_run_with_data(args.run_dir)
    if model.capabilities.text:
        return run_text(args, model, data)
    require(model, "reconstruct", what="aelab reconstruct")
    split = data.test if args.split == "test" else data.train
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(split), generator=g)[: args.n or 32]
    x = split.get_batch(idx).x
    out = Path(args.out) if args.out else Path(args.run_dir) / "figures" / "reconstructions.png"
    save_image_grid(reconstruction_grid(x, model.reconstruct(x)), out, nrow=8)
    print(f"wrote {out} ({len(idx)} {args.split} images: odd rows input, even rows reconstruction)")
    return 0


def add_parser(command) -> None:
    r = command("reconstruct", help="write a PNG grid of inputs and reconstructions; text runs: print sentences "
                "and their greedy reconstructions")
    r.add_argument("run_dir", help="a run directory (from aelab train)")
    r.add_argument("--text", action="extend", nargs="+", metavar="SENTENCE",
                   help="text runs: reconstruct these sentences (words separated by spaces, lowercased; words "
                   "outside the vocabulary are read as <unk> and named); repeatable")
    r.add_argument("--n", type=int, default=None, help="how many examples (default 32 images, 5 sentences; fewer "
                   "if the split is smaller)")
    r.add_argument("--split", choices=["test", "train"], default="test", help="which split to draw from")
    r.add_argument("--seed", type=int, default=0, help="seeds the random choice of examples")
    r.add_argument("--out", help="PNG path (default: RUN_DIR/figures/reconstructions.png); not for text runs")
    r.set_defaults(fn=run)
