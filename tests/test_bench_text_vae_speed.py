"""The text-VAE speed benchmark's own parts (cheap, no shared data): the plain-PyTorch reference
trains, and its weights ported into aelab's ``text_vae`` give the same function, so one
estimator can score both."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from aelab.data.text import Vocab, token_sequences

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import text_vae_speed as bench  # noqa: E402


def _data():
    sentences = [["a", "b", "c"], ["b"], ["c", "a", "a", "b", "c"], ["a", "c"], ["b", "b", "a", "c"]] * 3
    vocab = Vocab.build(sentences)
    return token_sequences(sentences, vocab), len(vocab)


def test_reference_trains_and_ports_to_text_vae():
    torch.manual_seed(0)
    data, v = _data()
    ref = bench.ReferenceSentenceVAE(v, 8, 16, 4)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        for target, lengths in bench.reference_batches(data, 5, g):
            loss = bench.reference_loss(ref, target, lengths)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    ported = bench.port_reference(ref, dict(vocab_size=v, max_len=6, embed_dim=8, hidden=16, latent_dim=4,
                                            posterior_scale="log_var"))
    assert bench.check_port(ref, ported, data) < 1e-4
    # the reference's training loss (sum NLL + analytic KL over the batch size) is aelab's objective
    ref.eval()
    ported.eval()
    torch.manual_seed(1)
    idx = torch.arange(5)
    target, lengths = data.ids[idx][:, : int(data.lengths[idx].max())], data.lengths[idx]
    ref_loss = bench.reference_loss(ref, target, lengths)
    torch.manual_seed(1)
    ours = ported.loss(data.get_batch(idx)).loss
    torch.testing.assert_close(ours, ref_loss, rtol=1e-5, atol=1e-4)
