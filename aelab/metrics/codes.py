"""Likelihood of vector-quantised models with a code prior: a bound on ``-log p(x)`` in bits/dim.

A VQ-VAE's posterior is a point mass on the nearest codes ``z*(x)`` (one-hot ``q(z|x)``, zero
entropy), so its ELBO is ``log p(x|z*) + log p(z*)`` and

    ``-log p(x) <= -log p(x|z*) - log p(z*)``,

the reconstruction NLL plus the code prior's NLL of the image's codes (van den Oord et al. 2017,
section 3.2). In bits per dimension it is divided by ``C * H * W * ln 2``.

What the number means depends on the likelihood ``p(x|z)``:

* ``discretized_logistic``: a normalised distribution over the 256 levels of each pixel, so the
  bound is a code length: real 8-bit bits/dim, comparable with published numbers.
* ``bernoulli`` (the default) scores grey values in ``[0, 1]`` as soft targets; it is not
  normalised over the 256 levels (nor over ``[0, 1]``), so the bound is in "Bernoulli bits/dim":
  comparable between models with the Bernoulli likelihood on the same data, **not** with 8-bit
  bits/dim.
* ``gaussian`` / ``laplace`` are densities: the nats compare between models with the same
  likelihood and scale only, and no bits/dim is given.

References:
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", NeurIPS 2017.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent

from aelab.data.base import DataSplits, ImageDataset, random_subset
from aelab.data.batches import eval_batches
from aelab.metrics.likelihood import is_discrete_8bit
from aelab.nn.modes import evaluation
from aelab.protocol import require
from aelab.registry import METRICS

__all__ = ["code_likelihood_metric", "vq_bits_per_dim", "code_likelihood"]


def vq_bits_per_dim(recon_nll: float | Tensor, prior_nll: float | Tensor,
                    image_shape: tuple[int, ...]) -> float | Tensor:
    """The VQ bound ``(-log p(x|z*) - log p(z*)) / (C H W ln 2)`` in bits per dimension.

    Args:
        recon_nll: ``-log p(x|z*)`` in nats per image (the reconstruction term).
        prior_nll: ``-log p(z*)`` in nats per image (all code levels of the image).
        image_shape: ``(C, H, W)``.

    Returns:
        Bits per dimension; a bound on the code length only when ``p(x|z)`` is a normalised
        distribution over 8-bit pixel values (see the module notes).

    Example:
        >>> vq_bits_per_dim(784 * math.log(2), 784 * math.log(2), (1, 28, 28))
        2.0
    """
    dims = math.prod(image_shape)
    if dims < 1:
        raise ValueError(f"image_shape must be positive, got {tuple(image_shape)}")
    return (recon_nll + prior_nll) / (dims * math.log(2))


def _prior_log_prob(priors: tuple, codes: list[Tensor]) -> Tensor:
    """``sum_levels log p(codes_l | codes_{l-1})`` ``(B,)``: each level below the top conditioned on the one above."""
    total = 0.0
    for i, (p, c) in enumerate(zip(priors, codes)):
        if not callable(getattr(p, "log_prob", None)):
            raise ValueError(f"code prior {type(p).__name__} has no log_prob: cannot score codes")
        device = next(p.parameters()).device
        cond = codes[i - 1].to(device) if i > 0 and getattr(p, "cond_shape", None) is not None else None
        total = total + p.log_prob(c.to(device), cond=cond).double().cpu()
    return total  # type: ignore[return-value]


def code_likelihood_metric(model, data: ImageDataset, batch_size: int = 500,
                           limit: int | None = None) -> dict[str, float]:
    """The VQ bound on ``-log p(x)`` of a VQ model with code priors attached (``attach_prior``).

    Returns:
        ``recon_nll`` (``-log p(x|z*)``) and ``prior_nll`` (``-log p(z*)``, all levels), nats per
        image; ``prior_bits_per_code`` over all code positions; ``neg_elbo``, their sum; and the
        bound in bits/dim (:func:`vq_bits_per_dim`) as ``bits_per_dim`` for an 8-bit likelihood
        (``discretized_logistic``) or ``bits_per_dim_bernoulli`` for the Bernoulli likelihood
        (not comparable with 8-bit bits/dim); none for density likelihoods. ``limit`` scores a
        seeded random subset.
    """
    require(model, "codes", what="code_likelihood (for models with a continuous prior use likelihood)")
    if not model.capabilities.sample:
        raise ValueError(f"model {model.name!r} has no code prior attached: train one on its codes "
                         "(aelab train-prior RUN_DIR) and attach it with attach_prior(...)")
    data = random_subset(data, limit, seed=0)
    recon = prior = 0.0
    n, kind = 0, None
    with evaluation(model, 0) as device:
        for batch in eval_batches(data, batch_size):
            x = batch.x
            x = x.to(device)
            codes = model.encode_codes(x)
            codes = [codes] if isinstance(codes, Tensor) else list(codes)
            px_z = model.decode(model.codes_to_latent(codes))
            recon -= px_z.log_prob(x).double().sum().item()
            prior -= _prior_log_prob(model.prior, codes).sum().item()
            n += x.shape[0]
            if kind is None:  # checked on one image: the check scores all 256 levels of every pixel
                if is_discrete_8bit(model.decode(model.codes_to_latent([c[:1] for c in codes]))):
                    kind = "bits_per_dim"
                elif isinstance(px_z, Independent) and isinstance(px_z.base_dist, Bernoulli):
                    kind = "bits_per_dim_bernoulli"
                else:
                    kind = ""
    if n == 0:
        raise ValueError("code_likelihood: the split is empty")
    positions = sum(h * w for h, w in model.code_shapes)
    out = {"recon_nll": recon / n, "prior_nll": prior / n,
           "prior_bits_per_code": prior / n / (positions * math.log(2)), "neg_elbo": (recon + prior) / n}
    if kind:
        out[kind] = float(vq_bits_per_dim(recon / n, prior / n, tuple(data.shape)))
    return out


@METRICS.register("code_likelihood")
def code_likelihood(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """The VQ bound on -log p(x) of a VQ model with its code prior, on the test split.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`code_likelihood_metric`, which scores one split.
    """
    return code_likelihood_metric(model, splits.test, **options)
