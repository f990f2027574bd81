"""Metrics of sentence models: NLL and perplexity, -ELBO and KL, greedy-reconstruction accuracy and BLEU.

Perplexity is ``exp(total NLL / tokens)`` with every sentence's ``<eos>`` counted as a token (the
usual convention of the text-VAE literature, e.g. Bowman et al. 2016, He et al. 2019). For a VAE
the NLL is the importance-weighted bound with ``k`` samples (an upper bound on ``-log p(x)`` in
expectation that tightens with ``k``); for a language model it is exact.

The pure functions (:func:`corpus_bleu`, :func:`token_accuracy`, :func:`perplexity`) take token
lists or tensors; the wrappers encode and decode a :class:`~aelab.data.text.TokenSequences`
split in length-sorted batches (little padding), on a private seeded RNG stream.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from aelab.batch import Batch
from aelab.data.base import DataSplits, Split, random_subset
from aelab.data.text import PAD, TokenSequences
from aelab.losses.terms import kl_per_example
from aelab.metrics.latent import latent_diagnostics
from aelab.metrics.likelihood import iwae_and_elbo
from aelab.nn.modes import evaluation
from aelab.protocol import Model, require
from aelab.registry import EPOCH_EVALUATIONS, METRICS

__all__ = ["corpus_bleu", "perplexity", "sentence_batches", "text_evaluation", "text_likelihood",
           "text_reconstruction", "token_accuracy"]

#: decoder states held at once when scoring importance samples: (samples x tokens x width) floats
#: (the logits are reduced block by block, :meth:`~aelab.nn.sequence.SentenceDecoder.token_nll`)
STATE_BUDGET = 1 << 22


def perplexity(total_nll: float, tokens: int) -> float:
    """``exp(total_nll / tokens)``; a model uniform over V tokens has perplexity V.

    Example:
        >>> round(perplexity(10 * math.log(50), 10), 6)
        50.0
    """
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    return math.exp(total_nll / tokens)


def _ngrams(tokens: Sequence[Any], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[Sequence[Any]], references: Sequence[Sequence[Any]], max_n: int = 4) -> float:
    """Corpus BLEU with one reference per hypothesis (Papineni et al. 2002), in [0, 1].

    Clipped n-gram precisions for n = 1..max_n summed over the corpus, their geometric mean
    (uniform weights), times the brevity penalty ``exp(1 - r / c)`` when the hypotheses are
    shorter in total (c) than the references (r). No smoothing: a corpus with no matching
    n-gram of some order scores 0, as in ``sacrebleu``'s ``smooth_method="none"``.

    References:
        Papineni, Roukos, Ward & Zhu, "BLEU: a Method for Automatic Evaluation of Machine
        Translation", ACL 2002.

    Example:
        >>> corpus_bleu([["the", "cat", "sat", "down"]], [["the", "cat", "sat", "down"]])
        1.0
        >>> round(corpus_bleu([["the", "cat"]], [["the", "cat", "sat", "down"]], max_n=2), 4)
        0.3679
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    matched, total = [0] * max_n, [0] * max_n
    c = r = 0
    for hyp, ref in zip(hypotheses, references):
        c, r = c + len(hyp), r + len(ref)
        for n in range(1, max_n + 1):
            h, rf = _ngrams(hyp, n), _ngrams(ref, n)
            matched[n - 1] += sum(min(k, rf[g]) for g, k in h.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if c == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = min(0.0, 1.0 - r / c)
    return math.exp(log_precision + brevity)


def token_accuracy(hypotheses: Tensor, references: Tensor) -> dict[str, float]:
    """Fraction of reference tokens (``<eos>`` included, padding not) matched at the same position.

    Args:
        hypotheses: ids ``(B, L)``; shorter or longer than the references is fine.
        references: padded ids ``(B, T)``.

    Example:
        >>> token_accuracy(torch.tensor([[5, 6, 3]]), torch.tensor([[5, 7, 3, 0]]))
        {'token_accuracy': 0.6666666666666666, 'tokens': 3.0}
    """
    t = references.shape[1]
    hyp = torch.full_like(references, PAD)
    w = min(t, hypotheses.shape[1])
    hyp[:, :w] = hypotheses[:, :w]
    mask = references.ne(PAD)
    n = int(mask.sum())
    return {"token_accuracy": float((hyp.eq(references) & mask).sum()) / max(n, 1), "tokens": float(n)}


def sentence_batches(data: Split, batch_size: int) -> Iterator[Batch]:
    """Every sentence once, in batches of similar length (little padding); others in order."""
    order = (torch.sort(data.lengths, stable=True).indices if isinstance(data, TokenSequences)
             else torch.arange(len(data)))
    for i in range(0, len(data), batch_size):
        yield data.get_batch(order[i : i + batch_size])


def _strip(ids: Tensor) -> list[list[int]]:
    """Token lists without padding (``<eos>`` kept: ending the sentence is part of reconstructing it)."""
    return [[int(t) for t in row if int(t) != PAD] for row in ids]


def text_reconstruction(model: Model, data: Split, batch_size: int = 200, limit: int | None = 1000,
                        seed: int = 0) -> dict[str, float]:
    """Greedy decoding from the posterior mean against the input: token accuracy and corpus BLEU-4.

    Each hypothesis is decoded up to the input's length (``<eos>`` included) and compared with
    the input, ``<eos>`` counted as a token.
    """
    require(model, "reconstruct", "text", what="reconstructions of sentences")
    data = random_subset(data, limit, seed)
    hyps: list[list[int]] = []
    refs: list[list[int]] = []
    hits = tokens = 0.0
    with evaluation(model, seed) as device:
        for batch in sentence_batches(data, batch_size):
            x = batch.x.to(device)
            rec = model.reconstruct(x)
            acc = token_accuracy(rec, x)
            hits += acc["token_accuracy"] * acc["tokens"]
            tokens += acc["tokens"]
            hyps += _strip(rec)
            refs += _strip(x)
    return {"recon_token_accuracy": hits / max(tokens, 1.0), "recon_bleu": corpus_bleu(hyps, refs)}


def text_likelihood(model: Model, data: Split, k: int = 500, limit: int | None = None, batch_size: int = 50,
                    seed: int = 0) -> dict[str, float]:
    """NLL per sentence and perplexity; for a VAE also -ELBO, its perplexity and the KL.

    Args:
        model: ``text_vae`` (IWAE bound with ``k`` samples) or ``text_lm`` (exact).
        data: a split of sentences.
        k: importance samples per sentence (VAEs).
        limit: a seeded random subset of this many sentences (``None``: all).
        batch_size: sentences per encoder pass.
        seed: seeds the subset and the samples.

    Returns:
        ``nll`` (nats per sentence), ``ppl``, ``tokens`` (per sentence); VAEs also ``neg_elbo``
        and ``ppl_elbo`` (the k-sample ELBO estimate), ``kl`` (analytic where it exists) and
        ``nll_iwae_k{K}`` (the same number as ``nll``, named by its k).
    """
    require(model, "text", what="a sentence likelihood")
    data = random_subset(data, limit, seed)
    is_vae = model.capabilities.latent_prior
    sums = {"nll": 0.0, "neg_elbo": 0.0, "kl": 0.0}
    n = tokens = 0
    with evaluation(model, seed) as device:
        for batch in sentence_batches(data, batch_size):
            x = batch.x.to(device)
            b, t = x.shape
            n, tokens = n + b, tokens + int(x.ne(PAD).sum())
            if not is_vae:
                sums["nll"] += model.decode(b).nll(x).double().sum().item()
                continue
            chunk = max(1, STATE_BUDGET // (b * t * model.decoder.hidden))
            iwae, elbo_k = iwae_and_elbo(model, x, k, chunk)
            sums["nll"] -= iwae.double().sum().item()
            sums["neg_elbo"] -= elbo_k.double().sum().item()
            qz_x = model.encode(x, encoding=False)  # the KL itself (free bits change the loss, not it)
            sums["kl"] += kl_per_example(qz_x, model.prior(), qz_x.rsample()).double().sum().item()
    out = {"nll": sums["nll"] / n, "ppl": perplexity(sums["nll"], tokens), "tokens": tokens / n}
    if is_vae:
        out |= {f"nll_iwae_k{k}": out["nll"], "neg_elbo": sums["neg_elbo"] / n,
                "ppl_elbo": perplexity(sums["neg_elbo"], tokens), "kl": sums["kl"] / n}
    return out


@METRICS.register("text_likelihood")
def text_likelihood_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Test NLL per sentence and perplexity (IWAE bound for text VAEs), -ELBO and KL.

    The registered form of :func:`text_likelihood` on the test split.
    """
    return text_likelihood(model, splits.test, **options)


@METRICS.register("text_reconstruction")
def text_reconstruction_metric(model: nn.Module, splits: DataSplits, **options: Any) -> dict[str, float]:
    """Token accuracy and BLEU of greedy reconstructions from the posterior mean (test split).

    The registered form of :func:`text_reconstruction`.
    """
    return text_reconstruction(model, splits.test, **options)


@EPOCH_EVALUATIONS.register("text")
def text_evaluation(model: Model, data: Split, cfg: Any) -> dict[str, float]:
    """The text families' evaluation on the test split (``cfg.eval_limit`` sentences at most).

    NLL and perplexity (a VAE's from ``cfg.iwae_k`` importance samples on ``cfg.iwae_limit``
    sentences, its -ELBO and KL from the same samples); for VAEs also KL per dimension, active
    units and mutual information (``cfg.diagnostics``) and greedy-reconstruction accuracy and BLEU.
    """
    limit = cfg.eval_limit
    if not model.capabilities.latent_prior:
        return text_likelihood(model, data, limit=limit, batch_size=cfg.eval_batch_size)
    k = max(cfg.iwae_k, 1)
    out = text_likelihood(model, data, k=k, limit=min(cfg.iwae_limit, limit or cfg.iwae_limit),
                          batch_size=max(1, min(cfg.eval_batch_size, 100)))
    out.pop(f"nll_iwae_k{k}", None)
    out["iwae_k"] = float(k)
    if cfg.diagnostics:
        out |= latent_diagnostics(model, data, cfg.eval_batch_size, limit=limit, mi_limit=min(limit or 1000, 1000))
    return out | text_reconstruction(model, data, limit=min(limit or 500, 500))
