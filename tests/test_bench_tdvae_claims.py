"""The TD-VAE claims table's rows are valid runs and its tables read the summary right (a typo in a
row would otherwise surface an hour into the table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from aelab.data.base import DatasetInfo
from aelab.protocol import build_model, model_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tdvae_claims as claims  # noqa: E402


@pytest.mark.parametrize("row", list(claims.ROWS))
def test_every_row_is_a_valid_run(row):
    args = argparse.Namespace(data_dir="/nonexistent", epochs=None, max_steps=None)
    cfg = claims.run_config(row, 0, args)
    assert cfg.model == "tdvae" and cfg.trainer.seed == 0 and row in claims.LABELS
    assert cfg.trainer.epochs == claims.ROWS[row][2]
    shape = (cfg.data.frames, 1, 28, 28) if cfg.data.name == "moving-mnist" else (cfg.data.frames, 1, 1, 1)
    fitted = model_spec("tdvae").fit_to_data(cfg.model_config, DatasetInfo(name=cfg.data.name, shape=shape))
    model = build_model("tdvae", fitted)
    assert model.capabilities.sequence and model.config.max_jump == (1 if row == "onestep" else model.config.max_jump)
    # the evaluation looks this far ahead: context 10 + 5 (moving MNIST) or 10 (oscillator) steps
    assert claims.CONTEXT - 1 + (10 if row == "oscillator" else 5) < cfg.data.frames


def test_tables_and_targets_read_the_summary():
    stat = {"mean": 0.5, "sd": 0.1}
    keys = [f"{k}_dt{dt}" for dt in range(1, 11) for k in
            ("digit_acc", "position_err", "direction_acc", "copy_digit_acc", "copy_position_err", "copy_direction_acc",
             "mse", "kalman_mse", "copy_mse", "coverage", "kalman_coverage")]
    row = {k: stat for k in [*keys, "elbo_per_frame", "digit_acc_truth", "s_per_epoch"]} | {"epochs": {"mean": 50.0}}
    summary = {r: dict(row, label=claims.LABELS[r]) for r in claims.ROWS}
    text = claims.markdown(summary)
    assert text.count("| TD-VAE (jumps 1..5) | ") == 6 and "| 10 | 0.5000 ± 0.1000 |" in text
    t = claims.targets(summary)
    assert t["digit_acc_dt5 >= 0.9"]["met"] is False and t["oscillator mse_dt1 <= 1.2 x kalman"]["ratio"] == 1.0
