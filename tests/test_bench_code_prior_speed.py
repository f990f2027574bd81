"""The code-prior speed benchmark's variants are valid ``aelab train-prior`` overrides, and its
table reads its results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from aelab.models import build_model
from aelab.runs import prior_run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import code_prior_speed as bench  # noqa: E402


@pytest.mark.parametrize("name", list(bench.VARIANTS))
def test_every_default_variant_is_a_valid_prior_run(name):
    vq = build_model("vqvae", image_shape=(1, 12, 12), num_codes=16, channels=(4, 8))
    cfg = prior_run_config(vq, "pixelcnn", bench.BASE + bench.VARIANTS[name])
    assert (cfg.model_config.channels, cfg.model_config.layers) == (64, 6)  # today's prior, whatever the recipe
    assert cfg.trainer.batch_size == 128
    want = {o.split("=")[0]: o.split("=")[1] for o in bench.VARIANTS[name]}
    assert cfg.trainer.precision == want.get("trainer.precision", "fp32")
    assert cfg.trainer.epochs == int(want.get("trainer.epochs", 5))
    assert cfg.trainer.lr == float(want.get("trainer.lr", 1e-3))


def test_variant_parses_name_and_overrides():
    assert bench.variant("fast=trainer.precision=bf16,trainer.epochs=2") == (
        "fast", ["trainer.precision=bf16", "trainer.epochs=2"])
    assert bench.variant("today=") == ("today", [])
    for bad in ("trainer.epochs", "=trainer.epochs=2"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=OVERRIDE"):
            bench.variant(bad)


def test_markdown_states_speed_up_and_bits_against_the_first_variant():
    rows = [{"variant": "today", "overrides": [], "epochs": [{}] * 5, "fit_seconds": 800.0, "train_seconds": 700.0,
             "bits_per_code": 4.33, "speedup": 1.0, "bits_per_code_delta": 0.0},
            {"variant": "fast", "overrides": ["trainer.precision=bf16"], "epochs": [{}] * 2, "fit_seconds": 200.0,
             "train_seconds": 180.0, "bits_per_code": 4.3, "speedup": 4.0, "bits_per_code_delta": -0.03}]
    table = bench.markdown(rows).splitlines()
    assert table[2] == "| today | (today) | 5 | 800 (700) | 4.3300 | 1.00x | +0.0000 |"
    assert table[3] == "| fast | trainer.precision=bf16 | 2 | 200 (180) | 4.3000 | 4.00x | -0.0300 |"
