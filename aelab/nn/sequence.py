"""Networks over token sequences: an LSTM sentence encoder and two autoregressive decoders.

Conventions shared with :mod:`aelab.data.text`: token id 0 is ``<pad>`` (only ever after a
sentence's end), a sentence ends with ``<eos>`` and a decoder reads ``<bos>`` first. A decoder's
teacher-forced pass maps its inputs ``(B, T)`` (``<bos>`` then the sentence shifted right) and an
optional latent ``z`` ``(B, D)`` to hidden states ``(B, T, H)`` whose position ``t`` sees inputs
``0..t`` only; :meth:`SentenceDecoder.step` advances one position at a time from a state (what
sampling uses), and :meth:`SentenceDecoder.logits` is the output layer both share.

References:
    Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016 (LSTM text VAE);
    Yang et al., "Improved Variational Autoencoders for Text Modeling using Dilated
    Convolutions", ICML 2017 (dilated CNN decoder).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from aelab.nn.linear import Linear
from aelab.nn.precision import float32_region

__all__ = ["CNN_PRESETS", "DilatedCNNDecoder", "LSTMDecoder", "SentenceDecoder", "SentenceEncoder",
           "lengths_of", "receptive_field"]

PAD_ID = 0
#: logits per block of :meth:`SentenceDecoder.token_nll` without gradients: 4 Mi (16 MiB in float32),
#: small enough to be reduced while still in cache and to be reused by the allocator (a fresh
#: (N, V) buffer is page-faulted in on every call)
NLL_BLOCK = 1 << 22

#: dilations per preset of the dilated-CNN decoder (Yang et al. 2017 use 1, 2, 4 / up to 16 /
#: two stacks up to 16); with kernel 3 the receptive fields are 15, 63 and 125 tokens
CNN_PRESETS = {"small": (1, 2, 4), "medium": (1, 2, 4, 8, 16), "large": (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)}


def lengths_of(x: Tensor) -> Tensor:
    """Tokens per sentence of padded ids ``(B, T)``: the count of non-``<pad>`` ids, ``(B,)``."""
    return x.ne(PAD_ID).sum(1)


def receptive_field(dilations: tuple[int, ...], kernel: int) -> int:
    """Inputs a causal stack of dilated convolutions sees at one position.

    Example:
        >>> receptive_field(CNN_PRESETS["small"], 3), receptive_field(CNN_PRESETS["large"], 3)
        (15, 125)
    """
    return 1 + sum((kernel - 1) * d for d in dilations)


def _run_lstm(lstm: nn.LSTM, inputs: Any, state: tuple[Tensor, Tensor] | None = None) -> tuple[Any, Any]:
    """``lstm(inputs, state)`` in float32 even under autocast.

    Under bfloat16 autocast PyTorch runs ``nn.LSTM`` as oneDNN's bfloat16 RNN, which on CPU is
    slower than its float32 one (forward and backward of E=256, H=512, B=32, T=15 on a 2-core
    AVX512-BF16/AMX Xeon: 283 ms against 178 ms, medians of interleaved runs): the recurrence is
    a chain of small products that gains nothing from bfloat16 and pays the casts. The output
    layer, where a sentence model's time goes, stays under autocast. Without autocast this is
    exactly ``lstm(inputs, state)``.
    """
    if not torch.is_autocast_enabled(lstm.weight_ih_l0.device.type):
        return lstm(inputs, state)
    with torch.autocast(lstm.weight_ih_l0.device.type, enabled=False):
        if state is not None:
            state = (state[0].float(), state[1].float())
        if isinstance(inputs, Tensor):
            inputs = inputs.float()
        return lstm(inputs, state)


class SentenceEncoder(nn.Module):
    """Embedding and an LSTM (optionally bidirectional) over each sentence's real tokens.

    The features are the last layer's final hidden state (both directions concatenated) at each
    sentence's last token, so padding never reaches them.

    Args:
        vocab_size: V.
        embed_dim: E.
        hidden: LSTM width H.
        layers: stacked LSTM layers.
        bidirectional: also read each sentence backwards.
        dropout: dropout on the embeddings (training only).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.out_features = hidden * (2 if bidirectional else 1)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, H * directions)`` of padded ids ``(B, T)``."""
        lengths = lengths_of(x)
        if bool((lengths == 0).any()):
            raise ValueError("a sentence in the batch has no tokens (every sentence ends with <eos>)")
        e = self.dropout(self.embedding(x))
        if not self.lstm.bidirectional:
            # one direction: the state at each sentence's last token never saw its padding, so
            # read it off the padded pass, which runs oneDNN's LSTM; a packed sequence takes
            # PyTorch's slower native one (forward and backward 1.3x longer, E=256, H=512, B=32,
            # length-bucketed, on 2 cores)
            out, _ = _run_lstm(self.lstm, e)  # (B, T, H)
            return out[torch.arange(x.shape[0], device=x.device), lengths - 1]
        packed = pack_padded_sequence(e, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = _run_lstm(self.lstm, packed)  # h: (layers * dirs, B, H), in the batch's original order
        return h[-2:].transpose(0, 1).reshape(x.shape[0], -1)


class SentenceDecoder(nn.Module):
    """Base of the autoregressive decoders (abstract: subclasses implement the three passes).

    Attributes:
        vocab_size: V.
        latent_dim: D (0: a language model with no latent).
        hidden: width of the states fed to the output layer.
    """

    vocab_size: int
    latent_dim: int
    hidden: int

    def hidden_states(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        """Teacher forcing: inputs ``(B, T)`` -> states ``(B, T, H)``, causal in ``t``."""
        raise NotImplementedError  # abstract

    def start(self, z: Tensor | None, batch: int) -> Any:
        """The state before the first input of ``batch`` sentences."""
        raise NotImplementedError  # abstract

    def step(self, token: Tensor, state: Any, z: Tensor | None) -> tuple[Tensor, Any]:
        """One position: the input tokens ``(B,)`` -> states ``(B, H)`` and the next state."""
        raise NotImplementedError  # abstract

    def logits(self, h: Tensor) -> Tensor:
        """The output layer: states ``(..., H)`` -> next-token logits ``(..., V)``."""
        return self.out(self.out_dropout(h))

    def token_nll(self, h: Tensor, targets: Tensor) -> Tensor:
        """``-log p(target | state)`` of each row: states ``(N, H)``, targets ``(N,)`` -> ``(N,)`` float32.

        With gradients enabled, one cross-entropy over all rows (what training differentiates).
        Without (evaluation, the IWAE bound's thousands of decoder passes), the output layer runs
        on blocks of rows and each block is reduced at once to ``logsumexp(logits) - logit[target]``
        (in float32, also under bfloat16 autocast), so neither the ``(N, V)`` logits nor their
        log-softmax is ever held: 1.5x faster for N = 8,250, V = 7,810, H = 256 on 2 cores.

        Example:
            >>> dec = LSTMDecoder(vocab_size=9, embed_dim=4, hidden=5)
            >>> h, t = torch.randn(7, 5), torch.randint(0, 9, (7,))
            >>> with torch.no_grad():
            ...     blocked = dec.token_nll(h, t)
            >>> torch.allclose(blocked, F.cross_entropy(dec.logits(h), t, reduction="none"), atol=1e-6)
            True
        """
        if torch.is_grad_enabled():
            return F.cross_entropy(self.logits(h).float(), targets, reduction="none")
        project, device = self.logits, h.device.type
        if torch.is_autocast_enabled(device):
            # autocast would cast the (V, H) weight again for every block: cast it once, laid out
            # (H, V) (the layout the bfloat16 product runs fastest on: 1.4x F.linear's, H = 512,
            # V = 22,746), and run the blocks outside autocast
            dtype = torch.get_autocast_dtype(device)
            weight, bias = self.out.weight.to(dtype).t().contiguous(), self.out.bias.to(dtype)

            def project(x: Tensor) -> Tensor:
                return torch.addmm(bias, self.out_dropout(x).to(dtype), weight)

        rows = max(1, NLL_BLOCK // self.vocab_size)
        out = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        with float32_region(h):
            for i in range(0, h.shape[0], rows):
                logits = project(h[i : i + rows]).float()
                out[i : i + rows] = torch.logsumexp(logits, -1) - logits.gather(1, targets[i : i + rows, None])[:, 0]
        return out


class LSTMDecoder(SentenceDecoder):
    """An LSTM decoder; ``z`` initialises its state and/or is concatenated to every input.

    Args:
        vocab_size: V.
        embed_dim: E.
        hidden: LSTM width H.
        latent_dim: D (0: no latent).
        layers: stacked LSTM layers.
        z_mode: ``init`` (``z`` -> initial hidden and cell state by a linear map), ``concat``
            (``z`` joins every input embedding) or ``both``.
        dropout: dropout on the embeddings and on the states before the output layer.

    References:
        Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, latent_dim: int = 0, layers: int = 1,
                 z_mode: str = "init", dropout: float = 0.0) -> None:
        super().__init__()
        if z_mode not in ("init", "concat", "both"):
            raise ValueError(f"z_mode must be 'init', 'concat' or 'both', got {z_mode!r}")
        self.vocab_size, self.latent_dim, self.hidden, self.layers = vocab_size, latent_dim, hidden, layers
        self.concat = latent_dim > 0 and z_mode in ("concat", "both")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.in_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim + (latent_dim if self.concat else 0), hidden, layers, batch_first=True)
        self.init = Linear(latent_dim, 2 * layers * hidden) if latent_dim > 0 and z_mode != "concat" else None
        self.out_dropout = nn.Dropout(dropout)
        self.out = Linear(hidden, vocab_size)

    def _inputs(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        e = self.in_dropout(self.embedding(inputs))  # (B, T, E)
        if self.concat:
            e = torch.cat([e, z.unsqueeze(1).expand(-1, e.shape[1], -1).to(e.dtype)], -1)
        return e

    def start(self, z: Tensor | None, batch: int) -> tuple[Tensor, Tensor] | None:
        if self.init is None:
            return None  # zeros
        h, c = self.init(z).view(-1, 2, self.layers, self.hidden).permute(1, 2, 0, 3).unbind(0)
        return torch.tanh(h).contiguous(), c.contiguous()

    def hidden_states(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        out, _ = _run_lstm(self.lstm, self._inputs(inputs, z), self.start(z, inputs.shape[0]))
        return out

    def step(self, token: Tensor, state: Any, z: Tensor | None) -> tuple[Tensor, Any]:
        out, state = _run_lstm(self.lstm, self._inputs(token.unsqueeze(1), z), state)
        return out[:, 0], state


class _CausalBlock(nn.Module):
    """One residual block of the dilated CNN: ReLU bottleneck or gated (tanh x sigmoid)."""

    def __init__(self, channels: int, dilation: int, kernel: int, gated: bool, dropout: float) -> None:
        super().__init__()
        self.pad, self.gated = (kernel - 1) * dilation, gated
        inner = channels if gated else max(1, channels // 2)
        if gated:
            self.conv = nn.Conv1d(channels, 2 * channels, kernel, dilation=dilation)
            self.proj = nn.Conv1d(channels, channels, 1)
        else:  # 1x1 down, dilated k, 1x1 up (the bottleneck of Yang et al.)
            self.down = nn.Conv1d(channels, inner, 1)
            self.conv = nn.Conv1d(inner, inner, kernel, dilation=dilation)
            self.proj = nn.Conv1d(inner, channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, T)
        if self.gated:
            a, b = self.conv(F.pad(x, (self.pad, 0))).chunk(2, 1)
            h = torch.tanh(a) * torch.sigmoid(b)
        else:
            h = F.relu(self.conv(F.pad(F.relu(self.down(F.relu(x))), (self.pad, 0))))
        return x + self.dropout(self.proj(h))


class DilatedCNNDecoder(SentenceDecoder):
    """A causal dilated 1-D CNN decoder; ``z`` is concatenated to every input embedding.

    Position ``t`` sees the last ``receptive_field`` inputs, so the preset dials the decoder from
    nearly a bag of words (``small``: 15 tokens) to LSTM-like context (``large``: 125). Stepping
    runs the stack over the prefix so far (a fixed cost per step; sentences are short).

    Args:
        vocab_size: V.
        embed_dim: E.
        channels: convolution width C (the states' width H).
        latent_dim: D (0: no latent).
        dilations: one residual block per dilation.
        kernel: convolution width k.
        gated: gated (tanh x sigmoid) blocks instead of ReLU bottlenecks.
        dropout: dropout on the embeddings, inside the blocks and before the output layer.

    References:
        Yang, Hu, Salakhutdinov & Berg-Kirkpatrick, "Improved Variational Autoencoders for Text
        Modeling using Dilated Convolutions", ICML 2017.
    """

    def __init__(self, vocab_size: int, embed_dim: int, channels: int, latent_dim: int = 0,
                 dilations: tuple[int, ...] = CNN_PRESETS["medium"], kernel: int = 3, gated: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.vocab_size, self.latent_dim, self.hidden = vocab_size, latent_dim, channels
        self.receptive_field = receptive_field(tuple(dilations), kernel)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.in_dropout = nn.Dropout(dropout)
        self.inp = nn.Conv1d(embed_dim + latent_dim, channels, 1)
        self.blocks = nn.Sequential(*(_CausalBlock(channels, d, kernel, gated, dropout) for d in dilations))
        self.out_dropout = nn.Dropout(dropout)
        self.out = Linear(channels, vocab_size)

    def hidden_states(self, inputs: Tensor, z: Tensor | None) -> Tensor:
        e = self.in_dropout(self.embedding(inputs))
        if self.latent_dim:
            e = torch.cat([e, z.unsqueeze(1).expand(-1, e.shape[1], -1).to(e.dtype)], -1)
        h = self.blocks(self.inp(e.transpose(1, 2)))
        return F.relu(h).transpose(1, 2)

    def start(self, z: Tensor | None, batch: int) -> Tensor | None:
        return None  # the prefix read so far

    def step(self, token: Tensor, state: Tensor | None, z: Tensor | None) -> tuple[Tensor, Tensor]:
        prefix = token.unsqueeze(1) if state is None else torch.cat([state, token.unsqueeze(1)], 1)
        window = prefix[:, -self.receptive_field:]  # older inputs cannot reach the last position
        return self.hidden_states(window, z)[:, -1], prefix
