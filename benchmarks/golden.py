"""Bit-identity fingerprints of seeded runs, to compare the library before and after a refactor.

Runs, through the command line (so the same script works across API changes):
  quickstart  ``aelab train --config configs/quickstart.json`` (final losses, weights hash)
  vae         a seeded 2-epoch VAE on a Fashion-MNIST subset (weights + trainer-state hashes)
  vqvae       a seeded VQ-VAE on an MNIST subset, then its PixelCNN code prior (hashes of both)
  claim2      ``decomposition_claims.py dsprites --seeds 0`` (the metric scores), with --claim2

  python benchmarks/golden.py --out /tmp/golden.json [--claim2]

Hashes are of the weights only (safetensors tensors, not file metadata), so they compare the
arithmetic and the random numbers; they hold on one host and thread count (kernels differ
between hosts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("AELAB_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def tensors_sha(path: Path) -> str:
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        h.update(k.encode())
        h.update(v.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def aelab(*args: str) -> None:
    env = dict(os.environ, AELAB_DATA_DIR=DATA)
    subprocess.run([sys.executable, "-m", "aelab", "--threads", "2", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, cwd=ROOT)


def last_records(run: Path) -> dict:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    train = [r for r in recs if r["split"] == "train"]
    test = [r for r in recs if r["split"] == "test"]
    drop = ("seconds", "samples_per_second", "time")
    return {"train": {k: v for k, v in train[-1].items() if k not in drop} if train else None,
            "test": {k: v for k, v in test[-1].items() if k not in drop}}


def state_file(run: Path) -> Path:
    return run / "trainer_state.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--claim2", action="store_true")
    p.add_argument("--only", default="quickstart,vae,vqvae")
    args = p.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        only = args.only.split(",")
        if "quickstart" in only:
            run = tmp / "qs"
            aelab("train", "--config", "configs/quickstart.json", "--out", str(run), "--set", "trainer.progress=false")
            result["quickstart"] = {"weights": tensors_sha(run / "model.safetensors"), **last_records(run)}
        if "vae" in only:
            run = tmp / "vae"
            aelab("train", "vae", "--data", "fashion-mnist", "--out", str(run), "--set", "data.train_subset=3000",
                  "--set", "data.test_subset=500", "--set", "trainer.epochs=2", "--set", "trainer.seed=3",
                  "--set", "trainer.checkpoint_every=7", "--set", "trainer.progress=false",
                  "--set", "model.beta=linear(0,1,30)")
            result["vae"] = {"weights": tensors_sha(run / "model.safetensors"),
                             "state": tensors_sha(state_file(run)), **last_records(run)}
        if "vqvae" in only:
            run = tmp / "vq"
            aelab("train", "vqvae", "--data", "mnist-10k", "--out", str(run), "--set", "data.train_subset=1000",
                  "--set", "data.test_subset=200", "--set", "trainer.epochs=1", "--set", "trainer.progress=false",
                  "--set", "model.num_codes=32", "--set", "model.channels=16,32")
            aelab("train-prior", str(run), "--set", "trainer.epochs=1", "--set", "prior.channels=16",
                  "--set", "prior.layers=2", "--set", "trainer.progress=false")
            result["vqvae"] = {"weights": tensors_sha(run / "model.safetensors"), **last_records(run),
                               "prior_weights": tensors_sha(run / "prior" / "model.safetensors"),
                               "prior": last_records(run / "prior")}
    if args.claim2:
        out = Path(args.out).with_suffix(".claim2.json")
        subprocess.run([sys.executable, "benchmarks/decomposition_claims.py", "dsprites", "--seeds", "0",
                        "--data-dir", DATA, "--save", str(out)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        runs = json.loads(out.read_text())["runs"]
        result["claim2"] = runs
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
