"""Figures: written, valid PNGs of the expected pixel sizes; wired into the trainer and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import fit_until_interrupted
from PIL import Image

from aelab.cli import main
from aelab.data.base import TensorImageDataset
from aelab.models import build_model
from aelab.report.figures import (
    decoded_manifold,
    latent_traversal,
    plot_image_rows,
    plot_kl_per_dimension,
    plot_latent_scatter,
    plot_training_curves,
    write_run_figures,
)
from aelab.training.trainer import Trainer, TrainerConfig

SHAPE = (1, 12, 10)
NAMES = ("zero", "one", "two")


def _size(path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def _data(n: int, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorImageDataset(torch.randint(0, 256, (n, *SHAPE), generator=g, dtype=torch.uint8),
                              torch.randint(0, 3, (n,), generator=g))


def _vae(latent_dim: int = 2):
    torch.manual_seed(0)
    return build_model("vae", image_shape=SHAPE, latent_dim=latent_dim, backbone={"hidden": (16,)})


def test_plots_have_fixed_pixel_sizes(tmp_path):
    assert _size(plot_kl_per_dimension([0.5, 0.0, 2.0, 1.0, 0.1, 0.3], tmp_path / "kl.png",
                                       active=[True, False, True, True, True, False])) == (700, 450)
    assert _size(plot_kl_per_dimension(torch.rand(60), tmp_path / "kl60.png")) == (200 + 22 * 60, 450)
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randn(300, 2, generator=g), torch.randint(0, 3, (300,), generator=g)
    path = plot_latent_scatter(codes, labels, tmp_path / "scatter.png", "codes", NAMES, max_points=100)
    assert _size(path) == (900, 700)
    assert _size(plot_latent_scatter(codes, None, tmp_path / "scatter0.png", "codes")) == (900, 700)
    # 3 x 5 images of 8 x 6 pixels, pad 2: a 32 x 42 grid, twice enlarged, plus label margins
    images = torch.rand(3, 5, 1, 8, 6)
    path = plot_image_rows(images, tmp_path / "rows.png", "rows", row_labels=["a", "b", "c"],
                           col_labels=list("vwxyz"), xlabel="x")
    assert _size(path) == (42 * 2 + 150 + 30, 32 * 2 + 110 + 25)


def test_training_curves(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": s, "epoch": 0, "split": "train", "loss": 100.0 - s} for s in range(1, 40)]
    records += [{"step": s, "epoch": e, "split": "test", "loss": 90.0 - s, "mse": 0.1, "kl_total": 5.0,
                 "mutual_info": 3.0, "active_units": 4.0, "neg_elbo": 80.0, "nll_iwae_k100": 79.0}
                for e, s in enumerate((13, 26, 39))]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _size(plot_training_curves(metrics, tmp_path / "curves.png")) == (3 * 520, 600)
    # a plain autoencoder's log: no latent panel
    metrics.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("kl_total", "mutual_info",
                                                                                   "active_units")}) + "\n"
                               for r in records))
    assert _size(plot_training_curves(metrics, tmp_path / "curves_ae.png")) == (2 * 520, 600)


@torch.no_grad()
def test_traversal_and_manifold_tensors():
    model = _vae(3).eval()
    x = torch.rand(1, *SHAPE)
    images = latent_traversal(model, x, [2, 0], torch.linspace(-3, 3, 5))
    assert images.shape == (2, 5, *SHAPE) and images.min() >= 0 and images.max() <= 1
    # row 0 decodes the example's code with z_2 swept and the other dimensions at their means
    mu = model.encode(x, encoding=False).mean
    z = mu.repeat(5, 1)
    z[:, 2] = torch.linspace(-3, 3, 5)
    torch.testing.assert_close(images[0], model.decode(z).mean.clamp(0, 1))
    with pytest.raises(ValueError, match="2-D latent"):
        decoded_manifold(model)
    grid, q = decoded_manifold(_vae(2).eval(), n=4)
    assert grid.shape == (4, 4, *SHAPE) and q.shape == (4, 2) and (q.diff(dim=0) > 0).all()


def test_write_run_figures_for_a_2d_vae(tmp_path):
    paths = write_run_figures(_vae(2), _data(50), tmp_path, class_names=NAMES, n_dims=8)
    names = {p.name for p in paths}
    assert names == {"traversals.png", "samples.png", "kl_per_dim.png", "manifold.png", "latent_scatter.png"}
    # 2 rows (D = 2) x 11 steps of 12 x 10 images, enlarged twice
    assert _size(tmp_path / "traversals.png") == ((11 * 12 + 2) * 2 + 180, (2 * 14 + 2) * 2 + 135)
    assert _size(tmp_path / "manifold.png") == ((20 * 12 + 2) + 180, (20 * 14 + 2) + 135)
    with pytest.raises(ValueError, match="no prior"):
        write_run_figures(build_model("ae", image_shape=SHAPE, latent_dim=2), _data(10), tmp_path)


def _cfg(**kw) -> TrainerConfig:
    base = dict(epochs=2, batch_size=16, checkpoint_every=3, log_every=1, progress=False, seed=3, iwae_k=10,
                iwae_limit=20)
    return TrainerConfig(**(base | kw))


def test_trainer_writes_diagnostics_and_pictures_and_resumes_exactly(tmp_path):
    train, test = _data(64), _data(40, seed=1)
    full = Trainer(_vae(2), train, test, _cfg(), run_dir=tmp_path / "a")
    full.class_names = NAMES
    metrics = full.fit()
    expected = {"kl_dim_0", "kl_dim_1", "kl_total", "active_units", "mutual_info", "neg_elbo", "nll_iwae_k10"}
    assert expected <= set(metrics)
    images = tmp_path / "a" / "images"
    for stem in ("traversals", "manifold", "latent_scatter", "samples", "reconstructions"):
        assert (images / f"{stem}_epoch002.png").stat().st_size > 0, stem

    # interrupted mid-epoch 2 and resumed: the same weights and the same metrics log
    first = Trainer(_vae(2), train, test, _cfg(), run_dir=tmp_path / "b")
    fit_until_interrupted(first, 6)
    resumed = Trainer(_vae(2), train, test, _cfg(), run_dir=tmp_path / "b")
    resumed.fit(resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    strip = lambda p: [{k: v for k, v in json.loads(ln).items() if k not in ("seconds", "samples_per_second")}  # noqa: E731
                       for ln in p.read_text().splitlines()]
    assert strip(tmp_path / "a" / "metrics.jsonl") == strip(tmp_path / "b" / "metrics.jsonl")


def test_trainer_diagnostics_can_be_turned_off():
    cfg = _cfg(epochs=1, diagnostics=False, iwae_k=0, images=False)
    metrics = Trainer(_vae(2), _data(32), _data(20, seed=1), cfg).fit()
    assert "kl_total" not in metrics and not any(k.startswith("nll_iwae") for k in metrics)
    with pytest.raises(ValueError, match="iwae_k"):
        TrainerConfig(iwae_k=-1)


def test_cli_eval_figures_sample_traverse(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["--set", "data.train_subset=300", "--set", "data.test_subset=100", "--set", "model.latent_dim=4",
             "--set", "model.backbone.hidden=32", "--set", "trainer.batch_size=50", "--set", "trainer.epochs=1",
             "--set", "trainer.iwae_k=5"]
    env = os.environ | {"PYTHONWARNINGS": "error"}
    cmd = [sys.executable, "-m", "aelab.cli", "--threads", "1"]
    proc = subprocess.run([*cmd, "train", "vae", "--data", "fashion-mnist", *small, "--out", str(run)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "nll_iwae_k5=" in proc.stdout and "kl_dim_0" not in proc.stdout  # per-dim KLs only in the log
    assert (run / "images" / "traversals_epoch001.png").stat().st_size > 0

    proc = subprocess.run([*cmd, "eval", str(run), "--json", "--k", "20", "--limit", "30"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)["metrics"]
    assert {"neg_elbo", "nll_iwae_k20", "kl_total", "kl_dim_0", "kl_dim_3", "active_units", "mutual_info", "mse",
            "probe_test_acc"} <= set(m)
    assert "bits_per_dim" not in m  # Bernoulli likelihood on grey values
    assert 0 < m["nll_iwae_k20"] <= m["neg_elbo"] and 0 <= m["active_units"] <= 4

    assert main(["eval", str(run), "--metrics", "likelihood,latent_diagnostics", "--k", "3", "--limit", "10"]) == 0
    out = capsys.readouterr().out
    assert "nll_iwae_k3" in out and "kl per dimension" in out and "no bits_per_dim" in out
    assert main(["figures", str(run)]) == 0
    assert {"traversals.png", "samples.png", "kl_per_dim.png", "training_curves.png"} <= {
        p.name for p in (run / "figures").iterdir()}
    assert main(["sample", str(run), "--n", "12", "--nrow", "6", "--out", str(tmp_path / "s.png")]) == 0
    assert _size(tmp_path / "s.png") == (2 * (6 * 30 + 2), 2 * (2 * 30 + 2))
    assert main(["traverse", str(run), "--index", "7", "--dims", "3,1", "--steps", "5"]) == 0
    assert _size(run / "figures" / "traversal_7.png") == ((5 * 30 + 2) * 2 + 180, (2 * 30 + 2) * 2 + 135)
    assert main(["traverse", str(run), "--dims", "9"]) == 2  # a clear error, no traceback
    assert "--dims must be in [0, 4)" in capsys.readouterr().err
