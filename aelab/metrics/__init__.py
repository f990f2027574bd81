"""Metrics: pure functions on arrays/tensors returning ``dict[str, float]``, and wrappers."""

from aelab.metrics import clustering, codebook, disentanglement, evaluation, sequence, sparsity, text  # noqa: F401  (registration)
from aelab.metrics.codes import code_likelihood_metric, vq_bits_per_dim
from aelab.metrics.generative import (
    ClassifierConfig,
    classifier_score,
    feature_statistics,
    frechet_distance,
    generative_metric,
)
from aelab.metrics.latent import (
    active_units,
    collect_latent_statistics,
    kl_summary,
    latent_diagnostics,
    mutual_information,
)
from aelab.metrics.likelihood import bits_per_dim, elbo, iwae_log_likelihood, likelihood_metric
from aelab.metrics.probe import linear_probe, linear_probe_metric
from aelab.metrics.reconstruction import encode_dataset, evaluate_reconstruction

__all__ = [
    "ClassifierConfig",
    "active_units",
    "bits_per_dim",
    "classifier_score",
    "code_likelihood_metric",
    "collect_latent_statistics",
    "elbo",
    "encode_dataset",
    "evaluate_reconstruction",
    "feature_statistics",
    "frechet_distance",
    "generative_metric",
    "iwae_log_likelihood",
    "kl_summary",
    "latent_diagnostics",
    "likelihood_metric",
    "linear_probe",
    "linear_probe_metric",
    "mutual_information",
    "vq_bits_per_dim",
]
