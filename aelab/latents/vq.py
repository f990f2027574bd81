"""Vector quantization: a learned codebook, nearest-code lookup and straight-through gradients.

:class:`VectorQuantizer` maps encoder outputs ``z_e`` of shape ``(B, D, *S)`` (channels first, any
spatial shape ``S``) to their nearest codebook vectors and returns a :class:`Quantized`: the
quantised latents with straight-through gradients, the code indices, its own two auxiliary
losses per example (codebook and commitment) and codebook-health statistics. The model's
objective weights those losses like any other term.

The codebook learns either by gradient (the codebook loss) or, with ``ema=True``, by exponential
moving averages of the encoder outputs assigned to each code. In training mode the layer also
keeps usage counters, restarts dead codes and can initialise its codebook by k-means on the first
batch. All of that state lives in registered buffers, so ``state_dict`` (and therefore a
checkpoint) captures it and a resumed run continues exactly.

References:
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", NeurIPS 2017;
    Razavi, van den Oord & Vinyals, "Generating Diverse High-Fidelity Images with VQ-VAE-2",
    NeurIPS 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aelab.distributed import all_gather_cat, all_reduce_, broadcast_
from aelab.nn.kmeans import kmeans, squared_distances
from aelab.nn.precision import float32_region, upcast


@dataclass
class QuantizerConfig:
    """How a vector quantizer learns its codebook.

    Attributes:
        beta: weight of the commitment loss ``||z_e - sg[e]||^2`` (0.25 in van den Oord et al.).
        ema: update the codebook by exponential moving averages (no codebook loss) instead of by
            gradient descent on the codebook loss.
        decay: EMA decay gamma.
        eps: Laplace-smoothing constant of the EMA cluster sizes.
        dead_after: a code unused for this many consecutive training steps is dead (0: never).
            20 brings back the codes that go unused when the encoder moves fast early in training
            (with 100, a Fashion-MNIST VQ-VAE used 3 to 9 of 64 codes for its first 100 steps).
        restart_dead: re-initialise dead codes from random encoder outputs of the current batch.
        kmeans_init: initialise the codebook by k-means on the first training batch's encoder
            outputs (otherwise it stays at its uniform(-1/K, 1/K) initialisation).
        kmeans_iters: Lloyd iterations of that k-means.
    """

    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    eps: float = 1e-5
    dead_after: int = 20
    restart_dead: bool = True
    kmeans_init: bool = True
    kmeans_iters: int = 10

    def __post_init__(self) -> None:
        if self.beta < 0:
            raise ValueError(f"quantizer.beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"quantizer.decay must be in [0, 1), got {self.decay}")
        if self.eps <= 0:
            raise ValueError(f"quantizer.eps must be > 0, got {self.eps}")
        if self.dead_after < 0 or self.kmeans_iters < 0:
            raise ValueError("quantizer.dead_after and quantizer.kmeans_iters must be >= 0")


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook vector for each row of ``z``, ``(N, D) -> (N,)``.

    Example:
        >>> nearest_code(torch.tensor([[0.9, 0.0], [0.0, -2.0]]), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        tensor([0, 1])
    """
    return squared_distances(z, codebook).argmin(1)


def perplexity(counts: Tensor) -> Tensor:
    """``exp(H(p))`` of the usage distribution ``p = counts / sum(counts)``: K for uniform use of K
    codes, 1 when one code takes everything.

    Example:
        >>> perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])).item(), perplexity(torch.tensor([0.0, 7.0])).item()
        (4.0, 1.0)
    """
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum())  # xlogy: 0 log 0 = 0


@dataclass
class Quantized:
    """What :class:`VectorQuantizer` returns.

    Attributes:
        z_q: quantised latents ``(B, D, *S)``; in the forward pass the codebook vectors, in the
            backward pass the identity to ``z_e`` (straight-through).
        codes: code indices ``(B, *S)``.
        codebook_loss: ``||sg[z_e] - e||^2`` per example, summed over positions ``(B,)``; it
            moves only the codebook (and has no gradient at all with EMA updates).
        commitment_loss: ``||z_e - sg[e]||^2`` per example ``(B,)``; it moves only the encoder.
        stats: batch health, detached scalars: ``perplexity``, ``codes_used`` and (in training)
            ``dead_codes``, the codes unused for ``dead_after`` steps found at this step (and
            restarted, if ``restart_dead``).
    """

    z_q: Tensor
    codes: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    stats: dict[str, Tensor]


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization against a learned codebook of ``num_codes`` vectors.

    The codebook is a parameter (learned through the codebook loss) or, with ``cfg.ema``, a buffer
    updated from the assignments of each training batch:

    ``N_k <- g N_k + (1 - g) n_k``, ``m_k <- g m_k + (1 - g) sum_{i: k(i)=k} z_i``,
    ``e_k = m_k / N~_k`` with the Laplace-smoothed ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``.

    The statistics start from one pseudo-observation per code at its initial vector (``N_k = 1``,
    ``m_k = e_k``), so unused codes keep their place instead of being divided by ``eps``.

    Args:
        num_codes: codebook size K.
        dim: code dimension D (the channel dimension of the input).
        cfg: learning rule, dead-code and initialisation settings.

    Example:
        >>> vq = VectorQuantizer(16, 4).eval()
        >>> q = vq(torch.randn(2, 4, 3, 5))
        >>> q.z_q.shape, q.codes.shape, q.commitment_loss.shape
        (torch.Size([2, 4, 3, 5]), torch.Size([2, 3, 5]), torch.Size([2]))

    References:
        van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017 (EMA updates:
        appendix A.1); Razavi et al., "Generating Diverse High-Fidelity Images with VQ-VAE-2",
        NeurIPS 2019; Dhariwal et al., "Jukebox: A Generative Model for Music", 2020 (restarting
        dead codes from encoder outputs); Lancucki et al., "Robust Training of Vector Quantized
        Bottleneck Models", IJCNN 2020 (k-means initialisation).
    """

    codebook: Tensor

    def __init__(self, num_codes: int, dim: int, cfg: QuantizerConfig | None = None) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be >= 1, got {num_codes} and {dim}")
        self.num_codes, self.dim = num_codes, dim
        self.cfg = cfg = cfg or QuantizerConfig()
        init = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if cfg.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def lookup(self, codes: Tensor) -> Tensor:
        """Codebook vectors for indices ``(B, *S) -> (B, D, *S)``."""
        return F.embedding(codes, self.codebook).movedim(-1, 1)

    def forward(self, z_e: Tensor, update: bool | None = None) -> Quantized:
        """Quantise ``z_e`` ``(B, D, *S)``.

        Args:
            z_e: encoder outputs, channels first.
            update: change the layer's state (k-means initialisation on the first call, EMA
                codebook, usage counters, dead-code restarts); default: in training mode.
        """
        if torch.is_autocast_enabled(z_e.device.type):  # nearest codes and EMA statistics in float32
            with float32_region(z_e):
                return self(upcast(z_e), update)
        update = self.training if update is None else update
        b = z_e.shape[0]
        z = z_e.movedim(1, -1)  # (B, *S, D)
        flat = z.reshape(-1, self.dim)  # (N, D), N = B * prod(S)
        if update and not bool(self.initialised):
            self._initialise(all_gather_cat(flat.detach()))
        with torch.no_grad():
            codes = nearest_code(flat, self.codebook)  # (N,)
        e = F.embedding(codes, self.codebook)  # (N, D); with EMA a buffer: no gradient
        codebook_loss = (flat.detach() - e).pow(2).reshape(b, -1).sum(1)
        commitment_loss = (flat - e.detach()).pow(2).reshape(b, -1).sum(1)
        # straight-through: forward value exactly e (``flat - flat.detach()`` is exactly 0), gradient
        # d/dz_q passed unchanged to z_e and never to the codebook (which learns from its own loss)
        z_q = (e.detach() + (flat - flat.detach())).reshape(z.shape).movedim(-1, 1)
        counts = torch.bincount(codes, minlength=self.num_codes)  # (K,)
        stats = {"perplexity": perplexity(counts), "codes_used": (counts > 0).sum()}
        if update:  # under torchrun: from the statistics of the whole global batch (aelab.distributed)
            stats["dead_codes"] = self._update(flat.detach(), codes, all_reduce_(counts))
        return Quantized(z_q, codes.reshape(z.shape[:-1]), codebook_loss, commitment_loss, stats)

    # --- training-time state: initialisation, EMA, dead codes ---------------------------------
    @torch.no_grad()
    def _set_codes(self, index: Tensor, vectors: Tensor) -> None:
        """Place ``vectors`` at codebook rows ``index``, resetting their EMA statistics to one
        pseudo-observation (as at initialisation)."""
        self.codebook[index] = vectors
        if self.cfg.ema:
            self.embed_sum[index] = vectors
            self.cluster_size[index] = 1.0

    @torch.no_grad()
    def _initialise(self, z: Tensor) -> None:
        if self.cfg.kmeans_init:
            codebook = broadcast_(codebook_kmeans(z, self.num_codes, self.cfg.kmeans_iters))  # rank 0's draw
            self._set_codes(torch.arange(self.num_codes, device=z.device), codebook)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, z: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        """EMA codebook update, usage counters and dead-code restart; returns the dead-code count."""
        cfg = self.cfg
        if cfg.ema:
            sums = all_reduce_(torch.zeros_like(self.embed_sum).index_add_(0, codes, z))  # (K, D), all ranks
            self.cluster_size.mul_(cfg.decay).add_(counts.to(z.dtype), alpha=1 - cfg.decay)
            self.embed_sum.mul_(cfg.decay).add_(sums, alpha=1 - cfg.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + cfg.eps) / (total + self.num_codes * cfg.eps) * total
            self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if cfg.dead_after == 0:
            return torch.zeros((), dtype=torch.long, device=z.device)
        dead = (self.steps_unused >= cfg.dead_after).nonzero().squeeze(1)
        if cfg.restart_dead and len(dead):  # every rank finds the same dead codes (global counts)
            z = all_gather_cat(z)
            pick = broadcast_(torch.randint(z.shape[0], (len(dead),), device=z.device))  # rank 0's draw
            self._set_codes(dead, z[pick])
            self.steps_unused[dead] = 0
            self.restarts.add_(len(dead))
        return torch.tensor(len(dead), device=z.device)


def codebook_kmeans(z: Tensor, num_codes: int, iters: int) -> Tensor:
    """A k-means codebook for the rows of ``z``, ``(N, D) -> (num_codes, D)``: :func:`~aelab.nn.kmeans.kmeans`
    from ``num_codes`` random rows (torch's global RNG), ``iters`` Lloyd iterations, no restarts.

    Clusters that lose all their points keep their previous centroid.
    """
    return kmeans(z, num_codes, None, n_init=1, max_iter=iters, init="random", until_stable=False,
                  distances=squared_distances)[1]


def codebook_usage(counts: Tensor) -> dict[str, float]:
    """Health of a codebook from how often each code was chosen, ``(K,) -> dict``.

    Returns:
        ``perplexity`` (``exp`` of the usage entropy: K when all K codes are used equally, 1 when one
        code takes everything) and ``codes_used`` (codes chosen at least once).

    Example:
        >>> usage = codebook_usage(torch.tensor([3, 0, 3, 0]))
        >>> round(usage["perplexity"], 4), usage["codes_used"]
        (2.0, 2.0)
    """
    return {"perplexity": perplexity(counts).item(), "codes_used": float((counts > 0).sum())}
