"""The remedies table's rows are valid runs (every row's config builds its model; a typo in a row
would otherwise surface an hour into the table)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest

from aelab.protocol import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import text_claims as claims  # noqa: E402


@pytest.mark.parametrize("row", list(claims.ROWS))
def test_every_row_is_a_valid_run(row):
    args = argparse.Namespace(data_dir="/nonexistent", epochs=1, max_steps=None)
    cfg = claims.run_config(row, 0, args)
    assert cfg.model == claims.ROWS[row][0] and cfg.trainer.seed == 0 and row in claims.LABELS
    small = dataclasses.replace(cfg.model_config, vocab_size=30, embed_dim=8, hidden=8)
    model = build_model(cfg.model, small)
    assert model.capabilities.text
