"""The model-agnostic trainer, checkpoints and exact resume."""

from aelab.training import classifier  # noqa: F401  (registers the feature-classifier loader)
from aelab.training.trainer import NonFiniteLossError, Trainer, TrainerConfig

__all__ = ["NonFiniteLossError", "Trainer", "TrainerConfig"]
