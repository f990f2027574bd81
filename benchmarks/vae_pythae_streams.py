"""Benchmark: is aelab's VAE arithmetic as good as pythae's, random numbers held fixed?

``vae_vs_pythae.py`` compares the two libraries as users run them: each draws its own initial
weights, batch order and reparameterisation noise from the seed. The likelihood of a 5-epoch
VAE then varies by ~0.15-0.3 nats from seed to seed, so a small systematic difference is hard to
tell from which random numbers each side happened to draw. This benchmark separates the two.

``pythae`` here is a replica of what pythae 0.1.2's ``BaseTrainer`` computes for the benchmark's
VAE (the same modules in the same order, ``torch.manual_seed`` before building the model, pythae's
``set_seed`` before training, its ``DataLoader(shuffle=True)``, ``torch.optim.Adam``, the sigmoid
decoder with ``binary_cross_entropy``, its KL and reparameterisation), written in plain torch so
it runs in aelab's environment. It is pythae's computation bit for bit: its test -ELBO for seed
0 is 243.82545471191406, the very number ``vae_vs_pythae.py`` gets from pythae itself.

Arms (``--arms``, comma-separated): ``aelab`` is aelab's ``Trainer`` and ``vae`` exactly as in
``vae_vs_pythae.py``; ``pythae`` is the replica; ``pythae+X+Y`` is the replica with aelab's way of
doing X and Y:

* ``logits``: the Bernoulli NLL from logits (``binary_cross_entropy_with_logits``), not sigmoid
  then ``binary_cross_entropy`` (same random numbers);
* ``fused``: aelab's Adam (torch's fused kernel; same random numbers);
* ``onednn``: aelab's ``Linear`` (float32 products on oneDNN where large; same random numbers);
* ``head``: one 512 -> 32 layer for [mu; log-variance] instead of two 512 -> 16 layers (the
  initial draws of the encoder's output layer are arranged differently);
* ``order``: aelab's batch order (``epoch_order``, its own generator) instead of the DataLoader's
  (other batch orders, and the noise stream no longer shifted by the DataLoader's draws).

The first arm is the reference: every other arm's test -ELBO, IWAE NLL and bound gap (-ELBO
minus NLL: how loose the bound is) are compared with it seed by seed (paired differences, mean,
standard error and 95% interval over seeds). Arms that keep the
random numbers (``logits``, ``fused``, ``onednn``) measure arithmetic alone; the others also
change which random numbers are drawn and so vary like a change of seed.

Scoring is ``vae_vs_pythae.py``'s (aelab's estimators, the same noise for every arm): -ELBO with
one sample on the whole test split, IWAE NLL with ``--k`` samples on a seeded random
``--test-subset`` of it. One thread per process by default; each arm trains in about 20-35 s
and scores in about 10 s on this machine.

Usage:
    python benchmarks/vae_pythae_streams.py --seeds 0-19 --arms pythae,pythae+logits+fused,pythae+onednn
    python benchmarks/vae_pythae_streams.py --seeds 20-59 --arms pythae,aelab --save results/...json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vae_vs_pythae as bench  # noqa: E402

from aelab.data.base import (  # noqa: E402
    DataConfig,
    epoch_order,  # noqa: E402
    load_data,
)
from aelab.io import atomic_write_text  # noqa: E402
from aelab.models import Autoencoder  # noqa: E402
from aelab.nn.linear import Linear  # noqa: E402
from aelab.training import optim  # noqa: E402

SWITCHES = ("logits", "fused", "onednn", "head", "order")
LATENT, HIDDEN, PIXELS = 16, 512, 784


class PythaeVAE(nn.Module):
    """The benchmark's VAE as pythae builds it (module names are pythae's state-dict keys)."""

    def __init__(self, switches: set[str]) -> None:
        super().__init__()
        layer = Linear if "onednn" in switches else nn.Linear
        self.switches = switches
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.net = nn.Sequential(layer(PIXELS, HIDDEN), nn.ReLU())
        if "head" in switches:
            self.encoder.head = layer(HIDDEN, 2 * LATENT)
        else:
            self.encoder.embedding = layer(HIDDEN, LATENT)
            self.encoder.log_var = layer(HIDDEN, LATENT)
        self.decoder.net = nn.Sequential(layer(LATENT, HIDDEN), nn.ReLU(), layer(HIDDEN, PIXELS))

    def loss(self, x: Tensor) -> Tensor:
        """pythae's ``VAE.loss_function`` (mean over the batch of BCE summed over pixels + KL)."""
        x = x.reshape(x.shape[0], -1)
        h = self.encoder.net(x)
        if "head" in self.switches:
            mu, log_var = self.encoder.head(h).chunk(2, dim=-1)
        else:
            mu, log_var = self.encoder.embedding(h), self.encoder.log_var(h)
        std = torch.exp(0.5 * log_var)
        z = mu + torch.randn_like(std) * std
        logits = self.decoder.net(z)
        if "logits" in self.switches:
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        else:
            recon = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum(-1)
        kld = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp(), dim=-1)
        return (recon + kld).mean(dim=0)

    def pythae_weights(self) -> dict[str, np.ndarray]:
        w = {k: v.detach().numpy() for k, v in self.state_dict().items()}
        if "head" in self.switches:
            weight, bias = w.pop("encoder.head.weight"), w.pop("encoder.head.bias")
            w |= {"encoder.embedding.weight": weight[:LATENT], "encoder.log_var.weight": weight[LATENT:],
                  "encoder.embedding.bias": bias[:LATENT], "encoder.log_var.bias": bias[LATENT:]}
        return w


def train_pythae(data, seed: int, epochs: int, switches: set[str]) -> Autoencoder:
    """pythae's training of the benchmark's VAE (with ``switches`` made aelab's), as an aelab model."""
    torch.manual_seed(seed)  # vae_vs_pythae's pythae side seeds before building the model
    model = PythaeVAE(switches)
    random.seed(seed)  # pythae's trainer_utils.set_seed, called by BaseTrainer.prepare_training
    np.random.seed(seed)
    torch.manual_seed(seed)
    opt = (optim.Adam if "fused" in switches else torch.optim.Adam)(model.parameters(), lr=bench.LR)
    x_train = data.train.x.float().div_(255.0)
    n = len(x_train)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_train), batch_size=bench.BATCH_SIZE,
                                         shuffle=True)
    for epoch in range(epochs):
        if "order" in switches:
            order = epoch_order(n, seed, epoch)
            batches = (x_train[order[i:i + bench.BATCH_SIZE]] for i in range(0, n, bench.BATCH_SIZE))
        else:
            batches = (xb for (xb,) in loader)
        for xb in batches:  # BaseTrainer.train_step / _optimizers_step
            loss = model.loss(xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
    return bench.aelab_from_pythae(model.pythae_weights())


def parse_arm(arm: str) -> set[str] | None:
    """``aelab`` -> None; ``pythae+a+b`` -> {a, b}."""
    if arm == "aelab":
        return None
    base, *switches = arm.split("+")
    unknown = [s for s in switches if s not in SWITCHES]
    if base != "pythae" or unknown:
        raise SystemExit(f"--arms: expected aelab or pythae[+{'|'.join(SWITCHES)}...], got {arm!r}")
    return set(switches)


def paired_over_seeds(rows: list[dict], arm: str, reference: str) -> dict:
    """``arm`` minus ``reference``, seed by seed, for the -ELBO, the NLL and the bound gap (-ELBO
    minus NLL: how loose the bound is); ``worse_in``: seeds where the difference is > 0."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted(s for (a, s) in by if a == arm and (reference, s) in by)
    if len(seeds) < 2:
        return {"seeds": len(seeds)}

    def figures(r: dict) -> dict[str, float]:
        return {"neg_elbo": r["neg_elbo"], "iwae_nll": r["iwae_nll"], "bound_gap": r["neg_elbo"] - r["iwae_nll"]}

    out: dict = {"seeds": len(seeds)}
    for key in ("neg_elbo", "iwae_nll", "bound_gap"):
        d = [figures(by[arm, s])[key] - figures(by[reference, s])[key] for s in seeds]
        out[key] = {**bench.over_seeds(d), "worse_in": sum(v > 0 for v in d)}
    return out


def read_earlier(path: Path, settings: dict, arms: list[str], seeds: list[int]) -> list[dict]:
    """The runs of an earlier JSON of this benchmark, checked to be the same experiment."""
    try:
        earlier = json.loads(path.read_text())
        runs = earlier["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--pool {path}: not a JSON written by this benchmark ({e!r})") from None
    for key, mine in settings.items():
        bench.same_or_exit(path, key, mine, earlier.get(key))
    if missing := [a for a in arms if a not in earlier.get("arms", [])]:
        raise SystemExit(f"--pool {path}: has no runs of arms {missing}")
    if both := sorted(set(seeds) & {r["seed"] for r in runs}):
        raise SystemExit(f"--pool {path}: seeds {both} are in that file already")
    return [r for r in runs if r["arm"] in arms]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0-3", help="e.g. 0-19 or 0,5,7; empty: none (only summarise --pool files)")
    p.add_argument("--arms", default="pythae,aelab", help="comma-separated; the first is the reference")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--k", type=int, default=1000, help="IWAE samples per image")
    p.add_argument("--test-subset", type=int, default=1000, help="images for the IWAE NLL (seeded per seed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(bench.SHARED_DATA)))
    p.add_argument("--pool", type=Path, action="append", default=[],
                   help="an earlier JSON of this benchmark with the same settings and arms: its runs are "
                        "summarised with this run's (seeds must not repeat; may be given several times)")
    p.add_argument("--save", type=Path, default=None, help="also write the JSON summary here")
    args = p.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    switches = {arm: parse_arm(arm) for arm in arms}
    if len(arms) < 2:
        p.error("--arms: give at least two (the first is the reference)")
    seeds = bench.parse_seeds(args.seeds) if args.seeds.strip() else []
    if not seeds and not args.pool:
        p.error("--seeds: empty, and no --pool to summarise")
    settings = {"epochs": args.epochs, "iwae_k": args.k, "iwae_test_size": args.test_subset, "reference": arms[0]}
    earlier: list[dict] = []
    for path in args.pool:
        earlier += read_earlier(path, settings, arms, seeds + [r["seed"] for r in earlier])
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name="fashion-mnist", root=args.data_dir))
    x_test = data.test.get_batch(torch.arange(len(data.test))).x
    rows: list[dict] = list(earlier)
    for seed in seeds:
        idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:args.test_subset]
        for arm in arms:
            t0 = time.perf_counter()
            if switches[arm] is None:
                ns = argparse.Namespace(seed=seed, epochs=args.epochs, precision="fp32", turn_steps=10**9)
                model = bench.train_aelab(data, ns, other_turn=lambda: None)[0]
            else:
                model = train_pythae(data, seed, args.epochs, switches[arm])
            t1 = time.perf_counter()
            s = bench.score(model, x_test, x_test[idx], args.k, seed)
            row = {"seed": seed, "arm": arm, "neg_elbo": float(s["neg_elbo"].mean()),
                   "iwae_nll": float(s["iwae_nll"].mean()), "train_seconds": round(t1 - t0, 2)}
            bench.log(json.dumps(row))
            rows.append(row)
    report = {
        "benchmark": "vae_pythae_streams", "data": "fashion-mnist", **settings,
        "neg_elbo_test_size": len(data.test), "threads": args.threads, "arms": arms,
        "seeds": sorted({r["seed"] for r in rows}),
        "minus_reference": {arm: paired_over_seeds(rows, arm, arms[0]) for arm in arms[1:]},
        "runs": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.save is not None:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    main()
