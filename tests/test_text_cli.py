"""Text VAEs from the command line: sample, reconstruct, interpolate, eval, figures and their errors.

One tiny ``text_vae`` run on a subset of the real fortunes corpus (../shared/data), trained once per
module through ``aelab train``; the commands run on it in subprocesses, the expected failures
in-process (one line each, exit code 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import require_shared_data, run_aelab
from PIL import Image

from aelab.cli import main
from aelab.metrics.suite import check_metrics, default_metrics, metric_options
from aelab.protocol import build_model
from aelab.report.text import homotopy

TINY = ["--set", "data.train_subset=640", "--set", "data.test_subset=100", "--set", "data.min_count=3",
        "--set", "data.max_vocab=2000", "--set", "data.max_len=20", "--set", "trainer.epochs=2",
        "--set", "trainer.batch_size=32", "--set", "trainer.log_every=2", "--set", "trainer.iwae_k=3",
        "--set", "model.hidden=32", "--set", "model.embed_dim=16", "--set", "model.latent_dim=8"]
A, B = "i love you .", "the cat sat on the zyzzyva ."


aelab = run_aelab


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """Two epochs of a tiny text VAE on 640 fortunes sentences (20 steps each, evaluated twice)."""
    data = require_shared_data()
    if not (data / "fortunes-train.txt").is_file():
        pytest.fail(f"fortunes-train.txt not found in {data} (the project's shared data)")
    run = tmp_path_factory.mktemp("text") / "run"
    proc = aelab("train", "text_vae", "--data", "fortunes", *TINY, "--out", str(run))
    assert "epoch 2 step 40" in proc.stdout, proc.stdout
    return run


def _saved(path: Path, name: str, data: str, **cfg) -> Path:
    """A saved, untrained run of model ``name`` (enough for the commands that need no data)."""
    build_model(name, **cfg).save_pretrained(path, extra_config={"data": {"name": data}})
    return path


def test_sample_prints_n_sentences_seeded(text_run, capsys):
    lines = aelab("sample", str(text_run), "--n", "7").stdout.splitlines()
    assert len(lines) == 7 and all(line.strip() for line in lines), lines
    for temperature in ("0.7", "0"):  # in-process: the same seed draws the same sentences
        runs = []
        for _ in range(2):
            assert main(["sample", str(text_run), "--n", "4", "--seed", "3", "--temperature", temperature]) == 0
            runs.append(capsys.readouterr().out)
        assert runs[0] == runs[1] and len(runs[0].splitlines()) == 4


def test_reconstruct_and_interpolate(text_run):
    rec = aelab("reconstruct", str(text_run), "--text", A, "--text", B.upper()).stdout
    inputs = [ln.removeprefix("input:").strip() for ln in rec.splitlines() if ln.startswith("input:")]
    outputs = [ln.removeprefix("reconstruction:").strip() for ln in rec.splitlines()
               if ln.startswith("reconstruction:")]
    assert inputs == [A, "the cat sat on the <unk> ."]  # lowercased; the unknown word named
    assert "read as <unk>: zyzzyva" in rec and len(outputs) == 2
    proc = aelab("interpolate", str(text_run), A, B, "--steps", "5")
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and [ln.split("  ", 1)[0] for ln in lines] == ["0.000", "0.250", "0.500", "0.750",
                                                                          "1.000"]
    assert [lines[0].split("  ", 1)[1], lines[-1].split("  ", 1)[1]] == outputs  # t = 0, 1: a's and b's
    # greedy reconstructions
    assert "zyzzyva" in proc.stderr
    # without --text: random test sentences, seeded
    pairs = aelab("reconstruct", str(text_run), "--n", "3", "--seed", "1").stdout
    assert pairs.count("input:") == 3 and pairs.count("reconstruction:") == 3


def test_eval_prints_the_text_table(text_run):
    out = aelab("eval", str(text_run), "--k", "4", "--limit", "30").stdout
    for row in ("nll", "ppl", "neg_elbo", "kl", "mutual_info", "active_units", "recon_token_accuracy", "recon_bleu"):
        assert any(ln.split()[:1] == [row] for ln in out.splitlines()), (row, out)
    assert "IWAE bound with k=4" in out and "30 random test sentences" in out and "100 sentences" in out


def test_eval_under_bfloat16_is_close_to_float32_and_says_so(text_run):
    fp32 = json.loads(aelab("eval", str(text_run), "--k", "4", "--limit", "20", "--metrics", "text_likelihood",
                            "--json").stdout)
    out = aelab("eval", str(text_run), "--k", "4", "--limit", "20", "--metrics", "text_likelihood",
                "--precision", "bf16").stdout
    bf16 = json.loads(aelab("eval", str(text_run), "--k", "4", "--limit", "20", "--metrics", "text_likelihood",
                            "--precision", "bf16", "--json").stdout)
    assert "bf16 autocast" in out and fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    a, b = fp32["metrics"], bf16["metrics"]
    assert a["nll"] != b["nll"]  # it did run in bfloat16 ...
    assert b["nll"] == pytest.approx(a["nll"], abs=0.05)  # ... and the sentence NLL barely moves
    assert b["kl"] == pytest.approx(a["kl"], abs=1e-4)  # the posterior and KL stay in float32


def test_figures_writes_curves_and_kl_chart(text_run):
    out = aelab("figures", str(text_run)).stdout
    for name in ("training_curves.png", "kl_per_dim.png"):
        path = text_run / "figures" / name
        assert f"wrote {path}" in out
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 700


@pytest.mark.parametrize(("metric", "why"), [("reconstruction", "no image inputs"),
                                             ("linear_probe", "no image inputs"),
                                             ("frechet", "no image inputs")])
def test_image_metric_on_a_text_run_is_one_line(text_run, metric, why, capsys):
    assert main(["eval", str(text_run), "--metrics", f"text_likelihood,{metric}"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1, err  # before any work: no table
    assert f"metric {metric!r}" in err and why in err and "text_likelihood" in err


@pytest.mark.parametrize(("name", "data", "cfg", "message"), [
    ("vae", "fashion-mnist", {"image_shape": (1, 28, 28), "latent_dim": 2, "backbone": {"hidden": (8,)}},
     "has no token-sequence inputs (needed for aelab interpolate"),
    ("text_lm", "fortunes", {"vocab_size": 20, "embed_dim": 8, "hidden": 8},
     "has no prior p(z) over a continuous latent (needed for aelab interpolate"),
])
def test_interpolate_needs_a_text_vae(tmp_path, capsys, name, data, cfg, message):
    run = _saved(tmp_path / name, name, data, **cfg)
    assert main(["interpolate", str(run), A, B]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_metrics_follow_declared_capabilities():
    vae = build_model("text_vae", vocab_size=20, embed_dim=8, hidden=8, latent_dim=3)
    lm = build_model("text_lm", vocab_size=20, embed_dim=8, hidden=8)
    image_vae = build_model("vae", image_shape=(1, 4, 4), latent_dim=2, backbone={"hidden": (8,)})
    assert default_metrics(vae, None) == ["text_likelihood", "latent_diagnostics", "text_reconstruction"]
    assert default_metrics(lm, None) == ["text_likelihood"]
    check_metrics(vae, default_metrics(vae, None), "text_vae")
    for model, metric in ((lm, "text_reconstruction"), (lm, "latent_diagnostics"), (image_vae, "text_likelihood"),
                          (vae, "disentanglement"), (vae, "likelihood")):
        with pytest.raises(ValueError, match=f"metric '{metric}'"):
            check_metrics(model, [metric], model.name)
    assert metric_options("text_likelihood", k=None)["k"] == 500 and metric_options("likelihood")["k"] == 1000
    options = metric_options("text_likelihood", k=7, limit=30)
    assert (options["k"], options["limit"]) == (7, 30)
    assert metric_options("text_reconstruction", limit=30)["limit"] == 30


def test_homotopy_ends_at_the_posterior_means():
    model = build_model("text_vae", vocab_size=20, embed_dim=8, hidden=16, latent_dim=3, max_len=9).eval()
    x = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    t, ids = homotopy(model, x, steps=4)
    assert torch.allclose(t, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])) and ids.shape[0] == 4 and ids.shape[1] <= 9
    rec = model.reconstruct(x, max_len=9)
    strip = lambda rows: [[int(i) for i in row if i != 0] for row in rows]  # noqa: E731
    assert strip(ids[[0, 3]]) == strip(rec)
    with pytest.raises(ValueError, match="steps must be >= 2"):
        homotopy(model, x, steps=1)
