"""Metrics: pure functions on arrays/tensors returning ``dict[str, float]``, and wrappers."""

from aelab.metrics.probe import linear_probe, linear_probe_metric
from aelab.metrics.reconstruction import encode_dataset, evaluate_reconstruction

__all__ = ["encode_dataset", "evaluate_reconstruction", "linear_probe", "linear_probe_metric"]
