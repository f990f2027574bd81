"""The pythae benchmarks' own parts: the statistics of ``vae_vs_pythae.py`` (t quantiles, pooling
seeds of two runs) and the plain-torch replica of pythae's VAE in ``vae_pythae_streams.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.batch import Batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vae_pythae_streams as streams  # noqa: E402
import vae_vs_pythae as bench  # noqa: E402


@pytest.mark.parametrize("df, exact", [(1, 12.706), (5, 2.571), (10, 2.228), (19, 2.093), (30, 2.042),
                                       (60, 2.000), (120, 1.980)])
def test_t95_matches_tables(df, exact):
    # reference values: the two-sided 95% points of Student's t in any statistics table
    assert bench.t95(df) == pytest.approx(exact, abs=1.5e-3)


def _report(seed: int, ratio: float, d_elbo: float, d_nll: float) -> dict:
    side = {"seconds_per_epoch": 1.0, "test_neg_elbo": 240.0, "test_iwae_nll": 236.0}
    return {"benchmark": "vae_vs_pythae", "data": "fashion-mnist", "train_size": 60000, "test_size": 10000,
            "network": "mlp", "epochs": 5, "threads": 2, "precision": {"aelab": "fp32", "pythae": "fp32"},
            "neg_elbo_test_size": 10000, "iwae_k": 1000, "iwae_test_size": 2000,
            "versions": {"aelab": "0", "torch": "2", "pythae": "0.1.2", "pythae_side_torch": "2"},
            "seed": seed, "aelab_over_pythae_samples_per_second": ratio,
            "results": {"aelab": side, "pythae": side},
            "aelab_minus_pythae": {"neg_elbo": {"mean": d_elbo, "stderr": 0.05},
                                   "iwae_nll": {"mean": d_nll, "stderr": 0.05}}}


def test_summary_interval_uses_t_with_n_minus_1_df():
    diffs = [0.3, -0.1, 0.2, 0.0, 0.1]
    s = bench.summarise([_report(i, 2.0 + d, -d, d) for i, d in enumerate(diffs)])
    nll = s["aelab_minus_pythae_over_seeds"]["iwae_nll"]
    mean, sd = sum(diffs) / 5, (sum((d - 0.1) ** 2 for d in diffs) / 4) ** 0.5
    assert nll["mean"] == pytest.approx(mean) and nll["sd"] == pytest.approx(sd)
    assert nll["ci95"][1] - mean == pytest.approx(2.776 * sd / 5**0.5, rel=1e-3)
    assert s["targets"] == {"mean_samples_per_second_ratio_at_least_2x": True, "mean_neg_elbo_no_worse": True,
                            "mean_iwae_nll_no_worse": False, "iwae_nll_not_significantly_worse": True}


def test_pooling_two_runs_equals_one_run_of_all_seeds(tmp_path):
    reports = [_report(i, 2.0 + 0.01 * i, 0.1 - 0.03 * i, 0.05 - 0.02 * i) for i in range(6)]
    whole = bench.summarise(reports)
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(bench.summarise(reports[:4])))
    bench.pool_check(earlier, [4, 5], {"epochs": 5, "iwae_k": 1000})
    pooled, source = bench.earlier_seeds(earlier, reports[4])
    both = bench.summarise(reports[4:], pooled, source)
    assert both["seeds"] == list(range(6)) and source["seeds"] == [0, 1, 2, 3]
    for key in ("aelab_over_pythae_samples_per_second", "aelab_minus_pythae_over_seeds", "targets", "per_seed"):
        assert both[key] == whole[key]


def test_pooling_refuses_other_settings_or_repeated_seeds(tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(bench.summarise([_report(i, 2.0, 0.0, 0.1 * i) for i in range(3)])))
    with pytest.raises(SystemExit, match="seeds \\[2\\] are in that file already"):
        bench.pool_check(earlier, [2, 3], {})
    with pytest.raises(SystemExit, match="epochs differs: this run 4, that file 5"):
        bench.pool_check(earlier, [3], {"epochs": 4})
    other = _report(3, 2.0, 0.0, 0.0)
    other["versions"]["pythae"] = "0.1.1"
    with pytest.raises(SystemExit, match="versions.pythae differs"):
        bench.earlier_seeds(earlier, other)
    single = tmp_path / "single.json"
    single.write_text(json.dumps(_report(0, 2.0, 0.0, 0.0)))
    with pytest.raises(SystemExit, match="not a several-seed result"):
        bench.pool_check(single, [1], {})


@pytest.mark.parametrize("switches", [set(), {"head", "onednn"}])
def test_replica_weights_rebuild_the_same_function_in_aelab(switches):
    torch.manual_seed(0)
    replica = streams.PythaeVAE(switches)
    model = bench.aelab_from_pythae(replica.pythae_weights())
    x = torch.rand(5, 1, 28, 28)
    h = replica.encoder.net(x.reshape(5, -1))
    if "head" in switches:
        mu, log_var = replica.encoder.head(h).chunk(2, dim=-1)
    else:
        mu, log_var = replica.encoder.embedding(h), replica.encoder.log_var(h)
    qz = model.encode(x)
    torch.testing.assert_close(qz.mean, mu)
    torch.testing.assert_close(2 * qz.base_dist.scale.log(), log_var)
    logits = replica.decoder.net(mu)
    torch.testing.assert_close(model.decode(mu).base_dist.logits.reshape(5, -1), logits)


def test_replica_loss_is_the_same_objective_with_either_cross_entropy():
    torch.manual_seed(0)
    plain = streams.PythaeVAE(set())
    from_logits = streams.PythaeVAE({"logits"})
    from_logits.load_state_dict(plain.state_dict())
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    a = plain.loss(x)
    torch.manual_seed(1)
    b = from_logits.loss(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)
    # and aelab's VAE with the same weights and the same noise computes the same -ELBO
    model = bench.aelab_from_pythae(plain.pythae_weights()).train()
    torch.manual_seed(1)
    torch.testing.assert_close(model.loss(Batch(x)).loss, b, rtol=1e-5, atol=1e-3)


def test_arms_are_parsed_or_refused():
    assert streams.parse_arm("aelab") is None
    assert streams.parse_arm("pythae+logits+fused") == {"logits", "fused"}
    with pytest.raises(SystemExit, match="pythae\\[\\+logits"):
        streams.parse_arm("pythae+float16")


def test_streams_pool_keeps_the_asked_arms_and_refuses_mismatches(tmp_path):
    settings = {"epochs": 5, "iwae_k": 1000, "iwae_test_size": 1000, "reference": "pythae"}
    runs = [{"seed": s, "arm": a, "neg_elbo": 240.0, "iwae_nll": 236.0} for s in (0, 1)
            for a in ("pythae", "aelab", "pythae+fused")]
    earlier = tmp_path / "a.json"
    earlier.write_text(json.dumps({**settings, "arms": ["pythae", "aelab", "pythae+fused"], "runs": runs}))
    kept = streams.read_earlier(earlier, settings, ["pythae", "aelab"], [2, 3])
    assert {(r["seed"], r["arm"]) for r in kept} == {(s, a) for s in (0, 1) for a in ("pythae", "aelab")}
    with pytest.raises(SystemExit, match="seeds \\[1\\] are in that file already"):
        streams.read_earlier(earlier, settings, ["pythae", "aelab"], [1, 2])
    with pytest.raises(SystemExit, match="iwae_k differs: this run 100, that file 1000"):
        streams.read_earlier(earlier, {**settings, "iwae_k": 100}, ["pythae", "aelab"], [2])
    with pytest.raises(SystemExit, match="has no runs of arms \\['pythae\\+onednn'\\]"):
        streams.read_earlier(earlier, settings, ["pythae", "pythae+onednn"], [2])
    summary = streams.paired_over_seeds(kept, "aelab", "pythae")
    assert summary["seeds"] == 2 and summary["iwae_nll"]["mean"] == 0.0


# --- the conv network: pythae's Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST ----------------
#: pythae 0.1.2's parameter and buffer shapes (pythae/models/nn/benchmarks/mnist/convnets.py, latent 16)
PYTHAE_CONV_SHAPES = {
    **{f"encoder.layers.{i}.{k}": s for i, (cin, cout) in enumerate([(1, 128), (128, 256), (256, 512),
                                                                      (512, 1024)])
       for k, s in {"0.weight": (cout, cin, 4, 4), "0.bias": (cout,), "1.weight": (cout,), "1.bias": (cout,),
                    "1.running_mean": (cout,), "1.running_var": (cout,), "1.num_batches_tracked": ()}.items()},
    "encoder.embedding.weight": (16, 1024), "encoder.embedding.bias": (16,),
    "encoder.log_var.weight": (16, 1024), "encoder.log_var.bias": (16,),
    "decoder.layers.0.weight": (16384, 16), "decoder.layers.0.bias": (16384,),
    **{f"decoder.layers.{j}.{k}": s for j, (cin, cout) in enumerate([(1024, 512), (512, 256)], start=1)
       for k, s in {"0.weight": (cin, cout, 3, 3), "0.bias": (cout,), "1.weight": (cout,), "1.bias": (cout,),
                    "1.running_mean": (cout,), "1.running_var": (cout,), "1.num_batches_tracked": ()}.items()},
    "decoder.layers.3.0.weight": (256, 1, 3, 3), "decoder.layers.3.0.bias": (1,),
}


class _PythaeConvReplica(torch.nn.Module):
    """pythae's two benchmark conv nets in plain torch, module names and all (for tests without pythae)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        enc = [nn.Sequential(nn.Conv2d(a, b, 4, 2, padding=1), nn.BatchNorm2d(b), nn.ReLU())
               for a, b in [(1, 128), (128, 256), (256, 512), (512, 1024)]]
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(enc)
        self.encoder.embedding, self.encoder.log_var = nn.Linear(1024, 16), nn.Linear(1024, 16)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([
            nn.Linear(16, 1024 * 4 * 4),
            nn.Sequential(nn.ConvTranspose2d(1024, 512, 3, 2, padding=1), nn.BatchNorm2d(512), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(512, 256, 3, 2, padding=1, output_padding=1), nn.BatchNorm2d(256),
                          nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(256, 1, 3, 2, padding=1, output_padding=1), nn.Sigmoid())])

    def reference(self, x: torch.Tensor) -> dict:
        h = x
        for layer in self.encoder.layers:
            h = layer(h)
        h = h.reshape(x.shape[0], -1)
        mu, log_var = self.encoder.embedding(h), self.encoder.log_var(h)
        out = self.decoder.layers[0](mu).reshape(x.shape[0], 1024, 4, 4)
        for layer in self.decoder.layers[1:]:
            out = layer(out)
        return {"mu": mu.numpy(), "log_var": log_var.numpy(), "probs_at_mu": out.numpy()}


def _trained_looking(module: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
            m.num_batches_tracked.fill_(7)


def test_aelab_conv_replica_has_pythae_parameters_and_shapes():
    replica = _PythaeConvReplica()
    assert {k: tuple(v.shape) for k, v in replica.state_dict().items()} == PYTHAE_CONV_SHAPES
    model = bench.aelab_from_pythae({k: v.numpy() for k, v in replica.state_dict().items()}, "conv")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in replica.parameters())
    buffers = [b for n, b in model.named_buffers() if "running" in n]
    assert sum(b.numel() for b in buffers) == 2 * sum(c for c in (128, 256, 512, 1024, 512, 256))
    assert not model.training


def test_conv_transfer_rebuilds_the_same_function_in_eval_mode():
    torch.manual_seed(0)
    replica = _PythaeConvReplica()
    _trained_looking(replica)
    replica.eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        ref = replica.reference(x)
    model = bench.aelab_from_pythae({k: v.numpy() for k, v in replica.state_dict().items()}, "conv")
    assert bench.transfer_error(model, x, ref) < 1e-5
    for name, buf in model.named_buffers():  # the running statistics came over
        if name.endswith("running_var"):
            assert not torch.allclose(buf, torch.ones_like(buf))


PYTHAE_PYTHON = bench.venv_python(bench.default_venv())
_PYTHAE_CONV_SCRIPT = """
import sys, numpy as np, torch
from pythae.models import VAEConfig
from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST
torch.manual_seed(0)
cfg = VAEConfig(input_dim=(1, 28, 28), latent_dim=16)
enc, dec = Encoder_Conv_VAE_MNIST(cfg), Decoder_Conv_AE_MNIST(cfg)
g = torch.Generator().manual_seed(0)
for m in [*enc.modules(), *dec.modules()]:
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
enc.eval(); dec.eval()
x = torch.rand(2, 1, 28, 28, generator=g)
with torch.no_grad():
    e = enc(x); p = dec(e.embedding).reconstruction
w = {**{"encoder." + k: v.numpy() for k, v in enc.state_dict().items()},
     **{"decoder." + k: v.numpy() for k, v in dec.state_dict().items()}}
np.savez(sys.argv[1] + "/w.npz", **w)
np.savez(sys.argv[1] + "/ref.npz", x=x.numpy(), mu=e.embedding.numpy(), log_var=e.log_covariance.numpy(),
         probs_at_mu=p.numpy())
"""


@pytest.mark.skipif(not PYTHAE_PYTHON.is_file(), reason="no pythae venv (benchmarks/vae_vs_pythae.py makes it)")
def test_conv_transfer_from_real_pythae_nets(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(PYTHAE_PYTHON), "-c", _PYTHAE_CONV_SCRIPT, str(tmp_path)], check=True, env=env,
                   capture_output=True)
    with np.load(tmp_path / "w.npz") as w, np.load(tmp_path / "ref.npz") as ref:
        weights, ref = dict(w), dict(ref)
    assert {k: tuple(v.shape) for k, v in weights.items()} == PYTHAE_CONV_SHAPES
    x = torch.from_numpy(ref.pop("x"))
    assert bench.transfer_error(bench.aelab_from_pythae(weights, "conv"), x, ref) < 1e-5
