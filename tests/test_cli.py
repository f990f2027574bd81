"""The command line as a user runs it, in subprocesses, on real data from ../shared/data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_aelab
from safetensors.torch import load_file

from aelab.training.checkpoint import STATE_NAME

SMALL = ["--set", "data.train_subset=600", "--set", "data.test_subset=200", "--set", "model.latent_dim=8",
         "--set", "model.backbone.hidden=64", "--set", "trainer.batch_size=50"]


aelab = run_aelab


def test_list():
    out = aelab("list").stdout
    for name in ("ae", "dae", "sparse_ae", "ksparse_ae", "cae", "fashion-mnist", "mnist", "dsprites", "folder",
                 "npz", "reconstruction", "linear_probe", "bernoulli", "gaussian"):
        assert f"  {name} " in out, name


def test_train_eval_reconstruct(tmp_path, shared_data):
    run = tmp_path / "run"
    proc = aelab("train", "ae", "--data", "fashion-mnist", *SMALL, "--set", "trainer.epochs=2", "--out", str(run))
    assert "epoch 2 step 24" in proc.stdout
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", STATE_NAME, "metrics.jsonl", "tensorboard", "images"} <= names
    assert (run / "images" / "reconstructions_epoch002.png").stat().st_size > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "ae" and cfg["model_config"]["latent_dim"] == 8 and cfg["data"]["name"] == "fashion-mnist"
    assert cfg["model_config"]["image_shape"] == [1, 28, 28]

    res = json.loads(aelab("eval", str(run), "--json").stdout)
    m = res["metrics"]
    assert 0 < m["mse"] < 0.2 and m["recon"] > 0 and 0.3 < m["probe_test_acc"] <= 1.0
    table = aelab("eval", str(run)).stdout
    assert "mse" in table and "probe_test_acc" in table

    out = tmp_path / "grid.png"
    aelab("reconstruct", str(run), "--n", "16", "--out", str(out))
    from PIL import Image

    with Image.open(out) as img:  # 8 per row, input + recon rows, enlarged x2
        assert img.size == (2 * (8 * 30 + 2), 2 * (4 * 30 + 2))

    # an existing run is never overwritten
    again = aelab("train", "ae", "--data", "fashion-mnist", *SMALL, "--out", str(run), check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.parametrize("model", [
    ["dae"],
    # with the speed options on: bfloat16 autocast, and the CAE's stochastic (Hutchinson) Jacobian penalty
    ["vae", "--set", "trainer.precision=bf16"],
    ["cae", "--set", "model.jacobian=hutchinson", "--set", "model.backbone.hidden=[64,32]"],
    # a conv VAE with its weights, batches and Adam moments in channels-last layout, under bf16
    ["vae", "--set", "model.backbone.kind=conv", "--set", "model.backbone.channels=[8,16]",
     "--set", "trainer.channels_last=true", "--set", "trainer.precision=bf16"],
], ids=["dae", "vae-bf16", "cae-hutchinson", "conv-vae-channels-last-bf16"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, shared_data, model):
    args = [model[0], "--data", "mnist-10k", *SMALL, "--set", "trainer.epochs=3", "--set", "trainer.checkpoint_every=5",
            "--set", "trainer.images=false", *model[1:]]
    full = tmp_path / "full"
    aelab("train", *args, "--out", str(full))

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "aelab.cli", "--threads", "1", "train", *args, "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / STATE_NAME
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                step = json.loads(__import__("safetensors").safe_open(str(state), "pt").metadata()["aelab"])["step"]
            except Exception:  # noqa: BLE001 - the file may be replaced while we read it
                continue
            if step >= 10:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    resumed = aelab("train", "--resume", str(run))
    assert "resuming" in resumed.stdout
    a, b = load_file(str(full / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


@pytest.mark.parametrize(("args", "message"), [
    (["train", "vae2"], "unknown model 'vae2'"),
    (["train", "ae", "--data", "imagenet"], "unknown data set 'imagenet'"),
    (["train", "ae", "--set", "model.latent_dims=3"], "unknown config key 'latent_dims'"),
    (["train", "ae", "--set", "trainer.epochs=many"], "epochs: expected int, got 'many'"),
    (["eval", "no/such/run"], "no/such/run: no such run directory or config file"),
])
def test_errors_are_clear(args, message, tmp_path):
    extra = ["--out", str(tmp_path / "r")] if args[0] == "train" else ["--json"]
    proc = aelab(*args, *extra, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_threads_before_or_after_the_command_and_python_dash_m():
    import subprocess
    import sys

    for argv in (["--threads", "1", "list"], ["list", "--threads", "1"]):
        out = subprocess.run([sys.executable, "-m", "aelab", *argv], capture_output=True, text=True, check=True)
        assert "models:" in out.stdout and "vqvae" in out.stdout
