"""Discrete-code generation from the command line: train vqvae / vqvae2, train-prior, sample, eval, figures.

Subprocesses on real Fashion-MNIST from ../shared/data, tiny models and subsets (a few seconds each).
The frechet metric's classifier is a tiny one (``--classifier``) cached in a temporary directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import run_aelab
from PIL import Image
from safetensors.torch import load_file

from aelab.cli import main

DATA = ["--set", "data.name=fashion-mnist", "--set", "data.train_subset=300", "--set", "data.test_subset=100"]
VQ = ["--set", "model.embedding_dim=8", "--set", "model.num_codes=16", "--set", "model.channels=8,16",
      "--set", "model.res_blocks=1", "--set", "model.res_channels=8", "--set", "trainer.batch_size=50",
      "--set", "trainer.epochs=1"]
PIXELCNN = ["--set", "prior.channels=8", "--set", "prior.layers=2", "--set", "trainer.batch_size=50"]
VQVAE2_PRIOR = ["--set", "prior.top.channels=8", "--set", "prior.top.heads=2", "--set", "prior.top.blocks=1",
                "--set", "prior.bottom.channels=8", "--set", "prior.bottom.layers=2",
                "--set", "prior.bottom.cond_channels=8", "--set", "trainer.batch_size=50", "--set", "trainer.epochs=1"]
#: the frechet metric's feature classifier, tiny (part of its cache key; cached per test session)
CLASSIFIER = ["--classifier", "channels=8", "--classifier", "epochs=1", "--classifier", "train_limit=1000",
              "--classifier", "test_limit=200", "--classifier", "feature_dim=16"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # never the default cache beside ../shared/data
    return os.environ | {"PYTHONWARNINGS": "error",
                         "AELAB_CLASSIFIER_DIR": str(tmp_path_factory.mktemp("classifiers"))}


def aelab(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_aelab(*args, env=env, check=check)


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory, env) -> Path:
    """A one-epoch VQ-VAE run on 300 Fashion-MNIST images (through the generic train command)."""
    data_dir = Path(os.environ["AELAB_DATA_DIR"])  # set by conftest.py
    if not (data_dir / "fashion-mnist.npz").is_file():
        pytest.fail(f"real data not found in {data_dir} (see the shared_data fixture)")
    run = tmp_path_factory.mktemp("vq") / "run"
    proc = aelab(env, "train", "vqvae", *DATA, *VQ, "--set", "trainer.images=false", "--out", str(run))
    assert "epoch 1 step 6" in proc.stdout
    return run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_vqvae_train_prior_sample_eval_figures(vq_run, tmp_path, env, capsys):
    run = _copy(vq_run, tmp_path / "run")
    proc = aelab(env, "train-prior", str(run), *PIXELCNN, "--set", "trainer.epochs=2")
    assert "training the pixelcnn code prior" in proc.stdout and "7x7 codes (K=16)" in proc.stdout
    assert "epoch 2 step 12: test nll=" in proc.stdout and "bits_per_code=" in proc.stdout
    prior = run / "prior"
    meta = json.loads((prior / "config.json").read_text())
    assert meta["model"] == "pixelcnn" and meta["model_config"]["num_codes"] == 16
    assert meta["model_config"]["grid_shape"] == [7, 7] and meta["model_config"]["channels"] == 8
    assert meta["trainer"]["epochs"] == 2 and len(meta["parent"]["weights_sha256"]) == 64
    records = [json.loads(ln) for ln in (prior / "metrics.jsonl").read_text().splitlines()]
    test_nll = [r["nll"] for r in records if r["split"] == "test"]
    assert len(test_nll) == 2 and all(math.isfinite(v) and v > 0 for v in test_nll)
    mode = stat.S_IMODE((prior / "config.json").stat().st_mode)
    assert stat.S_IMODE((prior / "model.safetensors").stat().st_mode) == mode  # not safetensors' 0600

    out = tmp_path / "samples.png"
    proc = aelab(env, "sample", str(run), "--n", "16", "--temperature", "0.7", "--seed", "3", "--out", str(out))
    assert "from the pixelcnn code prior at temperature 0.7" in proc.stdout and "images/s" in proc.stdout
    with Image.open(out) as img:  # 8 per row, 2 rows of 28 + 2 padding, enlarged x2
        assert img.size == (2 * (8 * 30 + 2), 2 * (2 * 30 + 2))
    again = tmp_path / "again.png"
    aelab(env, "sample", str(run), "--n", "16", "--temperature", "0.7", "--seed", "3", "--out", str(again))
    assert out.read_bytes() == again.read_bytes()  # seeded

    res = json.loads(aelab(env, "eval", str(run), "--json", "--metrics",
                           "frechet,code_likelihood,codebook", "--samples", "100", *CLASSIFIER).stdout)["metrics"]
    assert res["frechet_distance"] >= 0 and 1 <= res["classifier_score"] <= 10 and res["codes_used"] >= 1
    # the bound: reconstruction NLL + prior NLL of the codes, over C*H*W*ln 2 ("Bernoulli bits/dim")
    assert res["bits_per_dim_bernoulli"] == pytest.approx((res["recon_nll"] + res["prior_nll"]) / (784 * math.log(2)))
    assert res["prior_nll"] == pytest.approx(test_nll[-1], rel=1e-5)  # the same test codes the trainer scored
    assert "bits_per_dim" not in res

    # in-process from here on (the same main(), without another interpreter start)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # the defaults of a VQ run with a prior
    table = capsys.readouterr().out
    for key in ("mse", "perplexity", "dead_codes", "prior_nll", "bits_per_dim_bernoulli", "NOT comparable"):
        assert key in table, key
    assert "probe_test_acc" not in table and "linear_probe is skipped" in table

    assert main(["figures", str(run), "--out", str(tmp_path / "figures")]) == 0
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert names == {"reconstructions.png", "samples.png", "training_curves.png"}
    assert "no latent traversals" in capsys.readouterr().out


def test_vqvae2_train_prior_sample_eval(tmp_path, env, shared_data):
    run = tmp_path / "run2"
    aelab(env, "train", "vqvae2", *DATA, *VQ, "--set", "model.top_channels=8", "--set", "trainer.images=false",
          "--out", str(run))
    proc = aelab(env, "train-prior", str(run), *VQVAE2_PRIOR)
    assert "training the vqvae2_prior code prior" in proc.stdout and "3x3 + 7x7 codes" in proc.stdout
    assert "nll_top=" in proc.stdout and "nll_bottom=" in proc.stdout
    cfg = json.loads((run / "prior" / "config.json").read_text())["model_config"]
    assert cfg["top"]["grid_shape"] == [3, 3] and cfg["bottom"]["grid_shape"] == [7, 7]
    assert cfg["bottom"]["cond_codes"] == 16 and cfg["bottom"]["cond_shape"] == [3, 3]

    proc = aelab(env, "sample", str(run), "--n", "8")
    assert "from the vqvae2_prior code prior at temperature 1" in proc.stdout
    assert (run / "figures" / "samples.png").stat().st_size > 0

    res = json.loads(aelab(env, "eval", str(run), "--json", "--metrics", "frechet,code_likelihood",
                           "--samples", "100", *CLASSIFIER).stdout)["metrics"]
    assert res["frechet_distance"] >= 0 and res["prior_nll"] > 0 and res["recon_nll"] > 0
    assert res["prior_bits_per_code"] == pytest.approx(res["prior_nll"] / ((9 + 49) * math.log(2)))


def test_train_prior_resume_is_exact(vq_run, tmp_path, env):
    full, split = _copy(vq_run, tmp_path / "full"), _copy(vq_run, tmp_path / "split")
    args = [*PIXELCNN, "--set", "trainer.checkpoint_every=4"]
    aelab(env, "train-prior", str(full), *args, "--set", "trainer.epochs=2")
    aelab(env, "train-prior", str(split), *args, "--set", "trainer.epochs=1")
    again = aelab(env, "train-prior", str(split), *args, check=False)  # never overwrites a prior
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr
    proc = aelab(env, "train-prior", str(split), "--resume", "--set", "trainer.epochs=2")
    assert "resuming the pixelcnn code prior" in proc.stdout and "epoch 2 step 12" in proc.stdout
    a, b = load_file(str(full / "prior" / "model.safetensors")), load_file(str(split / "prior" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k

    def test_records(run: Path) -> list[dict]:
        rows = [json.loads(ln) for ln in (run / "prior" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_second")}
                for r in rows if r["split"] == "test"]

    assert test_records(full) == test_records(split)


def _run(path: Path, name: str) -> Path:
    """A saved (untrained) run of a model with continuous latents: no discrete codes."""
    from aelab.models import build_model

    model = build_model(name, image_shape=(1, 28, 28), latent_dim=2, backbone={"hidden": (8,)})
    model.save_pretrained(path, extra_config={"data": {"name": "fashion-mnist"}})
    return path


@pytest.mark.parametrize(("command", "message"), [
    (["train-prior", "{ae}"], "is a 'ae' run, which has no discrete codes; train-prior needs a vqvae or vqvae2 run"),
    (["train-prior", "{missing}"], "no such run directory"),
    (["train-prior", "{empty}"], "not an aelab run directory"),
    (["train-prior", "{vq}", "--set", "prior.chanels=8"], "unknown config key 'chanels'"),
    (["train-prior", "{vq}", "--set", "model.latent_dim=8"], "must start with prior. or trainer."),
    (["train-prior", "{vq}", "--set", "prior.num_codes=8"], "come from the VQ model"),
    (["train-prior", "{vq}", "--name", "vqvae2_prior"], "does not fit a model with 1 code grid"),
    (["train-prior", "{vq}", "--resume"], "no prior to resume"),
    (["sample", "{vq}"], "has no code prior"),
    (["sample", "{vq}"], "aelab train-prior"),
    (["eval", "{vq}", "--metrics", "frechet"], "needs the run's code prior"),
    (["eval", "{vq}", "--metrics", "likelihood"], "needs a continuous prior"),
    (["sample", "{ae}"], "has no prior to sample from"),
    (["sample", "{vae}", "--temperature", "0.5"], "--temperature applies to the code priors"),
])
def test_errors_are_clear(command, message, vq_run, tmp_path, capsys):
    paths = {"ae": _run(tmp_path / "ae", "ae"), "vae": _run(tmp_path / "vae", "vae"),
             "vq": _copy(vq_run, tmp_path / "vq"), "missing": tmp_path / "nope", "empty": tmp_path / "empty"}
    paths["empty"].mkdir()
    assert main(["--threads", "1", *[c.format(**paths) for c in command]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (paths["vq"] / "prior").exists()  # nothing half-written
