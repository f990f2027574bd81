"""``aelab list``: every registry, with the first sentence of each entry's description."""

from __future__ import annotations

import argparse

from aelab.nn.corruption import CORRUPTIONS
from aelab.registry import (
    BACKBONES,
    DATASETS,
    EPOCH_EVALUATIONS,
    EPOCH_FIGURES,
    LIKELIHOODS,
    METRICS,
    MODELS,
    PRIORS,
    Registry,
)


def _print_registry(title: str, reg: Registry, names: list[str] | None = None) -> None:
    names = list(reg) if names is None else names
    print(f"{title}:")
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"  {name:<{width}}  {reg.describe(name)}")


def run(args: argparse.Namespace) -> int:
    print("models:")
    width = max((len(n) for n in MODELS), default=0)
    families = {name: f"[{MODELS.get(name).family}]" for name in MODELS}
    fwidth = max((len(f) for f in families.values()), default=0)
    for name, family in families.items():
        print(f"  {name:<{width}}  {family:<{fwidth}}  {MODELS.describe(name)}")
    for title, reg in [("data sets", DATASETS), ("priors", PRIORS), ("likelihoods", LIKELIHOODS),
                       ("metrics", METRICS), ("backbones", BACKBONES), ("corruptions", CORRUPTIONS),
                       ("epoch evaluations", EPOCH_EVALUATIONS), ("epoch figures", EPOCH_FIGURES)]:
        _print_registry(title, reg)
    return 0


def add_parser(command) -> None:
    command("list", help="registered models, data sets, priors, likelihoods, metrics, backbones and corruptions"
            ).set_defaults(fn=run)
