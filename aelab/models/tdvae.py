"""TD-VAE: a belief state that predicts the future, trained on pairs of time points, rolled out in jumps.

The Temporal Difference VAE (Gregor et al. 2019) reads a sequence ``x_1..x_T`` with a frame
encoder and an LSTM whose state ``b_t`` (the *belief*) depends only on ``x_<=t``. Its latent state
``z_t`` has two layers (top first); every conditional below is a diagonal Gaussian per layer, the
lower layer also conditioned on the upper one:

* the belief posterior ``p_B(z_t | b_t)``,
* the smoothing posterior ``q(z_t1 | z_t2, b_t1, b_t2, dt)``,
* the transition ``p_T(z_t2 | z_t1, dt)``, conditioned on the jump length ``dt = t2 - t1``,
* the decoder ``p(x_t | z_t)`` (a shared backbone and likelihood).

Training draws ``dt`` uniformly in ``1..max_jump`` and ``t1`` uniformly among the times that leave
room for the jump (``pairs`` draws per sequence share one LSTM pass), samples
``z_t2 ~ p_B(. | b_t2)`` and ``z_t1 ~ q(. | z_t2, b_t1, b_t2)``, and minimises the paper's loss
(eq. 6), written with the shared terms:

``-log p(x_t2 | z_t2)  +  KL(q(z_t1 | ...) || p_B(z_t1 | b_t1))  +  [log p_B(z_t2 | b_t2) - log p_T(z_t2 | z_t1)]``

The KL is analytic (layer by layer, given the sampled upper layer: one diagonal Gaussian over both
layers); the last bracket is the one-sample estimate the paper uses. Over the consecutive pairs
``(t-1, t)`` of a sequence the terms sum to the paper's bound on ``log p(x_2..x_T | x_1)``, which the
per-epoch evaluation reports per frame.

A rollout samples ``z`` from the belief after a context and jumps: :meth:`TDVAE.predict` makes a
jump of any length from jumps of at most ``max_jump`` through the one transition code
(:meth:`TDVAE.jump`), so a model trained with ``max_jump = 1`` is the one-step baseline stepped
``dt`` times.

References:
    Gregor, Papamakarios, Besse, Buesing and Weber, "Temporal Difference Variational
    Auto-Encoder", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent
from torch.nn import functional as F

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.distributions import DiagonalNormal
from aelab.latents.heads import DiagonalGaussianHead
from aelab.likelihoods import LikelihoodConfig, build_likelihood
from aelab.losses.objective import Objective
from aelab.losses.terms import AuxLoss, KLDivergence, ReconstructionNLL
from aelab.nn.backbones import ACTIVATIONS, BackboneConfig, build_decoder, build_encoder
from aelab.nn.linear import Linear
from aelab.nn.precision import float32_region, upcast
from aelab.outputs import LossOutput, ModelOutput
from aelab.protocol import Capabilities, Model, register_model

__all__ = ["TDVAE", "TDVAEConfig", "sequence_from_data"]


@dataclass
class TDVAEConfig:
    """TD-VAE's settings.

    Attributes:
        image_shape: ``(C, H, W)`` of one frame (filled from the data set; vectors are ``(1, 1, D)``).
        backbone: the frame encoder and the decoder (MLP or conv, the shared backbones).
        likelihood: the decoder's ``p(x_t | z_t)``.
        belief_dim: width of the belief LSTM.
        latent_dim: size of each latent layer.
        layers: latent layers (the paper's hierarchy has 2).
        hidden: width of the two-layer MLPs of the belief, smoothing and transition conditionals.
        activation: their activation (a registered name).
        max_jump: jumps ``dt`` are drawn uniformly in ``1..max_jump`` (1: a one-step model).
        pairs: ``(t1, t2)`` pairs drawn per sequence and step (they share the LSTM pass).
        free_bits: free bits on the smoothing KL (0: none).
    """

    image_shape: tuple[int, int, int] = (1, 28, 28)
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(hidden=(256,)))
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)
    belief_dim: int = 128
    latent_dim: int = 8
    layers: int = 2
    hidden: int = 128
    activation: str = "elu"
    max_jump: int = 5
    pairs: int = 4
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        for name in ("belief_dim", "latent_dim", "layers", "hidden", "max_jump", "pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ConfigError(f"model.image_shape must be (C, H, W) of positive sizes, got {self.image_shape}")
        if self.free_bits < 0:
            raise ConfigError(f"model.free_bits must be >= 0, got {self.free_bits}")
        ACTIVATIONS.get(self.activation)


def sequence_from_data(cfg: TDVAEConfig, info: Any) -> TDVAEConfig:
    """``fit_to_data`` of the sequence families: ``image_shape`` from the data's ``(T, C, H, W)``."""
    if len(info.shape) != 4:
        raise ConfigError(f"model {'tdvae'!r} reads sequences of frames (T, C, H, W); data set {info.name!r} "
                          f"has examples of shape {tuple(info.shape)}: use moving-mnist, oscillator or sequences")
    if info.shape[0] < 2:
        raise ConfigError(f"data set {info.name!r} has sequences of {info.shape[0]} frame: TD-VAE needs >= 2")
    return dataclasses.replace(cfg, image_shape=tuple(info.shape[1:]))


def _cat_normal(parts: Sequence[Independent]) -> Independent:
    """Diagonal Gaussians over consecutive latent layers as one diagonal Gaussian over all of them."""
    if len(parts) == 1:
        return parts[0]
    base = [p.base_dist for p in parts]
    return Independent(DiagonalNormal(torch.cat([b.loc for b in base], -1), torch.cat([b.scale for b in base], -1),
                                      torch.cat([b.log_scale for b in base], -1)), 1)


class _GaussianMLP(nn.Module):
    """inputs -> two hidden layers -> a diagonal Gaussian (the shared head); ``residual``: the
    mean is ``base + f(inputs)`` (the transition moves ``z_t1`` rather than redrawing it)."""

    def __init__(self, in_features: int, hidden: int, out: int, activation: str) -> None:
        super().__init__()
        act = ACTIVATIONS.get(activation)
        self.net = nn.Sequential(Linear(in_features, hidden), act(), Linear(hidden, hidden), act())
        self.head = DiagonalGaussianHead(hidden, out)

    def forward(self, inputs: Tensor, base: Tensor | None = None) -> Independent:
        d = self.head(self.net(inputs))
        if base is None:
            return d
        b = d.base_dist
        return Independent(DiagonalNormal(b.loc + base, b.scale, b.log_scale), 1)


class _Layered(nn.Module):
    """A hierarchy of Gaussian layers (top first): layer ``l`` sees the context and the layers
    above it. Called with ``given`` it evaluates the conditionals along those values (no
    sampling); otherwise it samples each layer (reparameterised) on the way down."""

    def __init__(self, context: int, cfg: TDVAEConfig, residual: bool = False) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.latent_dim, self.residual = d, residual
        self.nets = nn.ModuleList(_GaussianMLP(context + l * d, cfg.hidden, d, cfg.activation)
                                  for l in range(cfg.layers))

    def forward(self, context: Tensor, given: Tensor | None = None,
                base: Tensor | None = None) -> tuple[Independent, Tensor]:
        d, parts, zs = self.latent_dim, [], []
        for l, net in enumerate(self.nets):
            dist = net(torch.cat([context, *zs], -1) if zs else context,
                       base[..., l * d:(l + 1) * d] if self.residual and base is not None else None)
            parts.append(dist)
            zs.append(given[..., l * d:(l + 1) * d] if given is not None else dist.rsample())
        return _cat_normal(parts), torch.cat(zs, -1)


@register_model("tdvae", TDVAEConfig, family="sequence", evaluation="sequence", figures="sequence",
                fit_to_data=sequence_from_data)
class TDVAE(Model):
    """The Temporal Difference VAE on sequences of frames ``(B, T, C, H, W)``.

    Example:
        >>> from aelab.protocol import build_model
        >>> m = build_model("tdvae", image_shape=(1, 1, 2), backbone={"hidden": (8,)}, belief_dim=8,
        ...                 latent_dim=2, hidden=8, max_jump=2, likelihood={"name": "gaussian"})
        >>> x = torch.randn(3, 6, 1, 1, 2)
        >>> m.loss(Batch(x)).per_example.shape, m.rollout(x[:, :4], [1, 2], samples=5).shape
        (torch.Size([3]), torch.Size([5, 3, 2, 1, 1, 2]))
    """

    capabilities = Capabilities(sample=False, sequence=True)

    def __init__(self, cfg: TDVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        c, z = cfg.image_shape[0], cfg.latent_dim * cfg.layers
        self.encoder = build_encoder(cfg.image_shape, cfg.backbone)
        self.belief = nn.LSTM(self.encoder.out_features, cfg.belief_dim, batch_first=True)
        self.posterior = _Layered(cfg.belief_dim, cfg)  # p_B(z_t | b_t)
        self.smoothing = _Layered(z + 2 * cfg.belief_dim + cfg.max_jump, cfg)  # q(z_t1 | z_t2, b_t1, b_t2, dt)
        self.transition = _Layered(z + cfg.max_jump, cfg, residual=True)  # p_T(z_t2 | z_t1, dt)
        self.likelihood = build_likelihood(c, cfg.likelihood)
        self.decoder = build_decoder(z, cfg.image_shape, c * self.likelihood.num_params, cfg.backbone)
        self.objective = Objective({"recon": (ReconstructionNLL(), 1.0),
                                    "kl": (KLDivergence(free_bits=cfg.free_bits), 1.0),
                                    "transition": (AuxLoss("transition"), 1.0)})

    @property
    def max_jump(self) -> int:
        """The longest jump of one transition (longer predictions chain jumps: :meth:`predict`)."""
        return self.config.max_jump

    @property
    def state_dim(self) -> int:
        """Size of the whole latent state ``z_t`` (all layers)."""
        return self.config.latent_dim * self.config.layers

    # --- the parts ----------------------------------------------------------------------------
    def beliefs(self, x: Tensor) -> Tensor:
        """The belief ``b_t`` after each frame, ``(B, T, C, H, W) -> (B, T, belief_dim)``; ``b_t``
        depends on ``x_<=t`` only (a one-directional LSTM)."""
        b, t = x.shape[:2]
        h = self.encoder(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        with float32_region(h):
            return self.belief(upcast(h))[0]

    def decode(self, z: Tensor) -> Distribution:
        """``p(x_t | z_t)`` for states ``(N, state_dim)``, event shape ``(C, H, W)``."""
        params = self.decoder(z)
        with float32_region(params):
            return self.likelihood(upcast(params))

    def _dt(self, dt: Tensor) -> Tensor:
        if int(dt.min()) < 1 or int(dt.max()) > self.config.max_jump:
            raise ValueError(f"a jump must be 1..{self.config.max_jump} steps (model.max_jump), got "
                             f"{sorted(set(dt.flatten().tolist()))}")
        return F.one_hot(dt - 1, self.config.max_jump).float()

    def jump(self, z: Tensor, dt: int) -> Tensor:
        """One transition: ``z_t2 ~ p_T(. | z_t1 = z, dt)`` for states ``(N, state_dim)``."""
        emb = self._dt(torch.full(z.shape[:-1], dt, dtype=torch.long, device=z.device))
        return self.transition(torch.cat([z, emb], -1), base=z)[1]

    def predict(self, z: Tensor, dt: int) -> Tensor:
        """``z`` moved ``dt`` steps ahead by jumps of at most ``max_jump`` (:meth:`jump`, largest first)."""
        if dt < 1:
            raise ValueError(f"a prediction looks at least 1 step ahead, got dt={dt}")
        while dt > 0:
            step = min(dt, self.config.max_jump)
            z, dt = self.jump(z, step), dt - step
        return z

    # --- the objective ------------------------------------------------------------------------
    def pair_output(self, x: Tensor, t1: Tensor, t2: Tensor, beliefs: Tensor | None = None) -> ModelOutput:
        """The terms' inputs for pairs ``(t1, t2)`` of each sequence (``(B, P)`` int64 each),
        flattened to ``B * P`` rows: ``x`` is ``x_t2``, ``qz_x``/``z`` the smoothing posterior and
        its sample of ``z_t1``, ``pz`` the belief posterior ``p_B(z_t1 | b_t1)`` along that sample,
        ``px_z`` the decoder at ``z_t2 ~ p_B(. | b_t2)``, and ``aux["transition"]`` the estimate
        ``log p_B(z_t2 | b_t2) - log p_T(z_t2 | z_t1, dt)``."""
        b = self.beliefs(x) if beliefs is None else beliefs
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(t1)
        b1, b2 = b[rows, t1].flatten(0, 1), b[rows, t2].flatten(0, 1)
        emb = self._dt((t2 - t1).flatten())
        pb2, z2 = self.posterior(b2)
        q1, z1 = self.smoothing(torch.cat([z2, b1, b2, emb], -1))
        pb1, _ = self.posterior(b1, given=z1)
        pt2, _ = self.transition(torch.cat([z1, emb], -1), given=z2, base=z1)
        transition = pb2.log_prob(z2) - pt2.log_prob(z2)
        target = x[rows, t2].flatten(0, 1)
        return ModelOutput(x=target, x_in=x, z=z1, qz_x=q1, px_z=self.decode(z2), pz=pb1,
                           aux={"transition": transition})

    def draw_pairs(self, batch: int, frames: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``pairs`` random ``(t1, t2)`` per sequence: ``dt`` uniform in ``1..min(max_jump, T-1)``,
        then ``t1`` uniform in ``0..T-1-dt`` (torch's RNG, which the trainer checkpoints)."""
        if frames < 2:
            raise ValueError(f"TD-VAE trains on sequences of at least 2 frames, got {frames}")
        shape = (batch, self.config.pairs)
        dt = torch.randint(1, min(self.config.max_jump, frames - 1) + 1, shape, device=device)
        t1 = (torch.rand(shape, device=device) * (frames - dt)).long()
        return t1, t1 + dt

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        x = batch.x
        t1, t2 = self.draw_pairs(x.shape[0], x.shape[1], x.device)
        return self._pairs_loss(x, t1, t2, step)

    def _pairs_loss(self, x: Tensor, t1: Tensor, t2: Tensor, step: int | None) -> LossOutput:
        out = self.pair_output(x, t1, t2)
        with float32_region(out.x):
            lo = self.objective(out, self, step)
        per = lo.per_example.view(t1.shape).mean(1)
        return LossOutput(lo.loss, lo.terms, per)

    @torch.no_grad()
    def sequence_bound(self, x: Tensor) -> LossOutput:
        """The loss over every consecutive pair ``(t-1, t)``: per sequence, the mean per frame of
        the paper's bound on ``-log p(x_2..x_T | x_1)`` (``per_example``, nats per frame), and each
        term's mean per frame."""
        b, t = x.shape[:2]
        t1 = torch.arange(t - 1, device=x.device).expand(b, t - 1)
        return self._pairs_loss(x, t1, t1 + 1, None)

    def sample(self, n: int) -> Tensor:
        """TD-VAE has no prior over whole sequences to sample from: it predicts from a context."""
        raise ValueError(f"model {self.name!r} has no prior over sequences to sample from: it predicts futures "
                         "from a context (rollout, `aelab rollout RUN`)")

    # --- rollouts -----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout_states(self, context: Tensor, steps: Sequence[int], samples: int = 1) -> Tensor:
        """Latent states after the context: ``z ~ p_B(. | b_last)``, then moved by each entry of
        ``steps`` in turn (:meth:`predict`). ``context`` ``(B, T0, ...)``; returns
        ``(samples, B, len(steps), state_dim)``."""
        b = self.beliefs(context)[:, -1]
        z = self.posterior(b.repeat(samples, 1))[1]
        out = []
        for dt in steps:
            z = self.predict(z, int(dt))
            out.append(z)
        return torch.stack(out, 1).view(samples, context.shape[0], len(steps), -1)

    @torch.no_grad()
    def rollout(self, context: Tensor, steps: Sequence[int], samples: int = 1) -> Tensor:
        """Predicted frames (the decoder's means) ``(samples, B, len(steps), C, H, W)`` after
        jumping by each entry of ``steps`` in turn from the belief after ``context``."""
        z = self.rollout_states(context, steps, samples)
        return self.decode(z.flatten(0, 2)).mean.view(*z.shape[:3], *self.config.image_shape)

