"""Decoder likelihoods p(x|z): "mse vs bce" is a choice of distribution, not a string switch.

A likelihood module turns the decoder's raw output, shaped ``(B, C * num_params, H, W)``, into a
``torch.distributions`` object whose event shape is the whole image ``(C, H, W)``, so
``px_z.log_prob(x)`` is one value per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Laplace, Normal
from torch.nn import functional as F

from aelab.distributions import DiscretizedLogistic
from aelab.registry import LIKELIHOODS


@dataclass
class LikelihoodConfig:
    """Which p(x|z) the decoder parametrises.

    Attributes:
        name: a registered likelihood (``bernoulli``, ``gaussian``, ``laplace``,
            ``discretized_logistic``).
        scale: the Gaussian's standard deviation or the Laplace's scale (initial value if learned).
        learn_scale: learn one scale per channel instead of keeping it fixed.
    """

    name: str = "bernoulli"
    scale: float = 1.0
    learn_scale: bool = False


class Likelihood(nn.Module):
    """Base: ``forward(params) -> Distribution`` with event shape (C, H, W)."""

    #: how many decoder output channels each image channel needs
    num_params: int = 1

    def __init__(self, channels: int, cfg: LikelihoodConfig) -> None:
        super().__init__()
        self.channels = channels
        self.cfg = cfg


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """Bernoulli pixels with logits from the decoder; scores grey values in [0, 1] as soft targets

    (the usual binary cross-entropy; then it is not a normalised density over grey values).
    """

    def forward(self, params: Tensor) -> Distribution:
        return BernoulliImage(Bernoulli(logits=params, validate_args=False), 3, validate_args=False)


class BernoulliImage(Independent):
    """``Independent(Bernoulli(logits), n)`` whose ``log_prob`` is one fused cross-entropy.

    The same distribution as torch's; ``log_prob`` skips ``Bernoulli.log_prob``'s broadcasting and
    its negation of every pixel (a few microseconds a call, a measurable share of a small model's
    step). Values of another shape than the logits take torch's general path.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return -self.nll(value)

    def nll(self, value: Tensor) -> Tensor:
        """``-log_prob(value)`` computed directly (the reconstruction term asks for this)."""
        logits = self.base_dist.logits
        if value.shape != logits.shape:
            return -super().log_prob(value)
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return bce.sum(dim=tuple(range(-self.reinterpreted_batch_ndims, 0)))


class _LocationScaleLikelihood(Likelihood):
    """Decoder gives the location; the scale is fixed or learned per channel."""

    family: type[Distribution]

    def __init__(self, channels: int, cfg: LikelihoodConfig) -> None:
        super().__init__(channels, cfg)
        if cfg.scale <= 0:
            raise ValueError(f"likelihood.scale must be > 0, got {cfg.scale}")
        log_scale = torch.full((channels, 1, 1), math.log(cfg.scale))
        if cfg.learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    def forward(self, params: Tensor) -> Distribution:
        scale = self.log_scale.exp().expand_as(params)
        return Independent(self.family(params, scale, validate_args=False), 3)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocationScaleLikelihood):
    """Gaussian pixels: decoder gives the mean; the scale is fixed or learned per channel.

    With ``scale=1`` the negative log-likelihood is half the summed squared error plus a constant.
    """

    family = Normal


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocationScaleLikelihood):
    """Laplace pixels (an L1 reconstruction loss); the scale is fixed or learned per channel."""

    family = Laplace


@LIKELIHOODS.register("discretized_logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """8-bit pixels: a logistic per pixel (mean and log-scale from the decoder) integrated over
    each of the 256 bins, so the NLL is a code length and bits/dim is meaningful.
    """

    num_params = 2

    def forward(self, params: Tensor) -> Distribution:
        loc, log_scale = params.chunk(2, dim=1)
        return Independent(DiscretizedLogistic(loc, log_scale), 3)


def build_likelihood(channels: int, cfg: LikelihoodConfig) -> Likelihood:
    return LIKELIHOODS.get(cfg.name)(channels, cfg)


def mean_image(px_z: Distribution) -> Tensor:
    """The mean of p(x|z) as an image in [0, 1] (for pictures and squared error)."""
    return px_z.mean.clamp(0.0, 1.0)


# --- sentences --------------------------------------------------------------------------------
#: the token ids of aelab.data.text's specials (that module sits above this layer)
PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = 0, 1, 2, 3


def shift_right(x: Tensor) -> Tensor:
    """A decoder's teacher-forcing inputs: ``<bos>`` then ``x`` without its last column, ``(B, T)``."""
    bos = torch.full_like(x[:, :1], BOS_TOKEN)
    return torch.cat([bos, x[:, :-1]], 1)


def word_dropout(inputs: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each word of the decoder's inputs by ``<unk>`` with probability ``rate``.

    ``<bos>`` (column 0) and ``<pad>`` are never replaced; ``rate = 1`` leaves the decoder no
    words at all (only ``<bos>``, ``<unk>`` and, where it has one, the latent).

    References:
        Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016.

    Example:
        >>> word_dropout(torch.tensor([[2, 5, 6, 0]]), 1.0).tolist()
        [[2, 1, 1, 0]]
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"word dropout rate must be in [0, 1], got {rate}")
    if rate == 0.0:
        return inputs
    drop = torch.rand(inputs.shape, generator=generator, device=inputs.device) < rate
    drop &= inputs.ne(PAD_TOKEN)
    drop[:, 0] = False
    return inputs.masked_fill(drop, UNK_TOKEN)


class SentenceDistribution(Distribution):
    """``p(x|z)`` over sentences: an autoregressive decoder conditioned on a latent (or not).

    ``log_prob(x)`` scores padded ids ``(B, T)`` (each sentence ending in ``<eos>``, then
    ``<pad>``) by teacher forcing: one pass of the decoder over ``<bos> x[:-1]``, the output layer
    on the real positions only, ``<eos>`` included, padding never scored. ``sample`` generates
    with the decoder's own step (greedy or at a temperature); :meth:`stepwise_log_prob` scores a
    sentence through that same step path, token by token.

    Args:
        decoder: a :class:`~aelab.nn.sequence.SentenceDecoder`.
        z: latents ``(B, D)``, or ``None`` for a decoder without a latent.
        batch: the number of sentences when ``z`` is ``None``.
        corrupt: applied to the teacher-forcing inputs (word dropout in training).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, decoder: nn.Module, z: Tensor | None, batch: int | None = None,
                 corrupt=None) -> None:
        self.decoder, self.z, self.corrupt = decoder, z, corrupt
        n = z.shape[0] if z is not None else batch
        if n is None:
            raise ValueError("a sentence distribution without a latent needs its batch size")
        super().__init__(torch.Size([n]), validate_args=False)

    def _z_for(self, x: Tensor) -> Tensor | None:
        if self.z is None or self.z.shape[0] == x.shape[0]:
            return self.z
        raise ValueError(f"{x.shape[0]} sentences scored under {self.z.shape[0]} latents")

    def nll(self, x: Tensor) -> Tensor:
        """``-log p(x|z)`` per sentence, ``(B,)``, in nats."""
        inputs = shift_right(x)
        if self.corrupt is not None:
            inputs = self.corrupt(inputs)
        h = self.decoder.hidden_states(inputs, self._z_for(x))  # (B, T, H)
        mask = x.ne(PAD_TOKEN)
        rows = mask.nonzero()[:, 0]  # the output layer runs on real positions only
        token_nll = self.decoder.token_nll(h[mask], x[mask])
        return torch.zeros(x.shape[0], dtype=token_nll.dtype, device=x.device).index_add_(0, rows, token_nll)

    def log_prob(self, x: Tensor) -> Tensor:
        return -self.nll(x)

    def _generate(self, steps: int, choose) -> Tensor:
        """The step path: ``choose(logits, t) -> tokens (B,)`` picks each next token."""
        n = self.batch_shape[0]
        device = next(self.decoder.parameters()).device
        state = self.decoder.start(self.z, n)
        token = torch.full((n,), BOS_TOKEN, dtype=torch.long, device=device)
        out = torch.full((n, steps), PAD_TOKEN, dtype=torch.long, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for t in range(steps):
            h, state = self.decoder.step(token, state, self.z)
            token = choose(self.decoder.logits(h).float(), t)
            out[:, t] = token.masked_fill(done, PAD_TOKEN)
            done |= token.eq(EOS_TOKEN)
            if bool(done.all()):
                break
        return out

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple[int, ...] = (), max_len: int = 64,
               temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Sentences ``(B, L)``, ``L <= max_len``: each ends at its first ``<eos>`` then ``<pad>``
        (a sentence still open after ``max_len`` tokens is cut there). ``temperature=0`` decodes
        greedily (the most likely token at each step). ``<pad>`` and ``<bos>`` are never drawn:
        they are never targets, so a trained decoder gives them almost no mass, and one drawn by
        chance would end or restart a sentence."""
        if tuple(sample_shape):
            raise ValueError("draw several sentences with a batch of latents, not a sample shape")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")

        def choose(logits: Tensor, t: int) -> Tensor:
            logits[:, PAD_TOKEN] = logits[:, BOS_TOKEN] = -math.inf  # never targets: never drawn
            if temperature == 0:
                return logits.argmax(-1)
            return torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]

        out = self._generate(max_len, choose)
        width = int(out.ne(PAD_TOKEN).sum(1).max()) if out.numel() else 0
        return out[:, : max(width, 1)]

    def stepwise_log_prob(self, x: Tensor) -> Tensor:
        """``log p(x|z)`` per sentence, summed from the step path's conditionals (what ``sample``
        runs), forcing the tokens of ``x``; equals :meth:`log_prob` up to float rounding."""
        mask = x.ne(PAD_TOKEN)
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)

        def choose(logits: Tensor, t: int) -> Tensor:
            nonlocal total
            lp = F.log_softmax(logits, -1).gather(1, x[:, t : t + 1])[:, 0]
            total = total + torch.where(mask[:, t], lp, torch.zeros_like(lp))
            return x[:, t]

        self._generate(x.shape[1], choose)
        return total
