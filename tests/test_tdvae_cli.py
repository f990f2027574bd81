"""TD-VAE from the command line: train, rollout and eval on moving MNIST (real digits from
../shared/data) and on the oscillator, and the expected failures (one line each, exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_shared_data, run_aelab
from PIL import Image

from aelab.cli import main
from aelab.protocol import build_model

SMALL = ["--set", "model.belief_dim=16", "--set", "model.hidden=16", "--set", "model.latent_dim=2",
         "--set", "model.backbone.hidden=[32]", "--set", "trainer.batch_size=16", "--set", "trainer.log_every=2",
         "--set", "trainer.eval_limit=16"]


aelab = run_aelab


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
    """Two epochs of a tiny TD-VAE on 64 moving-MNIST sequences of real digits (4 steps each)."""
    data = require_shared_data()
    run = tmp_path_factory.mktemp("tdvae") / "run"
    proc = aelab("train", "tdvae", "--data", "moving-mnist", "--set", f"data.root={data}", "--set",
                 "data.train_subset=64", "--set", "data.test_subset=32", "--set", "trainer.epochs=2", *SMALL,
                 "--out", str(run))
    assert "sequences of shape (20, 1, 28, 28)" in proc.stdout and "epoch 2 step 8" in proc.stdout, proc.stdout
    assert "elbo_per_frame=" in proc.stdout
    return run


@pytest.fixture(scope="module")
def oscillator_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("osc") / "run"
    aelab("train", "tdvae", "--data", "oscillator", "--set", "data.frames=24", "--set", "data.sequences=64",
          "--set", "trainer.epochs=1", "--set", "model.max_jump=3", "--set", "model.likelihood.name=gaussian",
          *SMALL, "--out", str(run))
    return run


def test_training_writes_rollout_pictures_each_epoch(mnist_run):
    assert (mnist_run / "images" / "rollout_epoch002.png").is_file()


def test_rollout_writes_one_strip_per_jump_length(mnist_run, tmp_path):
    out = aelab("rollout", str(mnist_run), "--context", "10", "--jumps", "3", "--dt", "1,3", "--n", "4",
                "--out", str(tmp_path)).stdout
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rollout_c10_dt1x3.png", "rollout_c10_dt3x3.png"] and out.count("wrote ") == 2
    with Image.open(tmp_path / "rollout_c10_dt3x3.png") as im:  # 2 sequences x (truth + 4 samples) rows
        assert im.height > 10 * 28 * 2 and im.width > 13 * 28 * 2


def test_eval_prints_the_bound_per_frame(mnist_run):
    out = json.loads(aelab("eval", str(mnist_run), "--metrics", "sequence_bound", "--json").stdout)
    m = out["metrics"]
    assert set(m) == {"elbo_per_frame", "recon", "kl", "transition"}
    assert m["elbo_per_frame"] == pytest.approx(-(m["recon"] + m["kl"] + m["transition"]), rel=1e-4)


def test_oscillator_eval_has_the_kalman_and_copy_baselines(oscillator_run, tmp_path):
    out = aelab("eval", str(oscillator_run), "--limit", "40").stdout
    for key in ("elbo_per_frame", "mse_dt1", "kalman_mse_dt10", "copy_mse_dt10", "coverage_dt5",
                "kalman_coverage_dt1"):
        assert f"  {key} " in out, out
    aelab("rollout", str(oscillator_run), "--context", "10", "--jumps", "4", "--dt", "2", "--n", "20",
          "--sequences", "3", "--out", str(tmp_path))
    assert (tmp_path / "rollout_c10_dt2x4.png").is_file()


def test_resume_continues_a_stopped_run(mnist_run):
    proc = aelab("train", "--resume", str(mnist_run), "--set", "trainer.epochs=3")
    assert "epoch 3 step 12" in proc.stdout, proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--dt", "0"], "--dt: expected comma-separated jump lengths >= 1"),
    (["--dt", "a,b"], "--dt: expected comma-separated jump lengths >= 1"),
    (["--context", "20"], "--context must be 1..19"),
])
def test_rollout_errors_are_one_line(mnist_run, capsys, args, message):
    assert main(["rollout", str(mnist_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_commands_refuse_models_and_data_that_do_not_fit(tmp_path, capsys):
    run = tmp_path / "ae"
    build_model("ae", image_shape=(1, 28, 28), latent_dim=2, backbone={"hidden": (8,)}).save_pretrained(
        run, extra_config={"data": {"name": "mnist-10k", "root": str(require_shared_data())}})
    assert main(["rollout", str(run)]) == 2
    assert "model 'ae' has no sequences of frames to roll out (needed for aelab rollout)" in capsys.readouterr().err
    assert main(["train", "tdvae", "--data", "mnist-10k", "--set", f"data.root={require_shared_data()}",
                 "--out", str(tmp_path / "t")]) == 2
    assert "reads sequences of frames (T, C, H, W)" in capsys.readouterr().err
