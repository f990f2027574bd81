"""The sentence encoder's features: the last layer's final state at each sentence's last token."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from aelab.nn.sequence import SentenceEncoder


@pytest.mark.parametrize("bidirectional, layers", [(False, 1), (False, 2), (True, 1)])
def test_sentence_encoder_is_the_packed_final_state_and_ignores_padding(bidirectional, layers):
    torch.manual_seed(0)
    enc = SentenceEncoder(20, 8, 16, layers=layers, bidirectional=bidirectional)
    x = torch.tensor([[5, 6, 7, 3, 0, 0], [8, 3, 0, 0, 0, 0], [4, 4, 4, 4, 4, 3]])
    with torch.no_grad():
        f = enc(x)
        padded = enc(torch.cat([x, torch.zeros(3, 4, dtype=torch.long)], 1))
        packed = pack_padded_sequence(enc.embedding(x), x.ne(0).sum(1), batch_first=True, enforce_sorted=False)
        _, (h, _) = enc.lstm(packed)
    d = 2 if bidirectional else 1
    torch.testing.assert_close(f, h[-d:].transpose(0, 1).reshape(3, -1))
    torch.testing.assert_close(padded, f)
