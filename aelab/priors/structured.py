"""Structured priors that impose a shape on the latent space (Mathieu et al. 2019).

Each is a module whose ``forward()`` returns p(z) with event shape ``(D,)``; the VAE's KL term
uses an analytic KL where torch has one for the (posterior, prior) pair and a Monte-Carlo
estimate otherwise, so they plug into any aelab VAE with ``--set model.prior.name=...``.

References:
    Mathieu, Rainforth, Siddharth & Teh, "Disentangling Disentanglement in Variational
    Autoencoders", ICML 2019.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal, StudentT

from aelab.priors.base import PriorConfig
from aelab.registry import PRIORS


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@PRIORS.register("anisotropic")
class AnisotropicNormal(nn.Module):
    """N(0, diag(v)) with unequal variances summing to D: breaks the rotational symmetry of N(0, I).

    With an isotropic Gaussian prior the beta-VAE objective is invariant to rotations of the latent
    space, so nothing ties the axes to the data's factors; unequal variances remove that
    invariance. The variances are ``D * softmax(log_v)``: they keep the isotropic prior's total
    variance, also when learned (``prior.learn``).

    Example:
        >>> pz = AnisotropicNormal(4, PriorConfig(name="anisotropic", variances=(4, 2, 1, 1)))()
        >>> [round(v, 4) for v in pz.base_dist.variance.tolist()]
        [2.0, 1.0, 0.5, 0.5]
    """

    def __init__(self, latent_dim: int, cfg: PriorConfig) -> None:
        super().__init__()
        if cfg.variances:
            _check(len(cfg.variances) == latent_dim,
                   f"prior.variances has {len(cfg.variances)} entries but latent_dim is {latent_dim}")
            _check(all(v > 0 for v in cfg.variances), f"prior.variances must be > 0, got {cfg.variances}")
            rel = torch.tensor(cfg.variances, dtype=torch.float32)
        else:
            _check(0 < cfg.variance_ratio <= 1, f"prior.variance_ratio must be in (0, 1], got {cfg.variance_ratio}")
            rel = cfg.variance_ratio ** torch.linspace(0, 1, latent_dim)
        log_v = rel.log()
        if cfg.learn:
            self.log_v = nn.Parameter(log_v)
        else:
            self.register_buffer("log_v", log_v, persistent=False)
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        d = self.log_v.shape[0]
        scale = (d * torch.softmax(self.log_v, 0)).sqrt()
        return Independent(Normal(self.loc, scale, validate_args=False), 1)


@PRIORS.register("student_t")
class StudentTPrior(nn.Module):
    """Independent Student-t(df) per dimension: heavy tails that favour axis-aligned codes."""

    def __init__(self, latent_dim: int, cfg: PriorConfig) -> None:
        super().__init__()
        _check(cfg.df > 0, f"prior.df must be > 0, got {cfg.df}")
        self.register_buffer("df", torch.full((latent_dim,), float(cfg.df)), persistent=False)
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        return Independent(StudentT(self.df, self.loc, self.scale, validate_args=False), 1)


def spread_on_sphere(k: int, dim: int, radius: float = 1.0, candidates: int = 256, seed: int = 0) -> Tensor:
    """``k`` well-separated points on a sphere: farthest-point picks among seeded random candidates,
    then evened out by repulsion.

    Independent random directions can land close together (for 5 points on a circle, two were 23
    degrees apart with seed 0), which makes mixture components start merged; this spreads them
    (evenly on a circle) in any dimension, deterministically.

    Example:
        >>> p = spread_on_sphere(4, 2)
        >>> bool(torch.cdist(p, p).add(torch.eye(4) * 9).min() > 1.3)  # about sqrt(2) for a square
        True
    """
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(max(candidates, k) * k, dim, generator=g, dtype=torch.float64)
    pts = pts / pts.norm(dim=1, keepdim=True).clamp_min(1e-12)
    chosen = [0]
    dist = (pts - pts[0]).norm(dim=1)
    for _ in range(k - 1):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, (pts - pts[i]).norm(dim=1))
    x = pts[chosen]
    for _ in range(200):  # then even them out: a few steps of Coulomb repulsion, staying on the sphere
        diff = x[:, None] - x[None]  # (k, k, dim)
        force = (diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-6) ** 3).sum(1)
        x = x + 0.05 * force / force.norm(dim=1, keepdim=True).clamp_min(1.0)
        x = x / x.norm(dim=1, keepdim=True)
    return (radius * x).float()


@PRIORS.register("mixture")
class GaussianMixturePrior(nn.Module):
    """A mixture of K diagonal Gaussians, learnable (``prior.learn``): a clustered latent space.

    The means start well spread on a sphere of radius 2 (:func:`spread_on_sphere`: reproducible, distinct),
    scaled so components overlap little at ``prior.component_scale``.
    """

    def __init__(self, latent_dim: int, cfg: PriorConfig) -> None:
        super().__init__()
        _check(cfg.components >= 1, f"prior.components must be >= 1, got {cfg.components}")
        _check(cfg.component_scale > 0, f"prior.component_scale must be > 0, got {cfg.component_scale}")
        locs = spread_on_sphere(cfg.components, latent_dim, radius=2.0)
        params = {"logits": torch.zeros(cfg.components), "locs": locs,
                  "log_scales": torch.full((cfg.components, latent_dim), math.log(cfg.component_scale))}
        for name, value in params.items():
            if cfg.learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value, persistent=False)

    def forward(self) -> MixtureSameFamily:
        comp = Independent(Normal(self.locs, self.log_scales.exp(), validate_args=False), 1)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), comp, validate_args=False)


@PRIORS.register("sparse")
class SpikeAndSlabPrior(nn.Module):
    """Per dimension ``gamma * N(0, spike_scale^2) + (1 - gamma) * N(0, 1)``: most codes near zero.

    With the aggregate-posterior term (alpha > 0) this yields sparse codes (Mathieu et al. 2019,
    Sec. 5.2, gamma = 0.8 and spike scale 0.05 there).

    Example:
        >>> pz = SpikeAndSlabPrior(3, PriorConfig(name="sparse", gamma=0.8))()
        >>> pz.event_shape, round(pz.base_dist.variance[0].item(), 4)
        (torch.Size([3]), 0.202)
    """

    def __init__(self, latent_dim: int, cfg: PriorConfig) -> None:
        super().__init__()
        _check(0 <= cfg.gamma < 1, f"prior.gamma must be in [0, 1), got {cfg.gamma}")
        _check(cfg.spike_scale > 0, f"prior.spike_scale must be > 0, got {cfg.spike_scale}")
        probs = torch.tensor([cfg.gamma, 1 - cfg.gamma]).expand(latent_dim, 2).clone()
        self.register_buffer("probs", probs, persistent=False)
        self.register_buffer("loc", torch.zeros(latent_dim, 2), persistent=False)
        self.register_buffer("scale", torch.tensor([cfg.spike_scale, 1.0]).expand(latent_dim, 2).clone(),
                             persistent=False)

    def forward(self) -> Distribution:
        per_dim = MixtureSameFamily(Categorical(probs=self.probs, validate_args=False),
                                    Normal(self.loc, self.scale, validate_args=False), validate_args=False)
        return Independent(per_dim, 1)
