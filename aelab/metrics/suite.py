"""Which metrics a model gets by default, which apply to it, and running them by name.

Every metric registered in :data:`aelab.registry.METRICS` is called as
``METRICS.get(name)(model, splits, **options)``; what applies to a model is read from its declared
``model.capabilities``, never guessed from its attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from aelab.data.base import DatasetInfo, DataSplits
from aelab.protocol import Capabilities, Model, require
from aelab.registry import METRICS

__all__ = ["DEFAULT_K", "METRIC_NEEDS", "check_metrics", "default_metrics", "metric_options", "run_metric"]

#: metrics that need a continuous prior p(z) (models with discrete codes use code_likelihood)
CONTINUOUS_PRIOR_METRICS = ("likelihood", "latent_diagnostics")
#: metrics of a model with codes that need its code prior attached
CODE_PRIOR_METRICS = ("frechet", "code_likelihood")
#: what each built-in metric needs a model to declare (:class:`~aelab.protocol.Capabilities` fields);
#: a metric not listed here (one a user registers) is not checked before it runs
METRIC_NEEDS: dict[str, tuple[str, ...]] = {
    "reconstruction": ("reconstruct", "images"),  # pixel errors
    "linear_probe": ("latent", "images"),  # class labels of images
    "likelihood": ("latent_prior", "images"),  # nats per image and bits/dim; sentences: text_likelihood
    "latent_diagnostics": ("latent_prior",),  # any input: KL per dimension, active units, I(x; z)
    "sparsity": ("latent", "images"),  # encode_dataset gathers labels
    "clustering": ("latent", "images"),  # class labels of images
    "disentanglement": ("latent", "images"),  # renders images from chosen factors
    "frechet": ("images",),  # features of an image classifier (can it sample: checked with the prior below)
    "codebook": ("codes",),
    "code_likelihood": ("codes",),
    "text_likelihood": ("text",),
    "text_reconstruction": ("reconstruct", "text"),
    "sequence_bound": ("sequence",),
    "rollout": ("sequence",),  # data sets with ground truth: moving-mnist, oscillator
}
#: importance samples of the IWAE bound by default: a sentence decoder pass costs far more than an image's
DEFAULT_K = {"likelihood": 1000, "text_likelihood": 500}


def _capabilities(model: nn.Module) -> Capabilities:
    return model.capabilities if isinstance(model, Model) else Capabilities()


def default_metrics(model: nn.Module, info: DatasetInfo) -> list[str]:
    """The metrics ``aelab eval`` runs when none are named.

    Sequence models: the bound per frame, and on data sets with known ground truth (moving MNIST,
    the oscillator) the scores of jumpy rollouts. Text models: the sentence likelihood (NLL,
    perplexity), and for text VAEs the latent diagnostics and the greedy reconstructions' token
    accuracy and BLEU. Image models:
    reconstruction always; for models with discrete codes the codebook usage and, with a code
    prior, the likelihood bound; for models with a continuous prior the likelihood and latent
    diagnostics; a linear probe on labelled data (not for codes: their flattened latents are
    thousands of dimensions wide, slow and memory-hungry for full-batch L-BFGS).
    """
    caps = _capabilities(model)
    if caps.sequence:  # the rollout scores need a data set whose ground truth it knows
        known = info.dynamics is not None or (info.factor_names or ())[:2] == ("digit", "direction")
        return ["sequence_bound"] + (["rollout"] if known else [])
    if caps.text:
        return ["text_likelihood"] + (["latent_diagnostics", "text_reconstruction"] if caps.latent_prior else [])
    names = ["reconstruction"]
    if caps.codes:
        return names + ["codebook"] + (["code_likelihood"] if caps.sample else [])
    if caps.latent_prior:
        names += ["likelihood", "latent_diagnostics"]
    if info.num_classes:
        names.append("linear_probe")
    return names


def check_metrics(model: nn.Module, names: Sequence[str], model_name: str, run_dir: str = "RUN_DIR") -> None:
    """Fail before any work on unknown names and on metrics that do not apply to ``model``."""
    caps = _capabilities(model)
    for name in names:
        METRICS.get(name)
        if caps.codes and name in CONTINUOUS_PRIOR_METRICS:
            raise ValueError(f"metric {name!r} needs a continuous prior p(z); a {model_name} run has discrete codes: "
                             "use code_likelihood (the bound with its code prior) and codebook")
        if caps.codes and name in CODE_PRIOR_METRICS and not caps.sample:
            raise FileNotFoundError(f"metric {name!r} needs the run's code prior: train one first with "
                                    f"`aelab train-prior {run_dir}`")
        try:
            require(model, *METRIC_NEEDS.get(name, ()), what=f"metric {name!r}")
        except ValueError as e:
            fits = [m for m, needs in METRIC_NEEDS.items() if all(getattr(caps, c) for c in needs)]
            raise ValueError(f"{e}; the metrics for a {model_name} run: {', '.join(fits) or 'none built in'}") from None


def metric_options(name: str, batch_size: int = 500, k: int | None = None, limit: int | None = 1000,
                   samples: int = 10000, classifier_config: Any = None, cache_dir: Any = None,
                   protocol: str = "dlib") -> dict[str, Any]:
    """The options of metric ``name`` in an evaluation.

    Only the likelihoods take ``k`` (``None``: :data:`DEFAULT_K`, 1000 for images, 500 for
    sentences; IWAE with k samples costs k decoder passes per example); they and the text
    reconstructions take ``limit``; only frechet takes ``samples`` and its classifier's config
    and cache.
    """
    if name in DEFAULT_K:
        return {"k": DEFAULT_K[name] if k is None else k, "limit": limit, "batch_size": 100}
    if name == "text_reconstruction":
        return {"limit": limit, "batch_size": batch_size}
    if name == "disentanglement":
        return {"batch_size": batch_size, "protocol": protocol}
    if name == "rollout":
        return {"batch_size": min(batch_size, 200), "limit": limit, "cache_dir": cache_dir}
    if name == "frechet":
        return {"batch_size": batch_size, "n": samples, "classifier_config": classifier_config, "cache_dir": cache_dir}
    return {"batch_size": batch_size}


def run_metric(name: str, model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Run the registered metric ``name``: ``METRICS.get(name)(model, splits, **options)``."""
    return METRICS.get(name)(model, splits, **options)
