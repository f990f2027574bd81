"""The ``aelab`` command line: list, train, train-prior, eval, reconstruct, sample, traverse, interpolate,
figures, rollout, report, sweep.

One module per command, each with ``add_parser(command)`` and ``run(args)``; the library logic
they call lives in :mod:`aelab.runs`, :mod:`aelab.metrics.suite`, :mod:`aelab.report.run` and
:mod:`aelab.training.sweep`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

import aelab  # noqa: F401  (registers every model, data set and metric)
from aelab.cli import eval as eval_command
from aelab.cli import (
    figures,
    interpolate,
    listing,
    reconstruct,
    report,
    rollout,
    sample,
    sweep,
    train,
    train_prior,
    traverse,
)
from aelab.compat import MissingDependencyError
from aelab.config import ConfigError
from aelab.data.download import DownloadError
from aelab.io import RunLockedError
from aelab.registry import UnknownNameError
from aelab.training.trainer import NonFiniteLossError

__all__ = ["build_parser", "main"]

COMMANDS = (listing, train, train_prior, eval_command, figures, sample, traverse, interpolate, reconstruct, rollout,
            report, sweep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aelab", description="Train, evaluate and look at autoencoders.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too "
                   "(or set AELAB_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    # --threads is accepted before or after the command ("aelab train ... --threads 2" works too)
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="torch CPU threads")
    threads.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an expected error too")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[threads], **kw)

    for module in COMMANDS:
        module.add_parser(command)
    return p


#: the failures a user can cause and mend (bad settings or files, data, divergence, the OS):
#: one line each; anything else is a bug and keeps its traceback
EXPECTED = (ConfigError, UnknownNameError, ValueError, OSError, NonFiniteLossError, RunLockedError,
            MissingDependencyError, DownloadError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"aelab: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    debug = args.debug or os.environ.get("AELAB_DEBUG", "") not in ("", "0")
    try:
        return args.fn(args)
    except EXPECTED as e:
        if debug:
            raise
        print(f"aelab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        if args.command == "train-prior":
            print(f"aelab: interrupted; resume with `aelab train-prior {run_dir} --resume`", file=sys.stderr)
        elif args.command == "train" and run_dir is not None:
            print(f"aelab: interrupted; resume with `aelab train --resume {run_dir}`", file=sys.stderr)
        else:
            print("aelab: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    """The error's message on one line (an OSError names its file: ``[Errno 28] ...: 'path'``)."""
    text = str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return " ".join(text.split())

