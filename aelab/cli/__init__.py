"""The ``aelab`` command line: list, train, train-prior, eval, reconstruct, sample, traverse, figures.

One module per command, each with ``add_parser(command)`` and ``run(args)``; the library logic
they call lives in :mod:`aelab.runs`, :mod:`aelab.metrics.suite` and :mod:`aelab.report.run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

import aelab  # noqa: F401  (registers every model, data set and metric)
from aelab.cli import eval as eval_command
from aelab.cli import figures, listing, reconstruct, sample, train, train_prior, traverse
from aelab.config import ConfigError
from aelab.registry import UnknownNameError

__all__ = ["build_parser", "main"]

COMMANDS = (listing, train, train_prior, eval_command, figures, sample, traverse, reconstruct)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aelab", description="Train, evaluate and look at autoencoders.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", required=True)
    # --threads is accepted before or after the command ("aelab train ... --threads 2" works too)
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[threads], **kw)

    for module in COMMANDS:
        module.add_parser(command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.fn(args)
    except (ConfigError, UnknownNameError, FileNotFoundError, ValueError) as e:
        print(f"aelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "aelab train-prior RUN_DIR --resume" if args.command == "train-prior" else "aelab train --resume RUN_DIR"
        print(f"aelab: interrupted; resume with `{how}`", file=sys.stderr)
        return 130

