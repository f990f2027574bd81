"""``aelab interpolate``: the homotopy between two sentences of a text VAE (Bowman et al. 2016)."""

from __future__ import annotations

import argparse
import sys

from aelab.protocol import require
from aelab.report.text import decode_sentences, encode_text, homotopy
from aelab.runs import load_run, load_vocabulary


def run(args: argparse.Namespace) -> int:
    _, model = load_run(args.run_dir)
    require(model, "latent_prior", "text", what="aelab interpolate (a text VAE's homotopy between two sentences)")
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (both sentences' own decodings included), got {args.steps}")
    vocab = load_vocabulary(args.run_dir)
    x, unknown = encode_text(vocab, [args.a, args.b])
    for which, words in zip("ab", unknown):
        if words:
            print(f"aelab: {which}: not in the vocabulary, read as <unk>: {' '.join(words)}", file=sys.stderr)
    t, ids = homotopy(model, x, args.steps)
    for ti, sentence in zip(t.tolist(), decode_sentences(vocab, ids)):
        print(f"{ti:.3f}  {sentence}")
    return 0


def add_parser(command) -> None:
    i = command("interpolate", help="text VAEs: print greedy decodings along the line between two sentences' "
                "posterior means (Bowman et al. 2016)")
    i.add_argument("run_dir", help="a text_vae run directory (from aelab train)")
    i.add_argument("a", help="the first sentence (words separated by spaces, lowercased)")
    i.add_argument("b", help="the second sentence")
    i.add_argument("--steps", type=int, default=8, help="points from a (t=0) to b (t=1), both included (default 8)")
    i.set_defaults(fn=run)
