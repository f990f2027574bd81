"""Training/evaluation mode as a context: set for a block, the previous mode restored after.

Example:
    >>> net = torch.nn.Linear(2, 2)
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "evaluation", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for parameter-free models)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode for the block; the module's previous mode is restored afterwards (also on
    an exception). Gradients are untouched: combine with ``torch.no_grad()`` where none are needed.

    ``module.train(mode)`` sets every submodule, so a submodule left in a mode of its own comes
    back in its parent's mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def evaluation(model: nn.Module, seed: int) -> Iterator[torch.device]:
    """Evaluation mode, no gradients and a private RNG stream seeded with ``seed``; yields the
    model's device.

    The caller's RNG state (CPU, and the model's CUDA device) is restored afterwards, so metrics
    are reproducible and never shift a training run's random stream.

    Example:
        >>> net = torch.nn.Dropout(0.5)
        >>> with evaluation(net, seed=0) as device:
        ...     device, net.training, torch.is_grad_enabled()
        (device(type='cpu'), False, False)
    """
    device = model_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        with eval_mode(model):
            yield device
