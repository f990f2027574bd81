"""The disentanglement study's rows are valid runs, and its probe options do what they say
(``--set`` overrides a row's settings, ``--phase curves`` reads a run's curves)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from aelab.protocol import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import disentangle_study as study  # noqa: E402


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"data_dir": "/nonexistent", "steps": 300, "set": [], "runs": "", "curve_every": 100,
                                 **kw})


@pytest.mark.parametrize("row", list(study.MODELS))
def test_every_row_is_a_valid_run(row):
    cfg = study.run_config(row, 2, _args())
    assert cfg.model == study.MODELS[row][0] and cfg.trainer.seed == 2 and cfg.trainer.max_steps == 300
    model = build_model(cfg.model, cfg.model_config)
    assert model.latent_dim == 10


def test_set_overrides_a_rows_settings_after_the_study_defaults():
    assert study.setting("gamma=10") == ("gamma", 10) and study.setting("kind=ii") == ("kind", "ii")
    assert study.setting("hidden=[8, 8]") == ("hidden", [8, 8])
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        study.setting("gamma")
    default = study.run_config("annealed_vae", 0, _args()).model_config
    assert (default.gamma, default.c_steps) == (1000.0, 100)  # c_steps: a third of the steps
    probe = study.run_config("annealed_vae", 0, _args(set=[("gamma", 10), ("c_steps", 3667)])).model_config
    assert (probe.gamma, probe.c_steps, probe.c_max) == (10, 3667, 25.0)


def test_curves_reads_the_training_reconstruction_and_the_last_test_record(tmp_path):
    run = tmp_path / "annealed_vae" / "seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_config": {"gamma": 10.0, "c_max": 25.0, "c_steps": 100,
                                                                  "latent_dim": 10}}))
    lines = [{"step": s, "split": "train", "recon": 700.0 - s} for s in (100, 150, 200)]
    lines += [{"step": 200, "split": "test", "recon": 480.5, "kl": 3.25}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = study.curves("annealed_vae", 0, _args(runs=str(tmp_path)))
    assert out["settings"] == {"gamma": 10.0, "c_max": 25.0, "c_steps": 100}
    assert out["train_recon"] == {100: 600.0, 200: 500.0}  # every --curve-every steps
    assert out["test"] == {"step": 200, "recon": 480.5, "kl": 3.25}
    assert study.curves("vae", 1, _args(runs=str(tmp_path)))["missing"]
