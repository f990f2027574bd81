"""Loss terms shared by all models. Each returns one value per example, shape ``(B,)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aelab.outputs import ModelOutput


class ReconstructionNLL:
    """Negative log-likelihood of the clean input under the decoder, ``-log p(x|z)``."""

    def __call__(self, out: ModelOutput, model: nn.Module) -> Tensor:
        return -out.px_z.log_prob(out.x)


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
