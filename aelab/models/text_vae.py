"""Text VAEs and their language-model reference: sentences in, a latent the decoder must use.

``text_vae`` is Bowman et al.'s sentence VAE assembled from shared parts: an LSTM encoder, the
diagonal-Gaussian (or IAF) head, a prior, and an autoregressive decoder (LSTM or dilated CNN)
whose output is a :class:`~aelab.likelihoods.SentenceDistribution`. The remedies for posterior
collapse are configuration, all combinable: KL annealing (``beta`` as a schedule), free bits,
word dropout, the bag-of-words loss, a flow posterior, the dilated-CNN decoder and the
aggressive inference-network training of He et al. (2019), which is the one remedy that needs a
training step of its own. ``text_lm`` is the same decoder without a latent, the NLL every VAE
is judged against.

References:
    Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016;
    Yang et al., "Improved Variational Autoencoders for Text Modeling using Dilated
    Convolutions", ICML 2017; Zhao et al., "Learning Discourse-level Diversity for Neural Dialog
    Models using Conditional Variational Autoencoders", ACL 2017; He et al., "Lagging Inference
    Networks and Posterior Collapse in Variational Autoencoders", ICLR 2019.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from aelab.batch import Batch
from aelab.config import ConfigError
from aelab.latents.heads import SCALE_PARAMS, DiagonalGaussianHead
from aelab.latents.iaf import IAFHead
from aelab.likelihoods import EOS_TOKEN, PAD_TOKEN, SentenceDistribution, word_dropout
from aelab.losses.objective import Objective
from aelab.losses.terms import BagOfWordsNLL, KLDivergence, ReconstructionNLL, minibatch_mutual_information
from aelab.nn.linear import Linear
from aelab.nn.precision import float32_region, upcast
from aelab.nn.sequence import CNN_PRESETS, DilatedCNNDecoder, LSTMDecoder, SentenceDecoder, SentenceEncoder
from aelab.outputs import LossOutput, ModelOutput
from aelab.priors.base import PriorConfig, build_prior
from aelab.protocol import Capabilities, Model, StepContext, register_model
from aelab.schedules import parse_schedule

__all__ = ["TextLM", "TextLMConfig", "TextVAE", "TextVAEConfig", "text_from_data"]


@dataclass
class TextLMConfig:
    """The decoder's settings (shared by ``text_lm`` and ``text_vae``).

    Attributes:
        vocab_size: V; filled from the data set's vocabulary when training from the CLI.
        max_len: the longest sentence sampled, ``<eos>`` included (filled from ``data.max_len``).
        embed_dim: word embedding size.
        hidden: decoder width (LSTM units or CNN channels).
        decoder: ``lstm`` or ``cnn`` (dilated causal convolutions).
        layers: LSTM layers.
        cnn_preset: ``small``, ``medium`` or ``large`` (receptive fields 15, 63, 125 tokens at kernel 3).
        cnn_kernel: convolution width.
        cnn_gated: gated residual blocks (tanh x sigmoid) instead of ReLU bottlenecks.
        dropout: dropout on embeddings and before the output layer.
        word_dropout: rate at which the decoder's input words become ``<unk>`` in training (1: no
            input words at all).
    """

    vocab_size: int = 10000
    max_len: int = 65
    embed_dim: int = 256
    hidden: int = 512
    decoder: str = "lstm"
    layers: int = 1
    cnn_preset: str = "medium"
    cnn_kernel: int = 3
    cnn_gated: bool = False
    dropout: float = 0.0
    word_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.vocab_size < 5:
            raise ConfigError(f"model.vocab_size must be >= 5 (4 specials and a word), got {self.vocab_size}")
        if self.decoder not in ("lstm", "cnn"):
            raise ConfigError(f"model.decoder: expected 'lstm' or 'cnn', got {self.decoder!r}")
        if self.cnn_preset not in CNN_PRESETS:
            raise ConfigError(f"model.cnn_preset: expected one of {', '.join(CNN_PRESETS)}, got {self.cnn_preset!r}")
        if not 0.0 <= self.word_dropout <= 1.0:
            raise ConfigError(f"model.word_dropout must be in [0, 1], got {self.word_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("max_len", "embed_dim", "hidden", "layers", "cnn_kernel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class TextVAEConfig(TextLMConfig):
    """The decoder's settings (see :class:`TextLMConfig`) and the latent's.

    Attributes:
        latent_dim: D.
        encoder_hidden: the encoder LSTM's width (0: ``hidden``).
        bidirectional: read each sentence both ways in the encoder.
        z_mode: how ``z`` reaches an LSTM decoder: ``init`` (its initial state), ``concat``
            (every input) or ``both``; the CNN decoder always concatenates.
        beta: the KL weight, a number or a schedule (``linear(0, 1, 10000)`` is KL annealing,
            ``cyclical(0, 1, 5000, 0.5)`` cyclical annealing).
        free_bits: free-bits threshold in nats (0: off); ``free_bits_mode``: ``dim`` or ``total``.
        monte_carlo_kl: the one-sample KL even where an analytic form exists.
        posterior: ``gaussian`` or ``iaf`` (an inverse-autoregressive-flow posterior).
        flows, flow_hidden, context_dim: the IAF posterior's steps, MADE width and context size.
        posterior_scale: ``log_sigma`` or ``log_var`` (see the VAE).
        prior: p(z).
        bow_weight: weight of the bag-of-words loss (0: off); ``bow_hidden``: its MLP's width.
        aggressive: He et al.'s aggressive training of the encoder (a training step of its own).
        aggressive_inner: the most encoder updates per decoder update.
        aggressive_patience: inner updates between checks that the encoder's loss still falls.
        aggressive_check: steps over which the batch MI is averaged; aggressive training stops
            when a window's mean MI is below the previous window's.
    """

    latent_dim: int = 32
    encoder_hidden: int = 0
    bidirectional: bool = False
    z_mode: str = "init"
    beta: str = "1.0"
    free_bits: float = 0.0
    free_bits_mode: str = "dim"
    monte_carlo_kl: bool = False
    posterior: str = "gaussian"
    flows: int = 2
    flow_hidden: int = 64
    context_dim: int = 16
    posterior_scale: str = "log_sigma"
    prior: PriorConfig = field(default_factory=PriorConfig)
    bow_weight: float = 0.0
    bow_hidden: int = 256
    aggressive: bool = False
    aggressive_inner: int = 30
    aggressive_patience: int = 10
    aggressive_check: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_schedule(self.beta)
        except ValueError as e:
            raise ConfigError(f"model.beta: {e}") from None
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        if self.z_mode not in ("init", "concat", "both"):
            raise ConfigError(f"model.z_mode: expected 'init', 'concat' or 'both', got {self.z_mode!r}")
        if self.posterior not in ("gaussian", "iaf"):
            raise ConfigError(f"model.posterior: expected 'gaussian' or 'iaf', got {self.posterior!r}")
        if self.posterior_scale not in SCALE_PARAMS:
            raise ConfigError(f"model.posterior_scale: expected one of {', '.join(SCALE_PARAMS)}, "
                              f"got {self.posterior_scale!r}")
        if not self.free_bits >= 0:
            raise ConfigError(f"model.free_bits must be >= 0, got {self.free_bits}")
        if self.free_bits_mode not in ("dim", "total"):
            raise ConfigError(f"model.free_bits_mode: expected 'dim' or 'total', got {self.free_bits_mode!r}")
        if self.posterior == "iaf" and self.free_bits > 0 and self.free_bits_mode != "total":
            raise ConfigError("model.free_bits_mode: an IAF posterior has no per-dimension KL, use 'total'")
        if self.bow_weight < 0:
            raise ConfigError(f"model.bow_weight must be >= 0, got {self.bow_weight}")
        for name in ("aggressive_inner", "aggressive_patience", "aggressive_check"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")


def text_from_data(cfg: Any, info: Any) -> Any:
    """The text families' ``fit_to_data``: ``vocab_size`` and ``max_len`` from the data set."""
    if info.vocab is None:
        raise ConfigError(f"a text model needs a text data set (fortunes, text); {info.name!r} has no vocabulary")
    return dataclasses.replace(cfg, vocab_size=len(info.vocab), max_len=int(info.shape[0]))


def build_sentence_decoder(cfg: TextLMConfig, latent_dim: int) -> SentenceDecoder:
    """The configured decoder (``cfg.decoder``) for a latent of size ``latent_dim`` (0: none)."""
    if cfg.decoder == "cnn":
        return DilatedCNNDecoder(cfg.vocab_size, cfg.embed_dim, cfg.hidden, latent_dim, CNN_PRESETS[cfg.cnn_preset],
                                 cfg.cnn_kernel, cfg.cnn_gated, cfg.dropout)
    z_mode = cfg.z_mode if isinstance(cfg, TextVAEConfig) else "init"  # a language model has no z
    return LSTMDecoder(cfg.vocab_size, cfg.embed_dim, cfg.hidden, latent_dim, cfg.layers, z_mode, cfg.dropout)


class _SentenceModel(Model):
    """What the two text families share: the decoder, word dropout, sampling."""

    decoder: SentenceDecoder

    def _corrupt(self):
        rate = self.config.word_dropout
        return partial(word_dropout, rate=rate) if self.training and rate > 0 else None

    def _sentences(self, z: Tensor | None, n: int, temperature: float, max_len: int | None) -> Tensor:
        return SentenceDistribution(self.decoder, z, batch=n).sample(
            max_len=max_len or self.config.max_len, temperature=temperature)


@register_model("text_lm", TextLMConfig, family="text", evaluation="text", figures=None, fit_to_data=text_from_data)
class TextLM(_SentenceModel):
    """A sentence language model: the text VAE's decoder (LSTM or dilated CNN) without a latent.

    The reference NLL for the text VAEs: a VAE whose decoder ignores ``z`` can at best match it.
    """

    capabilities = Capabilities(sample=True, text=True)

    def __init__(self, cfg: TextLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.decoder = build_sentence_decoder(cfg, 0)

    def decode(self, n: int) -> SentenceDistribution:
        return SentenceDistribution(self.decoder, None, batch=n)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        x = batch.x
        nll = SentenceDistribution(self.decoder, None, batch=x.shape[0], corrupt=self._corrupt()).nll(x)
        return LossOutput(nll.mean(), {"recon": nll.detach().mean()}, nll.detach())

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, max_len: int | None = None) -> Tensor:
        """``n`` sentences ``(n, L)`` of token ids (``temperature=0``: greedy)."""
        return self._sentences(None, n, temperature, max_len)


@register_model("text_vae", TextVAEConfig, family="text", evaluation="text", figures=None,
                fit_to_data=text_from_data)
class TextVAE(_SentenceModel):
    """A sentence VAE: LSTM encoder, Gaussian or IAF q(z|x), LSTM or dilated-CNN p(x|z), and
    every KL-vanishing remedy as configuration.

    The objective is ``recon + beta(step) * KL [+ bow_weight * BoW]``; with ``aggressive`` the
    encoder is trained ahead of the decoder (He et al. 2019) until the batch MI stops rising.

    Example:
        >>> from aelab.protocol import build_model
        >>> m = build_model("text_vae", vocab_size=20, embed_dim=8, hidden=16, latent_dim=4)
        >>> x = torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0]])
        >>> m.loss(Batch(x)).per_example.shape, m.sample(3, temperature=0).shape[0]
        (torch.Size([2]), 3)
    """

    def __init__(self, cfg: TextVAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = SentenceEncoder(cfg.vocab_size, cfg.embed_dim, cfg.encoder_hidden or cfg.hidden,
                                       bidirectional=cfg.bidirectional, dropout=cfg.dropout)
        f, d = self.encoder.out_features, cfg.latent_dim
        if cfg.posterior == "iaf":
            self.head = IAFHead(f, d, cfg.flows, cfg.flow_hidden, cfg.context_dim, scale=cfg.posterior_scale)
        else:
            self.head = DiagonalGaussianHead(f, d, scale=cfg.posterior_scale)
        self.decoder = build_sentence_decoder(cfg, d)
        self.prior = build_prior(d, cfg.prior)
        self.bow = (nn.Sequential(Linear(d, cfg.bow_hidden), nn.Tanh(), Linear(cfg.bow_hidden, cfg.vocab_size))
                    if cfg.bow_weight > 0 else None)
        terms: dict[str, tuple[Any, Any]] = {
            "recon": (ReconstructionNLL(), 1.0),
            "kl": (KLDivergence(cfg.monte_carlo_kl, cfg.free_bits, cfg.free_bits_mode), parse_schedule(cfg.beta)),
        }
        if self.bow is not None:
            terms["bow"] = (BagOfWordsNLL(ignore=(PAD_TOKEN, EOS_TOKEN)), cfg.bow_weight)
        self.objective = Objective(terms)
        # aggressive training's switch and its MI windows: buffers, so a resumed run continues exactly
        self.register_buffer("aggressive_on", torch.tensor(bool(cfg.aggressive)))
        # sum and count of the current window, the previous window's mean (-inf: none yet)
        self.register_buffer("mi_window", torch.tensor([0.0, 0.0, -math.inf], dtype=torch.float64))

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Reconstructs and samples sentences through a continuous latent with a prior; aggressive
        training brings its own step."""
        return Capabilities(reconstruct=True, latent=True, latent_prior=True, sample=True, text=True,
                            own_step=self.config.aggressive)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    # --- the pipeline -------------------------------------------------------------------------
    def encode(self, x: Tensor, step: int | None = None, encoding: bool = True) -> torch.distributions.Distribution:
        """q(z|x) for padded ids ``(B, T)`` (lengths read from the padding).

        The encoder may run in bfloat16 under autocast; the head, and so q(z|x), z, the KL and
        the MI estimates, never do (a KL in bfloat16 reads -0.02 nats where it is 0)."""
        h = self.encoder(x)
        with float32_region(h):
            return self.head(upcast(h), step=step, encoding=encoding)

    def decode(self, z: Tensor) -> SentenceDistribution:
        """p(x|z): the sentence distribution given latents ``(B, D)``."""
        return SentenceDistribution(self.decoder, z)

    def forward(self, x: Tensor, step: int | None = None) -> ModelOutput:
        qz_x = self.encode(x, step, encoding=False)
        z = qz_x.rsample()
        px_z = SentenceDistribution(self.decoder, z, corrupt=self._corrupt())
        aux = {"bow_logits": self.bow(z)} if self.bow is not None else {}
        return ModelOutput(x=x, x_in=x, z=z, qz_x=qz_x, px_z=px_z, pz=self.prior(), aux=aux)

    def loss(self, batch: Batch, step: int | None = None) -> LossOutput:
        return self.objective(self(batch.x, step), self, step)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, max_len: int | None = None) -> Tensor:
        """Greedy decoding from the posterior mean, ``(B, L)`` token ids, ``L <= max_len``
        (default: the width of ``x``)."""
        z = self.encode(x).mean
        return self._sentences(z, x.shape[0], 0.0, max_len or x.shape[1])

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, max_len: int | None = None) -> Tensor:
        """``n`` sentences ``(n, L)`` from prior draws of ``z`` (``temperature=0``: greedy decoding)."""
        z = self.prior().sample((n,))
        return self._sentences(z, n, temperature, max_len)

    # --- aggressive training (He et al. 2019) ---------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group (``model``), or ``encoder`` and ``decoder`` under aggressive training."""
        if not self.config.aggressive:
            return super().optimizer_groups()
        encoder = [*self.encoder.parameters(), *self.head.parameters()]
        ids = {id(p) for p in encoder}
        return {"encoder": encoder, "decoder": [p for p in self.parameters() if id(p) not in ids]}

    def _update(self, batch: Batch, step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                groups: tuple[str, ...], ctx: StepContext) -> tuple[LossOutput, ModelOutput]:
        # the groups not updated here get no gradient at all (the backward pass skips their
        # weight gradients: the decoder's output layer is most of an encoder-only step's cost)
        frozen = [p for g, opt in optimizers.items() if g not in groups
                  for group in opt.param_groups for p in group["params"] if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with ctx.autocast():
                out = self(batch.x, step)
                lo = self.objective(out, self, step)
            ctx.check_finite("loss", lo.loss.item(), lo.terms)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            lo.loss.backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        params = [p for g in groups for group in optimizers[g].param_groups for p in group["params"]]
        ctx.finish_gradients(params)
        for g in groups:
            optimizers[g].step()
        return lo, out

    def train_step(self, batch: Batch, step: int, optimizers: Mapping[str, torch.optim.Optimizer],
                   ctx: StepContext) -> dict[str, float]:
        """Aggressive: encoder updates on fresh batches (this step's first) while their per-token
        loss keeps falling (checked every ``aggressive_patience`` updates, at most
        ``aggressive_inner``), then one decoder update on this step's batch. Afterwards, or once
        the MI has stopped rising, ordinary joint updates."""
        cfg = self.config
        inner = 0
        if bool(self.aggressive_on):
            if ctx.world_size > 1:  # each rank would stop its inner loop on its own losses: a deadlock
                raise ValueError("model.aggressive: aggressive training runs in one process, not under torchrun "
                                 f"({ctx.world_size} processes)")
            if ctx.draw is None:
                raise ValueError("aggressive training draws extra batches: run it under aelab's Trainer")
            previous, window = math.inf, 0.0
            while inner < cfg.aggressive_inner:
                b = batch if inner == 0 else ctx.draw(inner)
                lo, _ = self._update(b, step, optimizers, ("encoder",), ctx)
                inner += 1
                window += lo.loss.item() * len(b) / max(int(b.x.ne(PAD_TOKEN).sum()), 1)
                if inner % cfg.aggressive_patience == 0:
                    if window >= previous:
                        break
                    previous, window = window, 0.0
            lo, out = self._update(batch, step, optimizers, ("decoder",), ctx)
            self._track_mutual_information(out)
        else:
            lo, out = self._update(batch, step, optimizers, tuple(optimizers), ctx)
        return {"loss": lo.loss.item(), **{k: v.item() for k, v in lo.terms.items()},
                "inner_steps": float(inner), "aggressive": float(bool(self.aggressive_on))}

    @torch.no_grad()
    def _track_mutual_information(self, out: ModelOutput) -> None:
        """Average the batch MI over windows of ``aggressive_check`` steps; switch aggressive
        training off when a window's mean is below the previous one's (He et al. compare
        epochs of held-out MI)."""
        w = self.mi_window
        w[0] += minibatch_mutual_information(out.qz_x, out.z.detach()).double()
        w[1] += 1
        if int(w[1]) >= self.config.aggressive_check:
            mean = w[0] / w[1]
            if mean < w[2]:
                self.aggressive_on.fill_(False)
            w[2], w[0], w[1] = mean, 0.0, 0.0
