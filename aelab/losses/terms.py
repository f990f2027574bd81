"""Loss terms shared by all models. Each returns one value per example, shape ``(B,)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, kl_divergence

from aelab.outputs import ModelOutput


class ReconstructionNLL:
    """Negative log-likelihood of the clean input under the decoder, ``-log p(x|z)``.

    A likelihood distribution may offer ``nll(x)`` (the same value, without two negations).
    """

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        nll = getattr(out.px_z, "nll", None)
        return nll(out.x) if nll is not None else -out.px_z.log_prob(out.x)


class AuxLoss:
    """A loss a layer computed itself, read from ``out.aux[key]`` (per example, ``(B,)``).

    Layers such as the vector quantizer know their own auxiliary losses (codebook and commitment);
    this term hands them to the objective so they are weighted and logged like every other term.

    Args:
        key: the entry of ``ModelOutput.aux`` holding the per-example values.

    References:
        van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017 (the
        codebook loss ``||sg[z_e] - e||^2`` and the commitment loss ``||z_e - sg[e]||^2``).
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        if self.key not in out.aux:
            raise ValueError(f"this term needs {self.key!r} in the model output's aux (a VQ model's forward sets it)")
        return out.aux[self.key]


def bernoulli_kl(rho: float, rho_hat: Tensor, eps: float = 1e-6) -> Tensor:
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)) elementwise."""
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


class SparsityKL:
    """The sparse-autoencoder penalty ``sum_j KL(rho || rho_hat_j)``.

    ``rho_hat_j`` is the mean activation of code j over the batch, so the penalty is a property of
    the batch, not of one example; it is returned broadcast to ``(B,)`` so that the objective's mean
    gives it back unchanged. Codes must lie in (0, 1) (sigmoid codes).

    References:
        Ng, "Sparse autoencoder", CS294A lecture notes, 2011.
    """

    def __init__(self, rho: float) -> None:
        if not 0.0 < rho < 1.0:
            raise ValueError(f"sparsity target rho must be in (0, 1), got {rho}")
        self.rho = rho

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        rho_hat = out.z.mean(0)  # (D,)
        return bernoulli_kl(self.rho, rho_hat).sum().expand(out.z.shape[0])


def encoder_jacobian_sq_norm(encode, x: Tensor, create_graph: bool | None = None) -> Tensor:
    """``||d encode(x) / dx||_F^2`` per example, ``(B,)``, exactly (one batched VJP per code).

    Args:
        encode: maps ``(B, ...) -> (B, D)`` with examples independent of each other.
        x: inputs; a fresh leaf requiring grad is made from them.
        create_graph: keep the graph so the penalty can be trained through (default: whenever
            gradients are enabled by the caller; under ``no_grad`` only the value is computed).
    """
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    with torch.enable_grad():  # the penalty itself is a derivative, also at evaluation time
        x = x.detach().requires_grad_(True)
        h = encode(x)  # (B, D)
        d = h.shape[1]
        # row j of the Jacobian for every example at once: VJP with the one-hot e_j, batched over j
        basis = torch.eye(d, dtype=h.dtype, device=h.device).unsqueeze(1).expand(d, *h.shape)
        (rows,) = torch.autograd.grad(h, x, basis, is_grads_batched=True, create_graph=create_graph)
    penalty = rows.pow(2).flatten(2).sum(-1).sum(0)  # (D, B, ...) -> (B,)
    return penalty if create_graph else penalty.detach()


class ContractivePenalty:
    """The contractive-autoencoder penalty ``||J_f(x)||_F^2``, f the encoder up to the codes.

    Computed exactly with automatic differentiation, so it holds for any encoder (MLP or conv).

    References:
        Rifai et al., "Contractive Auto-Encoders: Explicit Invariance During Feature Extraction",
        ICML 2011.
    """

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        return encoder_jacobian_sq_norm(lambda x: model.encode(x).mean, out.x_in)


def kl_per_example(qz_x: Distribution, pz: Distribution, z: Tensor, monte_carlo: bool = False) -> Tensor:
    """KL(q(z|x) || p(z)) per example, ``(B,)``.

    Analytic wherever torch has a registered formula for the pair of types; otherwise (or when
    ``monte_carlo``) the one-sample estimate ``log q(z|x) - log p(z)`` at the reparameterised
    sample ``z`` the decoder saw. No prior is special-cased.
    """
    if not monte_carlo:
        try:
            return kl_divergence(qz_x, pz)
        except NotImplementedError:
            pass
    return qz_x.log_prob(z) - pz.log_prob(z)


def kl_per_dimension(qz_x: Distribution, pz: Distribution, z: Tensor, monte_carlo: bool = False) -> Tensor:
    """KL per latent dimension, ``(B, D)``, for factorised q and p (``Independent`` of 1-D laws)."""
    if not (isinstance(qz_x, Independent) and isinstance(pz, Independent)):
        raise ValueError(
            f"a per-dimension KL needs factorised q(z|x) and p(z); got {type(qz_x).__name__} and "
            f"{type(pz).__name__} (use free bits on the total instead)"
        )
    q, p = qz_x.base_dist, pz.base_dist
    if not monte_carlo:
        try:
            return kl_divergence(q, p).expand(z.shape)
        except NotImplementedError:
            pass
    return q.log_prob(z) - p.log_prob(z)


class KLDivergence:
    """``KL(q(z|x) || p(z))`` per example, optionally with free bits.

    Args:
        monte_carlo: use the sampled estimate even where an analytic KL exists.
        free_bits: ``lambda`` in nats; 0 disables. Per dimension (``"dim"``) the penalty is
            ``sum_j max(lambda, E_batch[KL_j])``; on the total (``"total"``) it is
            ``max(lambda, E_batch[KL])``. Below the threshold the KL gets no gradient, which keeps
            the encoder from collapsing onto the prior early in training. The clamp acts on the
            batch mean, so the per-example values returned average to it exactly.

    References:
        Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016 (free bits, appendix C.8).
    """

    def __init__(self, monte_carlo: bool = False, free_bits: float = 0.0, free_bits_mode: str = "dim") -> None:
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        if free_bits_mode not in ("dim", "total"):
            raise ValueError(f"free_bits_mode must be 'dim' or 'total', got {free_bits_mode!r}")
        self.monte_carlo, self.free_bits, self.mode = monte_carlo, free_bits, free_bits_mode

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        if out.pz is None:
            raise ValueError("the KL term needs a model with a prior")
        if self.free_bits == 0.0:
            return kl_per_example(out.qz_x, out.pz, out.z, self.monte_carlo)
        if self.mode == "total":
            kl = kl_per_example(out.qz_x, out.pz, out.z, self.monte_carlo)
            return free_bits_clamp(kl.unsqueeze(-1), self.free_bits).squeeze(-1)
        kl = kl_per_dimension(out.qz_x, out.pz, out.z, self.monte_carlo)
        return free_bits_clamp(kl, self.free_bits).sum(-1)


def free_bits_clamp(kl: Tensor, threshold: float) -> Tensor:
    """Per-example values ``(B, G)`` whose batch mean is ``max(threshold, mean_b kl[:, g])``.

    Groups whose batch-mean KL is below the threshold are replaced by the constant threshold
    (no gradient); the others pass through unchanged.
    """
    active = kl.mean(0, keepdim=True) > threshold
    return torch.where(active, kl, torch.full_like(kl, threshold))


def imq_mmd_per_dimension(x: Tensor, y: Tensor, scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)) -> Tensor:
    """Unbiased MMD^2 between samples ``x`` and ``y`` ``(B, D)``, one value per dimension ``(D,)``.

    Kernel: inverse multiquadric ``k(a, b) = C / (C + (a - b)^2)`` summed over ``C = 2 * s`` for each
    scale ``s`` (heavy tails keep gradients alive when the two samples are far apart).

    References:
        Tolstikhin et al., "Wasserstein Auto-Encoders", ICLR 2018 (IMQ kernel);
        Mathieu et al., "Disentangling Disentanglement in VAEs", ICML 2019 (dimension-wise MMD).
    """
    b = x.shape[0]
    if b < 2:
        raise ValueError("the MMD estimate needs a batch of at least 2")
    dxx = (x[:, None] - x[None]).pow(2)  # (B, B, D)
    dyy = (y[:, None] - y[None]).pow(2)
    dxy = (x[:, None] - y[None]).pow(2)
    total = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    for s in scales:
        c = 2.0 * s
        # the diagonal (i = j, distance 0) adds exactly b * k(0) = b: subtracted instead of masked
        kxx = ((c / (c + dxx)).sum((0, 1)) - b) / (b * (b - 1))
        kyy = ((c / (c + dyy)).sum((0, 1)) - b) / (b * (b - 1))
        kxy = (c / (c + dxy)).sum((0, 1)) / (b * b)
        total = total + kxx + kyy - 2.0 * kxy
    return total


def aggregate_log_density(qz_x: Distribution, z: Tensor) -> Tensor:
    """``log q(z_i)`` for the minibatch aggregate posterior ``q(z) = 1/B sum_j q(z|x_j)``, ``(B,)``."""
    b = z.shape[0]
    log_q = qz_x.log_prob(z[:, None])  # (B_i, B_j): sample i under posterior j
    return torch.logsumexp(log_q, dim=1) - math.log(b)


class AggregatePosteriorDivergence:
    """``D(q(z), p(z))`` between the aggregate posterior and the prior, a batch-level quantity.

    Args:
        kind: ``mmd``: the dimension-wise MMD with an IMQ kernel at several scales between the
            batch's posterior samples (one per x: samples of q(z)) and as many prior samples, summed
            over dimensions. ``aggregate_kl``: the minibatch estimate ``mean_i [log q(z_i) - log p(z_i)]``
            with ``log q(z_i) = logsumexp_j log q(z_i|x_j) - log B``; it is biased (the minibatch
            mixture stands in for the data-set mixture) but consistent as B grows.
        scales: IMQ kernel scales for ``mmd``.

    Returned broadcast to ``(B,)`` so the objective's batch mean gives it back unchanged.

    References:
        Mathieu, Rainforth, Siddharth & Teh, "Disentangling Disentanglement in Variational
        Autoencoders", ICML 2019.
    """

    def __init__(self, kind: str = "mmd", scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)) -> None:
        if kind not in ("mmd", "aggregate_kl"):
            raise ValueError(f"divergence must be 'mmd' or 'aggregate_kl', got {kind!r}")
        self.kind, self.scales = kind, scales

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        if out.pz is None:
            raise ValueError("the aggregate-posterior divergence needs a model with a prior")
        b = out.z.shape[0]
        if self.kind == "mmd":
            prior = out.pz.rsample((b,)) if out.pz.has_rsample else out.pz.sample((b,))
            value = imq_mmd_per_dimension(out.z, prior, self.scales).sum()
        else:
            value = (aggregate_log_density(out.qz_x, out.z) - out.pz.log_prob(out.z)).mean()
        return value.expand(b)


class BagOfWordsNLL:
    """The bag-of-words loss: ``-sum_t log softmax(f(z))[x_t]`` over a sentence's words.

    ``f`` is an MLP from the latent to one logit per vocabulary entry, computed by the model into
    ``out.aux["bow_logits"]`` ``(B, V)``; the term scores every word of the target sentence
    ``out.x`` ``(B, T)`` under that one distribution, order ignored, each occurrence counted.
    Because ``f`` sees nothing but ``z``, the only way to lower the loss is a ``z`` that carries
    the sentence's content, whatever the autoregressive decoder does.

    Args:
        ignore: token ids that are not words (padding, end of sentence).

    References:
        Zhao, Zhao & Eskenazi, "Learning Discourse-level Diversity for Neural Dialog Models using
        Conditional Variational Autoencoders", ACL 2017.
    """

    def __init__(self, ignore: tuple[int, ...] = ()) -> None:
        self.ignore = tuple(ignore)

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        if "bow_logits" not in out.aux:
            raise ValueError("the bag-of-words term needs out.aux['bow_logits'] (a text VAE with bow_weight > 0)")
        log_p = torch.log_softmax(out.aux["bow_logits"].float(), -1)  # (B, V)
        words = torch.ones_like(out.x, dtype=torch.bool)
        for i in self.ignore:
            words &= out.x.ne(i)
        picked = log_p.gather(1, out.x)  # (B, T)
        return -(picked * words).sum(1)


def minibatch_mutual_information(qz_x: Distribution, z: Tensor) -> Tensor:
    """``I_q(x; z)`` on one batch: ``mean_i [log q(z_i|x_i) - log (1/B) sum_j q(z_i|x_j)]``, a scalar.

    The estimator He et al. (2019) track during training (at most ``log B``); the evaluation
    metric :func:`aelab.metrics.latent.mutual_information` is the same estimate over a split.
    """
    return (qz_x.log_prob(z) - aggregate_log_density(qz_x, z)).mean()
