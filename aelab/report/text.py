"""Looking at sentence models: your own sentences as token ids, decoded samples, the homotopy
between two sentences, and the figures of a text run (training curves, KL per latent dimension).

References:
    Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016 (the homotopy:
    greedy decodings along the line between two posterior means).

Example:
    >>> v = Vocab.build([["the", "cat", "sat"]])
    >>> x, unknown = encode_text(v, ["The cat ran", "cat"])
    >>> x.tolist(), unknown, decode_sentences(v, x)
    ([[6, 4, 1, 3], [4, 3, 0, 0]], [['ran'], []], ['the cat <unk>', 'cat'])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from aelab.data.base import Split
from aelab.data.text import EOS, Vocab
from aelab.metrics.latent import collect_latent_statistics, posterior_mean
from aelab.nn.modes import eval_mode, model_device
from aelab.protocol import Model, require
from aelab.report.figures import plot_kl_per_dimension, plot_training_curves

__all__ = ["decode_sentences", "encode_text", "homotopy", "write_text_figures"]

#: the active-unit threshold of :func:`aelab.metrics.latent.active_units` (Burda et al. 2016)
ACTIVE_THRESHOLD = 0.01


def encode_text(vocab: Vocab, texts: Sequence[str]) -> tuple[Tensor, list[list[str]]]:
    """Sentences typed by a user as padded ids ``(B, T)``, each ending in ``<eos>``.

    The tokens are the words separated by white space, lowercased (the corpora are lowercased;
    nothing else of their tokenisation is applied: PTB-tokenised corpora split ``don't`` into
    ``do n't``). Words the vocabulary lacks become ``<unk>`` and are returned per sentence.

    Raises:
        ValueError: a sentence without a word.
    """
    tokens = [t.lower().split() for t in texts]
    if not tokens or any(not s for s in tokens):
        raise ValueError("every sentence needs at least one word")
    ids = torch.zeros(len(tokens), max(len(s) for s in tokens) + 1, dtype=torch.long)  # <pad> = 0
    for i, s in enumerate(tokens):
        ids[i, : len(s) + 1] = torch.tensor([*vocab.encode(s), EOS])
    unknown = [[w for w in s if w not in vocab.index] for s in tokens]
    return ids, unknown


def decode_sentences(vocab: Vocab, ids: Tensor, empty: str = "<eos>") -> list[str]:
    """Each row of ids ``(B, L)`` as words up to its first ``<eos>`` (:meth:`Vocab.decode`); an
    empty sentence (``<eos>`` first) as ``empty``, so that a printed line is never blank."""
    return [vocab.decode(row.tolist()) or empty for row in ids]


@torch.no_grad()
def homotopy(model: nn.Module, x: Tensor, steps: int = 8, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Greedy decodings along the line between the posterior means of two sentences.

    ``z_t = (1 - t) mu_a + t mu_b`` for ``steps`` values of ``t`` evenly spaced in [0, 1], both
    ends included, each decoded greedily (the most likely word at every step), as Bowman et
    al. (2016, section 5.2) show what a sentence VAE's latent space holds between two sentences.
    At ``t = 0`` and ``t = 1`` the decodings are the greedy reconstructions of the two sentences
    (``z_0 = mu_a`` and ``z_1 = mu_b`` exactly).

    Args:
        model: a text VAE (``text`` inputs and a ``latent_prior``).
        x: the two sentences as padded ids ``(2, T)``.
        steps: points on the line, >= 2.
        max_len: the longest decoding (default: the model's ``max_len``).

    Returns:
        ``t`` ``(steps,)`` and the decoded ids ``(steps, L)``.

    References:
        Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016.
    """
    require(model, "latent_prior", "text", what="a homotopy between two sentences")
    if x.dim() != 2 or x.shape[0] != 2:
        raise ValueError(f"a homotopy runs between two sentences (2, T), got {tuple(x.shape)}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (both ends), got {steps}")
    with eval_mode(model):
        device = model_device(model)
        mu = posterior_mean(model.encode(x.to(device)))  # (2, D)
        t = torch.linspace(0.0, 1.0, steps, device=device)
        z = (1 - t)[:, None] * mu[0] + t[:, None] * mu[1]  # (steps, D)
        ids = model.decode(z).sample(max_len=max_len or model.config.max_len, temperature=0.0)
    return t.cpu(), ids.cpu()


def write_text_figures(model: Model, test: Split, out_dir: str | Path, metrics: str | Path | None = None,
                       limit: int | None = 5000, seed: int = 0) -> tuple[list[Path], list[str]]:
    """The figures of a text run in ``out_dir``; returns the paths written and notes on what was not drawn.

    The training curves of ``metrics`` (a run's ``metrics.jsonl``: the train reconstruction
    term and KL per logged step, the test NLL, perplexity, KL, mutual information and active
    units per evaluation; see :func:`aelab.report.figures.plot_training_curves`) and, for a text
    VAE, the bar chart of the KL per latent dimension on the test split (the ``kl_dim_*`` of
    :func:`aelab.metrics.latent.latent_diagnostics`, on a seeded subset of ``limit`` sentences).
    """
    require(model, "text", what="the figures of a text run")
    out = Path(out_dir)
    written, notes = [], []
    if metrics is not None and Path(metrics).is_file():
        written.append(plot_training_curves(metrics, out / "training_curves.png",
                                            title=f"Training curves of {model.name}"))
    if model.capabilities.latent_prior:
        stats = collect_latent_statistics(model, test, limit=limit, seed=seed)
        if stats.kl.dim() == 2:  # per dimension: factorised posteriors only (not an IAF's)
            active = stats.codes.double().var(0) > ACTIVE_THRESHOLD
            title = f"KL per latent dimension, {stats.codes.shape[0]} test sentences"
            written.append(plot_kl_per_dimension(stats.kl.mean(0), out / "kl_per_dim.png", title=title, active=active))
        else:
            notes.append("no KL per dimension: the posterior does not factorise over dimensions (a flow)")
    return written, notes
