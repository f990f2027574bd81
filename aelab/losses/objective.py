"""The objective: a weighted sum of named terms, each giving one value per example.

The batch mean is taken here and only here, so every term is written per example and weights
(constants or schedules of the step) live outside the terms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch
from torch import Tensor, nn

from aelab.outputs import LossOutput, ModelOutput
from aelab.schedules import Schedule, constant


class Term(Protocol):
    """A loss term: ``term(out, model) -> Tensor`` of shape ``(B,)``, to be minimised."""

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor: ...


class StepTerm(ABC):
    """A term that depends on the training step itself, not only through its weight (e.g. a
    target that is a schedule of the step): called as ``term(out, model, step)``, ``step=None``
    at evaluation (schedules at their final value)."""

    @abstractmethod
    def __call__(self, out: ModelOutput, model: nn.Module, step: int | None) -> Tensor: ...


class Objective:
    """``loss = mean_b sum_t w_t(step) * term_t(out)_b``.

    Terms whose weight is 0 at this step are skipped when gradients are enabled (training) and
    computed for the logs otherwise (evaluation under ``no_grad``).

    Args:
        terms: name -> (term, weight); a weight is a number or a schedule of the step. A
            :class:`StepTerm` is also handed the step.

    Example:
        >>> from aelab.losses.terms import ReconstructionNLL
        >>> obj = Objective({"recon": (ReconstructionNLL(), 1.0)})
        >>> sorted(obj.terms)
        ['recon']
    """

    def __init__(self, terms: dict[str, tuple[Term | StepTerm, Schedule | float]]) -> None:
        self.terms: dict[str, tuple[Term | StepTerm, Schedule]] = {
            name: (term, constant(float(w)) if isinstance(w, (int, float)) else w)
            for name, (term, w) in terms.items()
        }

    def weights(self, step: int | None) -> dict[str, float]:
        return {name: w(step) for name, (_, w) in self.terms.items()}

    def __call__(self, out: ModelOutput, model: nn.Module, step: int | None = None) -> LossOutput:
        per_example: Tensor | None = None
        logs: dict[str, Tensor] = {}
        training = torch.is_grad_enabled()
        for name, (term, weight) in self.terms.items():
            w = weight(step)
            if w == 0.0 and training:
                continue  # a switched-off term costs nothing in the training step; evaluation logs it
            value = term(out, model, step) if isinstance(term, StepTerm) else term(out, model)
            logs[name] = value.detach().mean()
            if w != 0.0:
                weighted = value if w == 1.0 else w * value
                per_example = weighted if per_example is None else per_example + weighted
        if per_example is None:  # every term switched off at this step
            per_example = torch.zeros(out.x.shape[0], device=out.x.device, dtype=out.x.dtype)
        return LossOutput(loss=per_example.mean(), terms=logs, per_example=per_example.detach())
