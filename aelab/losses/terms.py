"""Loss terms shared by all models. Each returns one value per example, shape ``(B,)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, Independent, kl_divergence
from torch.func import functional_call

from aelab.losses.objective import StepTerm
from aelab.nn.backbones import activation_derivative
from aelab.outputs import ModelOutput
from aelab.schedules import Schedule


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


def encoder_jacobian_sq_norm_hutchinson(encode, x: Tensor, samples: int = 1,
                                        create_graph: bool | None = None) -> Tensor:
    """An unbiased estimate of ``||d encode(x) / dx||_F^2`` per example, ``(B,)``, from ``samples`` VJPs.

    ``||J||_F^2 = tr(J J^T) = E_v ||J^T v||^2`` for any probe with ``E[v v^T] = I``; the probes are
    Rademacher vectors (entries +-1), drawn from torch's global RNG independently for every example
    and sample, and the estimate is the mean of ``||J^T v||^2`` over the samples. Each sample costs
    one VJP, against ``D`` for :func:`encoder_jacobian_sq_norm`. With ``A = J J^T`` (``D x D``) the
    variance of the estimate is ``2 sum_{i != j} A_ij^2 / samples``: zero when the rows of J are
    orthogonal, and at most ``2 (||J||_F^4 - sum_i A_ii^2) / samples`` (Gaussian probes would add
    ``2 sum_i A_ii^2 / samples`` on top). The gradient of the estimate is an unbiased estimate of
    the penalty's gradient, so SGD on it descends the same objective with more noise.

    Args:
        encode: maps ``(B, ...) -> (B, D)`` with examples independent of each other.
        x: inputs; a fresh leaf requiring grad is made from them.
        samples: number of probes per example.
        create_graph: as in :func:`encoder_jacobian_sq_norm`.

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", Communications in Statistics - Simulation and Computation, 1989.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        h = encode(x)  # (B, D)
        v = torch.randint(0, 2, (samples, *h.shape), device=h.device).to(h.dtype).mul_(2).sub_(1)
        if samples == 1:
            (g,) = torch.autograd.grad(h, x, v[0], create_graph=create_graph)
            g = g.unsqueeze(0)
        else:
            (g,) = torch.autograd.grad(h, x, v, is_grads_batched=True, create_graph=create_graph)
    estimate = g.pow(2).flatten(2).sum(-1).mean(0)  # (S, B, ...) -> (B,)
    return estimate if create_graph else estimate.detach()


def affine_code_jacobian_sq_norm(linear: nn.Linear, activation: nn.Module, x: Tensor) -> Tensor:
    """``||J||_F^2`` per example, ``(B,)``, in closed form for codes ``h = s(W x + b)``.

    ``J = diag(s'(a)) W`` with ``a = W x + b``, so ``||J||_F^2 = sum_j s'(a_j)^2 ||W_j||^2``: one
    forward product and no backward pass. ``x`` ``(B, ...)`` is flattened (images included); ``s``
    is elementwise with a derivative in :data:`aelab.nn.backbones.ACTIVATION_DERIVATIVES`.

    References:
        Rifai et al., "Contractive Auto-Encoders: Explicit Invariance During Feature Extraction",
        ICML 2011 (Section 3, the sigmoid case).
    """
    derivative = activation_derivative(activation)
    if derivative is None:
        raise ValueError(f"no derivative is known for the activation {type(activation).__name__}")
    a = linear(x.flatten(1))  # (B, D)
    return (derivative(a).pow(2) * linear.weight.pow(2).sum(1)).sum(1)


class ContractivePenalty:
    """The contractive-autoencoder penalty ``||J_f(x)||_F^2``, f the encoder up to the codes.

    Args:
        jacobian: how the penalty is computed.
            ``auto``: in closed form (:func:`affine_code_jacobian_sq_norm`) when the model says its
            encoder is one affine layer and an elementwise activation (``model.code_layer()``),
            else exactly with automatic differentiation (any encoder, MLP or conv; ``D`` VJPs).
            ``exact``: always automatic differentiation.
            ``hutchinson``: while training (gradients enabled), the unbiased estimate of
            :func:`encoder_jacobian_sq_norm_hutchinson` with ``samples`` VJPs; under ``no_grad``
            (evaluation) the exact value, closed form where ``auto`` would use it, so logged
            evaluation losses are comparable between modes and draw nothing from the RNG.
        samples: probes per example for ``hutchinson``.

    References:
        Rifai et al., "Contractive Auto-Encoders: Explicit Invariance During Feature Extraction",
        ICML 2011.
    """

    MODES = ("auto", "exact", "hutchinson")

    def __init__(self, jacobian: str = "auto", samples: int = 1) -> None:
        if jacobian not in self.MODES:
            raise ValueError(f"jacobian must be one of {', '.join(self.MODES)}, got {jacobian!r}")
        if samples < 1:
            raise ValueError(f"jacobian samples must be >= 1, got {samples}")
        self.jacobian, self.samples = jacobian, samples

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        encode = lambda x: model.encode(x).mean  # noqa: E731
        if self.jacobian == "hutchinson" and torch.is_grad_enabled():
            return encoder_jacobian_sq_norm_hutchinson(encode, out.x_in, self.samples)
        layer = model.code_layer() if self.jacobian != "exact" else None
        if layer is not None:
            return affine_code_jacobian_sq_norm(*layer, out.x_in)
        return encoder_jacobian_sq_norm(encode, out.x_in)


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


MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _imq_pair_sums(a: Tensor, b: Tensor, scales: tuple[float, ...], chunk: int,
                   grads: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``sum_{i,j} k(a_i - b_j)`` per dimension ``(D,)`` with ``k`` the IMQ kernel summed over the
    scales, and (when ``grads``) its derivatives' sums ``row_i = sum_j k'(a_i - b_j)`` ``(B_a, D)`` and
    ``col_j = sum_i k'(a_i - b_j)`` ``(B_b, D)``, over blocks of ``chunk`` rows of ``a``.

    ``k_c(u) = c / (c + u^2)`` has ``k_c'(u) = -2 u k_c(u)^2 / c``, so both come from the same block.
    Temporaries: four ``(chunk, B_b, D)`` blocks at a time.
    """
    value = a.new_zeros(a.shape[1])
    row = torch.empty_like(a) if grads else None
    col = torch.zeros_like(b) if grads else None
    for start in range(0, a.shape[0], chunk):
        u = a[start:start + chunk, None] - b[None]  # (chunk, B_b, D)
        u2 = u.square()
        slope = torch.zeros_like(u) if grads else None  # sum_c k_c^2 / c
        for s in scales:
            c = 2.0 * s
            k = (u2 + c).reciprocal_().mul_(c)
            value += k.sum((0, 1))
            if grads:
                slope.addcmul_(k, k, value=1.0 / c)
            del k
        if grads:
            kp = slope.mul_(u).mul_(-2.0)  # k'(u), in place of the slope block
            row[start:start + chunk] = kp.sum(1)
            col += kp.sum(0)
    return value, row, col


class _ChunkedIMQMMD(torch.autograd.Function):
    """The dimension-wise IMQ MMD^2 of :func:`imq_mmd_per_dimension` with its gradient computed in
    the same blocked pass and kept as two ``(B, D)`` tensors: each output ``d`` depends only on
    column ``d`` of x and y, so the vector-Jacobian product is ``grad_out[d] * dMMD_d/dx_id``."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scales: tuple[float, ...], chunk: int) -> Tensor:
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        b, n = x.shape[0], float(len(scales))
        sxx, rxx, cxx = _imq_pair_sums(x, x, scales, chunk, grads)
        syy, ryy, cyy = _imq_pair_sums(y, y, scales, chunk, grads)
        sxy, rxy, cxy = _imq_pair_sums(x, y, scales, chunk, grads)
        # the diagonal (i = j, distance 0) adds exactly b * k(0) = b per scale: subtracted instead of masked
        within, between = 1.0 / (b * (b - 1)), 1.0 / (b * b)
        mmd = (sxx - b * n) * within + (syy - b * n) * within - 2.0 * between * sxy
        if grads:  # d sum_ij k(a_i - b_j) / d a_i = row_i, / d b_j = -col_j
            ctx.save_for_backward((rxx - cxx) * within - 2.0 * between * rxy,
                                  (ryy - cyy) * within + 2.0 * between * cxy)
        return mmd

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        dx, dy = ctx.saved_tensors
        return (dx * grad if ctx.needs_input_grad[0] else None,
                dy * grad if ctx.needs_input_grad[1] else None, None, None)


def imq_mmd_per_dimension(x: Tensor, y: Tensor, scales: tuple[float, ...] = MMD_SCALES, chunk: int = 64) -> Tensor:
    """Unbiased MMD^2 between samples ``x`` and ``y`` ``(B, D)``, one value per dimension ``(D,)``.

    Kernel: inverse multiquadric ``k(a, b) = C / (C + (a - b)^2)`` summed over ``C = 2 * s`` for each
    scale ``s`` (heavy tails keep gradients alive when the two samples are far apart).

    The pairwise differences are formed ``chunk`` rows at a time and the gradient is computed in
    the same pass (a custom autograd function), so the extra memory is ``O(chunk * B * D)`` in the
    forward pass and ``O(B * D)`` is kept for the backward, where the direct formula holds several
    ``(B, B, D)`` tensors per scale for autograd (at B = 500, D = 64: 64 MB each). The value and
    gradient are the direct formula's up to the order of floating-point sums; ``chunk`` only trades
    memory for the number of blocks. Differentiable once (no double backward).

    Args:
        x: samples ``(B, D)``.
        y: samples ``(B, D)``.
        scales: kernel scales ``s``.
        chunk: rows of x (or y) per block; ``chunk >= B`` is one block.

    References:
        Tolstikhin et al., "Wasserstein Auto-Encoders", ICLR 2018 (IMQ kernel);
        Mathieu et al., "Disentangling Disentanglement in VAEs", ICML 2019 (dimension-wise MMD).
    """
    b = x.shape[0]
    if b < 2:
        raise ValueError("the MMD estimate needs a batch of at least 2")
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"the MMD needs two samples of the same shape (B, D), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _ChunkedIMQMMD.apply(x, y, tuple(float(s) for s in scales), chunk)


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

    def __init__(self, kind: str = "mmd", scales: tuple[float, ...] = MMD_SCALES) -> None:
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


# --- the regularisers of the disentanglement_lib study ------------------------------------------

def kl_decomposition(qz_x: Distribution, z: Tensor, pz: Distribution,
                     dataset_size: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The KL term split into index-code MI, total correlation and dimension-wise KL, per example.

    With ``B`` factorised posteriors ``q(z|x_j)`` and one sample ``z_i ~ q(z|x_i)`` each, the
    aggregate posterior and its marginals are estimated on the batch,
    ``log q(z_i) = logsumexp_j log q(z_i|x_j) - log M`` and
    ``log q(z_il) = logsumexp_j log q(z_il|x_j) - log M``, and

    - ``mi_i = log q(z_i|x_i) - log q(z_i)`` (index-code mutual information),
    - ``tc_i = log q(z_i) - sum_l log q(z_il)`` (total correlation),
    - ``dim_kl_i = sum_l log q(z_il) - log p(z_i)`` (dimension-wise KL when p factorises),

    so ``mi + tc + dim_kl = log q(z_i|x_i) - log p(z_i)`` exactly, a one-sample estimate of the
    KL term. ``dataset_size=0``: ``M = B``, q(z) is the minibatch mixture
    ``1/B sum_j q(z|x_j)``, and each part is an unbiased estimate of that mixture's MI, TC and
    dimension-wise KL (the TC is >= 0 in expectation). ``dataset_size=N``: ``M = N B``, Chen et
    al.'s minibatch-weighted sampling (MWS) as written in their paper and code. The normaliser is
    a constant: it moves the values (TC by ``(D - 1) log N``), never the gradients.
    disentanglement_lib's ``total_correlation`` drops it altogether (its value is this TC minus
    ``(D - 1) log B``).

    Args:
        qz_x: ``Independent`` over the last dimension, batch shape ``(B,)``.
        z: samples ``(B, D)``, ``z_i`` from ``q(z|x_i)``.
        pz: the prior.
        dataset_size: N for the MWS normaliser; 0 for the minibatch mixture.

    Returns:
        ``(mi, tc, dim_kl)``, each ``(B,)``.

    References:
        Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in Variational
        Autoencoders", NeurIPS 2018; Hoffman & Johnson, "ELBO surgery", NeurIPS workshop 2016.

    Example:
        >>> from torch.distributions import Normal
        >>> q = Independent(Normal(torch.randn(8, 3), torch.ones(8, 3)), 1)
        >>> p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
        >>> z = q.sample()
        >>> mi, tc, dim_kl = kl_decomposition(q, z, p)
        >>> torch.allclose(mi + tc + dim_kl, q.log_prob(z) - p.log_prob(z), atol=1e-5)
        True
    """
    if not (isinstance(qz_x, Independent) and qz_x.reinterpreted_batch_ndims == 1 and z.dim() == 2):
        raise ValueError(f"the KL decomposition needs a factorised q(z|x) (Independent over the last dimension) "
                         f"and codes (B, D); got {type(qz_x).__name__} and codes {tuple(z.shape)}")
    if dataset_size < 0:
        raise ValueError(f"dataset_size must be >= 0 (0: the minibatch mixture), got {dataset_size}")
    b = z.shape[0]
    log_norm = math.log(b * dataset_size) if dataset_size else math.log(b)
    log_q = qz_x.base_dist.log_prob(z[:, None])  # (B_i, B_j, D): log q(z_il | x_j)
    log_qz = torch.logsumexp(log_q.sum(-1), dim=1) - log_norm  # (B,)
    log_qz_dims = (torch.logsumexp(log_q, dim=1) - log_norm).sum(-1)  # (B,): sum_l log q(z_il)
    return qz_x.log_prob(z) - log_qz, log_qz - log_qz_dims, log_qz_dims - pz.log_prob(z)


class KLDecomposition:
    """One part of the KL decomposition of :func:`kl_decomposition`, per example.

    beta-TCVAE weights the ``tc`` part by ``beta - 1`` on top of the VAE's KL; the other parts,
    at weight 0, are computed for the evaluation logs only.

    Args:
        part: ``mi``, ``tc`` or ``dim_kl``.
        dataset_size: 0 (the minibatch mixture) or N (minibatch-weighted sampling); see
            :func:`kl_decomposition`.

    References:
        Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in Variational
        Autoencoders", NeurIPS 2018.
    """

    PARTS = ("mi", "tc", "dim_kl")

    def __init__(self, part: str = "tc", dataset_size: int = 0) -> None:
        if part not in self.PARTS:
            raise ValueError(f"part must be one of {', '.join(self.PARTS)}, got {part!r}")
        if dataset_size < 0:
            raise ValueError(f"dataset_size must be >= 0 (0: the minibatch mixture), got {dataset_size}")
        self.part, self.dataset_size = part, dataset_size

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        if out.pz is None:
            raise ValueError("the KL decomposition needs a model with a prior")
        parts = kl_decomposition(out.qz_x, out.z, out.pz, self.dataset_size)
        return parts[self.PARTS.index(self.part)]


def permute_dims(z: Tensor) -> Tensor:
    """Each column of ``z`` ``(B, D)`` shuffled across the batch by a permutation of its own.

    Rows of the result are samples of the product of the marginals ``prod_l q(z_l)`` when the
    rows of ``z`` are samples of ``q(z)``. Draws from torch's RNG (saved with a checkpoint).

    References:
        Kim & Mnih, "Disentangling by Factorising", ICML 2018 (Algorithm 1).

    Example:
        >>> z = torch.arange(12.0).view(4, 3)
        >>> bool((permute_dims(z).sort(0).values == z).all())
        True
    """
    order = torch.rand(z.shape, device=z.device).argsort(0)  # (B, D): an independent permutation per column
    return z.gather(0, order)


def frozen_call(module: nn.Module, *args: Tensor) -> Tensor:
    """``module(*args)`` with the module's parameters detached: gradients reach the inputs only."""
    return functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, args)


class DensityRatioTC:
    """FactorVAE's total-correlation estimate: a discriminator's logit at the posterior samples.

    A discriminator trained to tell samples of ``q(z)`` (label 1) from samples of
    ``prod_l q(z_l)`` (label 0) has logit ``d(z) = log D(z) / (1 - D(z)) ~ log q(z) / prod_l
    q(z_l)``, so ``mean_i d(z_i)`` estimates ``TC = KL(q(z) || prod_l q(z_l))`` (the
    density-ratio trick). The discriminator's parameters are detached here: this term trains the
    encoder, never the discriminator (that is :class:`DiscriminatorLoss`'s job).

    Args:
        discriminator: maps codes ``(B, D)`` to one logit each ``(B, 1)``.

    References:
        Kim & Mnih, "Disentangling by Factorising", ICML 2018; disentanglement_lib's two-logit
        form ``logits[:, 0] - logits[:, 1]`` is this logit.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        self.discriminator = discriminator

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        return frozen_call(self.discriminator, out.z)[:, 0]


class DiscriminatorLoss:
    """FactorVAE's discriminator loss, per example:
    ``0.5 * (-log sigmoid(d(z_i)) - log(1 - sigmoid(d(z~_i))))``.

    ``z`` are the batch's posterior samples (samples of q(z)) and ``z~ =``
    :func:`permute_dims` of them (samples of ``prod_l q(z_l)``), the same batch's codes
    permuted, as disentanglement_lib does (Kim & Mnih permute a second batch's codes). The
    codes are detached: this term trains the discriminator, never the encoder. Its batch mean
    is disentanglement_lib's ``-discriminator_loss``.

    Args:
        discriminator: maps codes ``(B, D)`` to one logit each ``(B, 1)``.

    References:
        Kim & Mnih, "Disentangling by Factorising", ICML 2018.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        self.discriminator = discriminator

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        z = out.z.detach()
        real = self.discriminator(z)[:, 0]
        fake = self.discriminator(permute_dims(z))[:, 0]
        # -log sigmoid(a) = softplus(-a), -log(1 - sigmoid(a)) = softplus(a)
        return 0.5 * (nn.functional.softplus(-real) + nn.functional.softplus(fake))


def dip_covariance(qz_x: Distribution, kind: str) -> Tensor:
    """DIP-VAE's covariance ``(D, D)`` on a batch: ``Cov[mu(x)]`` (``kind="i"``) or the covariance
    of q(z), ``E[Cov_q(z|x)] + Cov[mu(x)]`` (``kind="ii"``), expectations over the batch (divided
    by B, as disentanglement_lib does)."""
    if kind not in ("i", "ii"):
        raise ValueError(f"DIP-VAE kind must be 'i' or 'ii', got {kind!r}")
    mu = qz_x.mean  # (B, D)
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / mu.shape[0]
    if kind == "ii":
        cov = cov + torch.diag(qz_x.variance.mean(0))  # a factorised q(z|x): diagonal covariances
    return cov


class DIPCovariancePenalty:
    """One half of DIP-VAE's moment matching of a covariance C to the identity (a batch-level penalty).

    ``off_diagonal``: ``sum_{i != j} C_ij^2``; ``diagonal``: ``sum_i (C_ii - 1)^2``; the model
    weights them by ``lambda_od`` and ``lambda_d``. C is :func:`dip_covariance`. Returned
    broadcast to ``(B,)`` so the objective's batch mean gives it back unchanged.

    Args:
        kind: ``i`` (the covariance of the encoder means) or ``ii`` (the covariance of q(z)).
        part: ``off_diagonal`` or ``diagonal``.

    References:
        Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled Latent Concepts
        from Unlabeled Observations", ICLR 2018 (equations 6 and 7).
    """

    def __init__(self, kind: str = "i", part: str = "off_diagonal") -> None:
        if kind not in ("i", "ii"):
            raise ValueError(f"DIP-VAE kind must be 'i' or 'ii', got {kind!r}")
        if part not in ("off_diagonal", "diagonal"):
            raise ValueError(f"part must be 'off_diagonal' or 'diagonal', got {part!r}")
        self.kind, self.part = kind, part

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        cov = dip_covariance(out.qz_x, self.kind)
        diag = cov.diagonal()
        off = self.part == "off_diagonal"
        value = (cov - torch.diag(diag)).pow(2).sum() if off else (diag - 1.0).pow(2).sum()
        return value.expand(out.z.shape[0])


class CapacityKL(StepTerm):
    """The controlled-capacity penalty ``|mean_b KL(q(z|x_b) || p(z)) - C(step)|``.

    The capacity ``C`` is a schedule of the step (linear from 0 to ``c_max`` in Burgess et al.),
    at its final value at evaluation. As in disentanglement_lib the absolute value is taken of
    the batch-mean KL; the per-example values returned, ``s * (KL_b - C)`` with
    ``s = sign(mean_b KL_b - C)`` (no gradient), average to it exactly and have its gradient.

    Args:
        capacity: ``C`` as a schedule of the step, in nats.
        monte_carlo: use the sampled KL even where an analytic KL exists.

    References:
        Burgess et al., "Understanding disentangling in beta-VAE", NeurIPS workshop 2017
        (arXiv:1804.03599, equation 8).

    Example:
        >>> from aelab.schedules import parse_schedule
        >>> term = CapacityKL(parse_schedule("linear(0, 25, 1000)"))
        >>> term.capacity(500), term.capacity(None)
        (12.5, 25.0)
    """

    def __init__(self, capacity: Schedule, monte_carlo: bool = False) -> None:
        self.capacity, self.monte_carlo = capacity, monte_carlo

    def __call__(self, out: ModelOutput, model: nn.Module, step: int | None) -> Tensor:
        if out.pz is None:
            raise ValueError("the capacity term needs a model with a prior")
        gap = kl_per_example(out.qz_x, out.pz, out.z, self.monte_carlo) - self.capacity(step)
        return gap * gap.detach().mean().sign()
