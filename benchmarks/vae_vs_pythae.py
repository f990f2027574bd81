"""Benchmark: aelab's VAE against pythae 0.1.2's, trained side by side in one run.

Both sides train the same network (``--network mlp``, the default: MLP 784-512-16 with ReLU;
``--network conv``: pythae's own benchmark networks for MNIST-sized images, see below; either with
a diagonal Gaussian q(z|x), a standard normal prior, Bernoulli likelihood on [0, 1] pixels; the
encoder's scale output is a log-variance on both sides, ``model.posterior_scale=log_var`` in aelab)
on Fashion-MNIST with Adam 1e-3 (constant, betas 0.9/0.999, no weight decay), batch 100, for
``--epochs`` epochs on ``--threads`` threads, and the same seed for initialisation and data order
(each library uses it in its own way). Each library runs with its own defaults otherwise: aelab's
Trainer uses PyTorch's fused Adam kernel, pythae the per-tensor loop; the same algorithm (both
optimizers are printed in the JSON).

The conv networks are pythae's ``Encoder_Conv_VAE_MNIST`` and ``Decoder_Conv_AE_MNIST``
(``pythae.models.nn.benchmarks.mnist``), latent 16: four Conv2d(k4, s2, p1) stages of 128, 256,
512, 1024 channels, each with BatchNorm and ReLU (28 -> 14 -> 7 -> 3 -> 1), then the mean and
log-variance layers; the decoder is Linear(16, 1024*4*4), then ConvTranspose2d(k3, s2, p1) stages
1024 -> 512 -> 256 -> 1 (4 -> 7 -> 14 -> 28), BatchNorm and ReLU after the first two, a sigmoid
at the end. aelab trains the same network built from its shared conv backbone (``CONV_MODEL``:
``batch_norm``, ``decoder_channels``, ``decoder_kernel=3``, no activation after the decoder's
dense layer). Both sides train in train mode (BatchNorm on batch statistics) and are scored in
eval mode (the running statistics, which the weight transfer carries over).

pythae is a comparison, not a dependency: it is installed with pip into its own virtual
environment (``--venv``, outside the repository; created on first use, reused after) with torch
pinned to the version aelab runs on, and trained there in a subprocess by ``_pythae_side.py``.

The two trainings run in one go but never at the same time: they take turns on the machine every
``--turn-steps`` optimizer steps (pythae first), each side idle (blocked on a pipe) while the
other computes. On a shared machine, load from other processes then falls on both sides alike,
which back-to-back runs (minutes apart) cannot promise. A turn costs the side that resumes a
little (cold caches, sleeping OpenMP threads): at 10 steps per turn both sides ran about 20%
slower than at 100 or 600, with the same ratio; 100 (the default) showed no cost.

Timing (training samples per second; evaluation, set-up, saving and the other side's turns
excluded on both sides):
    aelab: the ``seconds`` of each epoch record the Trainer passes to ``on_epoch_end`` (the loop
        over the epoch's batches: batching, forward, loss, backward, Adam step, logging; before
        any evaluation or checkpointing; no test split is given, so it evaluates nothing), less
        the time spent in pythae's turns, which are taken after ``Trainer._train_step``.
    pythae: ``BaseTrainer.train_step(epoch)``, wrapped with ``time.perf_counter`` (see
        ``_pythae_side.py``): its DataLoader loop with forward, loss, backward, Adam step and
        callbacks, less its waits for its turn; not the per-epoch ``deepcopy`` of the best model,
        logging or the final save.
    samples/s = all training samples seen / the sum of those epoch times; the ratio divides
    aelab's by pythae's. The best epoch of each side and the per-epoch ratios are given too, and
    each process's CPU time per epoch (both threads; waiting on the pipe costs none), which load
    from other processes inflates less than wall time.

Likelihood (one estimator for both sides): pythae's trained weights (BatchNorm running statistics
included) come back as plain arrays and are loaded into an aelab VAE of the same architecture
(pythae's separate mean and log-variance layers become aelab's one head, read as a log-variance;
its sigmoid output becomes aelab's Bernoulli logits). The script checks that the rebuilt model reproduces pythae's
encoder and decoder outputs. Then aelab's estimators score both models on the same test images
with the same random numbers:
    test negative ELBO: the VAE objective ``-log p(x|z) + KL(q(z|x) || p(z))`` (``model.loss``)
        with one sample z ~ q(z|x) and the analytic KL, averaged over the whole test split (nats
        per image; on pythae's model it must equal pythae's own test loss, also reported);
    IWAE NLL: ``-log (1/k) sum_i p(x, z_i) / q(z_i|x)`` with k = ``--iwae-k`` samples per image
        (``aelab.metrics.likelihood.iwae_log_likelihood``; Burda et al., ICLR 2016), on the whole
        test split by default (about 65 s per model for k = 1000 on 2 idle cores), or on a seeded
        random subset of ``--test-subset`` images (the split is sorted by label, so never its
        first N).
Each difference aelab - pythae comes with its paired standard error over the images.

Usage:
    python benchmarks/vae_vs_pythae.py --save
    python benchmarks/vae_vs_pythae.py --network conv --save   # ..._conv.json
    python benchmarks/vae_vs_pythae.py --seeds 0-19 --test-subset 2000 --save   # ..._seeds.json
    # more seeds later, summarised with the earlier ones (same settings and versions are checked):
    python benchmarks/vae_vs_pythae.py --seeds 20-39 --test-subset 2000 --save --pool FILE_SEEDS.json

The first run also creates the pythae environment (about a minute with a local torch wheel).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import aelab
from aelab.data.base import DataConfig, load_data
from aelab.io import atomic_write_text
from aelab.metrics.likelihood import iwae_log_likelihood
from aelab.models import Autoencoder, build_model
from aelab.training.trainer import Trainer, TrainerConfig

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"
PYTHAE = "pythae==0.1.2"
RESULT = HERE / "results" / "vae_vs_pythae.json"
# pythae's encoder outputs the log-variance; aelab's head is told to read its output the same way
MODEL = {"image_shape": (1, 28, 28), "latent_dim": 16, "backbone": {"kind": "mlp", "hidden": (512,)},
         "posterior_scale": "log_var"}
# pythae's Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST from aelab's shared conv backbone
CONV_MODEL = {**MODEL, "backbone": {"kind": "conv", "channels": (128, 256, 512, 1024), "fc": 0,
                                    "batch_norm": True, "decoder_channels": (1024, 512, 256),
                                    "decoder_kernel": 3, "decoder_dense_activation": False}}
NETWORKS = {"mlp": MODEL, "conv": CONV_MODEL}
DESCRIPTIONS = {
    "mlp": "MLP 784-512-16 (ReLU)",
    "conv": "pythae's Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST (conv 128-256-512-1024 k4 s2 + "
            "BatchNorm + ReLU; Linear 16-16384, convT 1024-512-256-1 k3 s2 + BatchNorm + ReLU), latent 16",
}
BATCH_SIZE, LR = 100, 1e-3


def log(msg: str) -> None:
    print(f"[vae_vs_pythae] {msg}", file=sys.stderr, flush=True)


# --- the pythae environment ------------------------------------------------------------------
def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "aelab-bench" / "pythae-venv"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


def installed_versions(python: Path) -> dict[str, str] | None:
    """``{"pythae": ..., "torch": ...}`` in the venv, or ``None`` if it has no working pythae."""
    code = ("import json, importlib.metadata as m, pythae, torch; "
            "print(json.dumps({'pythae': m.version('pythae'), 'torch': torch.__version__}))")
    if not python.is_file():
        return None
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def ensure_pythae_venv(venv: Path) -> Path:
    """Create (or reuse) a venv with pythae and torch pinned to the version aelab runs on.

    Pinning torch matters twice: both sides then run the same kernels, and an unpinned
    ``torch>=1.10`` (pythae's requirement) would pull the newest torch with its CUDA wheels.
    """
    python = venv_python(venv)
    torch_pin = torch.__version__.split("+")[0]
    want = PYTHAE.split("==")[1]
    found = installed_versions(python)
    if found and found["pythae"] == want and found["torch"].split("+")[0] == torch_pin:
        log(f"reusing {venv} (pythae {found['pythae']}, torch {found['torch']})")
        return python
    log(f"creating {venv} with {PYTHAE} and torch=={torch_pin}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch_pin}\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), PYTHAE], check=True)
    if installed_versions(python) is None:
        raise RuntimeError(f"pythae does not import in {venv}; delete it and run again")
    return python


def pip_freeze(python: Path) -> list[str]:
    r = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    return sorted(r.stdout.split())


# --- pythae weights -> an aelab VAE --------------------------------------------------------------
def _conv_keys() -> dict[str, str]:
    """pythae's conv module prefixes -> aelab's (see ``CONV_MODEL``): conv, BatchNorm, dense."""
    keys = {}
    for i in range(4):  # encoder.layers[i] = (conv, BatchNorm, ReLU); aelab: net[3i], net[3i+1], net[3i+2]
        keys[f"encoder.layers.{i}.0."] = f"encoder.net.{3 * i}."
        keys[f"encoder.layers.{i}.1."] = f"encoder.net.{3 * i + 1}."
    keys["decoder.layers.0."] = "decoder.dense.0."
    for j in (1, 2, 3):  # decoder.layers[j] = (convT, BatchNorm, ReLU), the last (convT, Sigmoid)
        keys[f"decoder.layers.{j}.0."] = f"decoder.net.{3 * (j - 1)}."
        if j < 3:
            keys[f"decoder.layers.{j}.1."] = f"decoder.net.{3 * (j - 1) + 1}."
    return keys


def aelab_from_pythae(weights: dict[str, np.ndarray], network: str = "mlp") -> Autoencoder:
    """The aelab VAE computing exactly the function of a trained pythae VAE (see module doc), in eval mode."""
    w = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    model = build_model("vae", **NETWORKS[network])
    state = {
        # one head: [mu; log_var] (the model reads its second half as a log-variance)
        "head.linear.weight": torch.cat([w["encoder.embedding.weight"], w["encoder.log_var.weight"]]),
        "head.linear.bias": torch.cat([w["encoder.embedding.bias"], w["encoder.log_var.bias"]]),
    }
    if network == "mlp":
        # pythae's decoder ends in a sigmoid; its pre-activation is the Bernoulli logits
        state |= {k: w[k] for k in ("encoder.net.0.weight", "encoder.net.0.bias", "decoder.net.0.weight",
                                    "decoder.net.0.bias", "decoder.net.2.weight", "decoder.net.2.bias")}
    else:
        # every parameter and BatchNorm buffer, renamed; the decoder's sigmoid is dropped (logits)
        keys = _conv_keys()
        for name, value in w.items():
            prefix = next((p for p in keys if name.startswith(p)), None)
            if prefix is not None:
                state[keys[prefix] + name[len(prefix):]] = value
    model.load_state_dict(state)  # strict: a missing or unexpected tensor is an error
    return model.eval()


@torch.no_grad()
def transfer_error(model: Autoencoder, x: Tensor, ref: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the rebuilt model and pythae's own outputs."""
    qz = model.encode(x)
    mine = {"mu": qz.mean, "log_var": 2 * qz.base_dist.scale.log(), "probs_at_mu": model.decode(qz.mean).mean}
    return max(float((mine[k] - torch.from_numpy(ref[k])).abs().max()) for k in mine)


# --- the one estimator, aelab's, used on both models -------------------------------------------
@torch.no_grad()
def negative_elbo(model: Autoencoder, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Per-image ``-log p(x|z) + KL(q(z|x) || p(z))``, one z ~ q(z|x), analytic KL: ``(N,)``.

    This is the VAE's own objective at beta = 1, i.e. what aelab's Trainer evaluates.
    """
    model.eval()
    return torch.cat([model.loss(aelab.Batch(xb)).per_example for xb in x.split(batch_size)])


@torch.no_grad()
def iwae_nll(model: Autoencoder, x: Tensor, k: int, images_per_pass: int = 10) -> Tensor:
    """Per-image ``-log (1/k) sum_i w_i`` from :func:`aelab.metrics.likelihood.iwae_log_likelihood`."""
    model.eval()
    return torch.cat([-iwae_log_likelihood(model, xb, k) for xb in x.split(images_per_pass)])


def score(model: Autoencoder, x_test: Tensor, x_iwae: Tensor, k: int, seed: int) -> dict[str, Tensor]:
    torch.manual_seed(seed)  # the same noise for both models
    elbo = negative_elbo(model, x_test)
    torch.manual_seed(seed + 1)
    t0 = time.perf_counter()
    iwae = iwae_nll(model, x_iwae, k)
    log(f"IWAE k={k} on {len(x_iwae)} images: {time.perf_counter() - t0:.1f} s")
    return {"neg_elbo": elbo, "iwae_nll": iwae}


def paired(a: Tensor, b: Tensor) -> dict[str, float]:
    d = (a - b).double()
    return {"mean": float(d.mean()), "stderr": float(d.std() / math.sqrt(len(d)))}


# --- the two sides, taking turns --------------------------------------------------------------
class PythaeSide:
    """The pythae subprocess, trained a turn at a time (the protocol is in ``_pythae_side.py``)."""

    def __init__(self, python: Path, data, x_check: Tensor, workdir: Path, args: argparse.Namespace) -> None:
        self.x_check, self.finished, self.network = x_check, False, args.network
        arrays = workdir / "data.npz"
        np.savez(arrays, x_train=data.train.x.numpy(), y_train=data.train.y.numpy(),
                 x_test=data.test.x.numpy(), x_check=x_check.numpy())
        self.out = workdir / "pythae"
        cmd = [str(python), str(HERE / "_pythae_side.py"), "--data", str(arrays), "--out", str(self.out),
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--batch-size", str(BATCH_SIZE),
               "--lr", str(LR), "--latent-dim", str(MODEL["latent_dim"]), "--network", args.network,
               "--hidden", str(MODEL["backbone"]["hidden"][0]), "--seed", str(args.seed),
               "--turn-steps", str(args.turn_steps)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        env.pop("PYTHONPATH", None)
        self.log_path = workdir / "pythae.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=workdir, text=True)

    def _failed(self) -> RuntimeError:
        self.proc.wait()
        return RuntimeError(f"the pythae side failed (exit {self.proc.returncode}):\n"
                            f"{self.log_path.read_text()[-4000:]}")

    def turn(self) -> None:
        """Let pythae train its next ``--turn-steps`` steps; returns once it is idle again."""
        if self.finished:
            return
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise self._failed()
        if json.loads(line).get("finished"):
            self.finished = True
            if self.proc.wait() != 0:
                raise self._failed()

    def result(self) -> dict:
        while not self.finished:
            self.turn()
        result = json.loads((self.out / "result.json").read_text())
        with np.load(self.out / "weights.npz") as w, np.load(self.out / "reference.npz") as ref:
            result["model"] = aelab_from_pythae(dict(w), self.network)
            result["transfer_max_abs_diff"] = transfer_error(result["model"], self.x_check, dict(ref))
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def train_aelab(data, args: argparse.Namespace, other_turn) -> tuple[Autoencoder, list[dict], str]:
    """Train aelab's VAE, calling ``other_turn()`` after every ``--turn-steps`` steps.

    The time spent in ``other_turn()`` falls inside the Trainer's epoch timing and is taken out of
    each epoch record's ``seconds`` here.
    """
    torch.manual_seed(args.seed)
    model = build_model("vae", **NETWORKS[vars(args).get("network", "mlp")])
    cfg = TrainerConfig(epochs=args.epochs, batch_size=BATCH_SIZE, lr=LR, seed=args.seed, images=False,
                        progress=False, precision=args.precision)
    records: list[dict] = []
    waited, cpu = [0.0], [time.process_time()]

    def on_epoch_end(trainer: Trainer, metrics: dict) -> None:
        seconds = metrics["seconds"] - waited[0]
        records.append({"seconds": seconds, "trainer_seconds": metrics["seconds"], "waited": waited[0],
                        "cpu_seconds": time.process_time() - cpu[0], "load_1min": os.getloadavg()[0]})
        waited[0], cpu[0] = 0.0, time.process_time()
        log(f"epoch {len(records)}/{args.epochs}: aelab {seconds:.2f} s")

    trainer = Trainer(model, data.train, None, cfg, on_epoch_end=[on_epoch_end])
    train_step = trainer._train_step

    def step_and_maybe_hand_over(x: Tensor) -> dict[str, float]:
        logs = train_step(x)
        if trainer.step % args.turn_steps == 0:
            t0 = time.perf_counter()
            other_turn()
            waited[0] += time.perf_counter() - t0
        return logs

    trainer._train_step = step_and_maybe_hand_over  # the Trainer has no per-step hook
    trainer.fit()
    return model.eval(), records, " ".join(repr(trainer.optimizer).split())


def throughput(epoch_seconds: list[float], cpu_seconds: list[float], samples_per_epoch: int) -> dict:
    total = sum(epoch_seconds)
    return {"samples_per_second": samples_per_epoch * len(epoch_seconds) / total,
            "seconds_per_epoch": total / len(epoch_seconds),
            "best_epoch_samples_per_second": samples_per_epoch / min(epoch_seconds),
            "epoch_seconds": [round(s, 3) for s in epoch_seconds],
            "epoch_process_cpu_seconds": [round(s, 3) for s in cpu_seconds]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", choices=sorted(NETWORKS), default="mlp",
                   help="mlp (784-512-16) or conv (pythae's benchmark conv nets for MNIST; results in ..._conv.json)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iwae-k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--test-subset", type=int, default=0,
                   help="score the IWAE NLL on this many seeded random test images (0, the default: the whole "
                        "test split); the negative ELBO always uses the whole split")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order, subset and estimator noise")
    p.add_argument("--seeds", default="",
                   help="several seeds, e.g. 0-9: one run each, then their mean, spread and 95%% interval "
                        "(saved as ..._seeds.json)")
    p.add_argument("--turn-steps", type=int, default=100,
                   help="the two sides take turns on the machine every this many optimizer steps")
    p.add_argument("--venv", type=Path, default=default_venv(),
                   help="the pythae virtual environment (default: %(default)s)")
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)),
                   help="data directory (default: $AELAB_DATA_DIR, else ../shared/data beside the checkout)")
    p.add_argument("--train-subset", type=int, default=None, help="for a quick smoke run only")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="aelab's trainer.precision (pythae always trains in float32; scoring is float32 for both)")
    p.add_argument("--pool", type=Path, default=None,
                   help="an earlier several-seed JSON of the same experiment (same settings and versions, "
                        "other seeds): summarise its seeds together with this run's")
    p.add_argument("--save", action="store_true",
                   help=f"also write the JSON to {RESULT.relative_to(HERE.parent)} "
                        "(conv: ..._conv.json; bf16: ..._bf16.json)")
    args = p.parse_args()
    for name in ("epochs", "threads", "iwae_k", "turn_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.test_subset < 0:
        p.error("--test-subset must be >= 0 (0: the whole test split)")
    torch.set_num_threads(args.threads)

    python = ensure_pythae_venv(args.venv.expanduser())
    data = load_data(DataConfig(name="fashion-mnist", root=args.data_dir, train_subset=args.train_subset))
    x_test = data.test.get_batch(torch.arange(len(data.test))).x
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    if args.pool is not None:  # fail now, not after the training, if it cannot be pooled
        n_iwae = len(data.test) if args.test_subset == 0 else min(args.test_subset, len(data.test))
        pool_check(args.pool, seeds, {"epochs": args.epochs, "threads": args.threads, "iwae_k": args.iwae_k,
                                      "iwae_test_size": n_iwae, "train_size": len(data.train),
                                      "precision": {"aelab": args.precision, "pythae": "fp32"}})
    reports = []
    for seed in seeds:
        log(f"seed {seed} ({len(reports) + 1} of {len(seeds)})")
        reports.append(run_seed(argparse.Namespace(**{**vars(args), "seed": seed}), python, data, x_test))
    if args.pool is not None:
        pooled, pooled_from = earlier_seeds(args.pool, reports[0])
        report = summarise(reports, pooled, pooled_from)
    else:
        report = reports[0] if len(reports) == 1 else summarise(reports)
    text = json.dumps(report, indent=2)
    print(text)
    if args.save:
        out = RESULT if args.network == "mlp" else RESULT.with_name(f"{RESULT.stem}_{args.network}.json")
        out = out if args.precision == "fp32" else out.with_name(f"{out.stem}_{args.precision}.json")
        if "per_seed" in report:
            out = out.with_name(f"{out.stem}_seeds.json")
        atomic_write_text(out, text + "\n")
        log(f"saved {out}")


def parse_seeds(spec: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"`` (or a mix) -> the seeds, in order."""
    seeds: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise SystemExit(f"--seeds: expected e.g. 0-9 or 0,1,2, got {spec!r}") from None
    if not seeds:
        raise SystemExit(f"--seeds: no seed in {spec!r}")
    return seeds


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom.

    Exact values (to 3 decimals) up to 9; beyond, the Cornish-Fisher expansion around the normal
    quantile, within 0.001 of the exact value from df = 10 on (2.093 at df = 19).
    """
    exact = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df in exact:
        return exact[df]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def over_seeds(values: list[float]) -> dict:
    """Mean, spread and 95% t interval of the mean of one figure over seeds (at least two)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    se, t = sd / math.sqrt(n), t95(n - 1)
    return {"mean": mean, "sd": sd, "stderr": se, "ci95": [mean - t * se, mean + t * se],
            "min": min(values), "max": max(values)}


def seed_entry(r: dict) -> dict:
    """The figures of one seed's report that the several-seed summary keeps."""
    return {
        "seed": r["seed"],
        "aelab_over_pythae_samples_per_second": r["aelab_over_pythae_samples_per_second"],
        "seconds_per_epoch": {k: r["results"][k]["seconds_per_epoch"] for k in ("aelab", "pythae")},
        "test_neg_elbo": {k: r["results"][k]["test_neg_elbo"] for k in ("aelab", "pythae")},
        "test_iwae_nll": {k: r["results"][k]["test_iwae_nll"] for k in ("aelab", "pythae")},
        "aelab_minus_pythae": r["aelab_minus_pythae"],
    }


# what must agree for seeds of two runs to be pooled into one summary
POOL_KEYS = ("benchmark", "data", "train_size", "test_size", "network", "epochs", "threads", "precision",
             "neg_elbo_test_size", "iwae_k", "iwae_test_size")
POOL_VERSIONS = ("aelab", "torch", "pythae", "pythae_side_torch")


def read_pool(path: Path) -> dict:
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--pool {path}: cannot read it as JSON ({e})") from None
    if not isinstance(earlier, dict) or "per_seed" not in earlier:
        raise SystemExit(f"--pool {path}: not a several-seed result (no 'per_seed'; made with --seeds)")
    return earlier


def same_or_exit(path: Path, key: str, mine: object, theirs: object) -> None:
    if mine != theirs:
        raise SystemExit(f"--pool {path}: {key} differs: this run {mine!r}, that file {theirs!r}")


def pool_check(path: Path, seeds: list[int], settings: dict) -> None:
    """Before training: the earlier run has other seeds and the settings given on this command line."""
    earlier = read_pool(path)
    for key, mine in settings.items():
        same_or_exit(path, key, mine, earlier.get(key))
    if both := sorted(set(seeds) & set(earlier["seeds"])):
        raise SystemExit(f"--pool {path}: seeds {both} are in that file already; choose other --seeds")


def earlier_seeds(path: Path, meta: dict) -> tuple[list[dict], dict]:
    """The per-seed entries of an earlier several-seed JSON, checked to be the same experiment."""
    earlier = read_pool(path)
    for key in POOL_KEYS:
        same_or_exit(path, key, meta.get(key), earlier.get(key))
    for key in POOL_VERSIONS:
        same_or_exit(path, f"versions.{key}", meta["versions"].get(key), earlier.get("versions", {}).get(key))
    try:
        name = str(path.resolve().relative_to(HERE.parent))
    except ValueError:  # outside the repository
        name = str(path)
    return earlier["per_seed"], {"file": name, "seeds": earlier["seeds"],
                                 "when": earlier.get("measured_at", "not recorded")}


def summarise(reports: list[dict], pooled: list[dict] = (), pooled_from: dict | None = None) -> dict:
    """Several seeds: the per-seed figures and their mean, spread and a 95% interval of the mean.

    ``reports`` are this run's single-seed reports; ``pooled`` are per-seed entries of an earlier
    run of the same experiment (``--pool``), summarised together with them.

    The speed target is judged on the mean ratio; the likelihood targets on the mean paired
    difference aelab - pythae (``<= 0``), with its standard error over seeds (which, unlike the
    per-run standard error, includes the training noise of both sides) and whether the
    difference is significantly > 0 (95% t interval entirely above zero).
    """
    per_seed = [*pooled, *(seed_entry(r) for r in reports)]
    seeds = [e["seed"] for e in per_seed]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seeds measured twice: {sorted({s for s in seeds if seeds.count(s) > 1})}")
    ratio = over_seeds([e["aelab_over_pythae_samples_per_second"] for e in per_seed])
    diffs = {k: over_seeds([e["aelab_minus_pythae"][k]["mean"] for e in per_seed]) for k in ("neg_elbo", "iwae_nll")}
    first = reports[0]
    keep = (*POOL_KEYS, "versions")
    targets = {
        "mean_samples_per_second_ratio_at_least_2x": ratio["mean"] >= 2.0,
        "mean_neg_elbo_no_worse": diffs["neg_elbo"]["mean"] <= 0,
        "mean_iwae_nll_no_worse": diffs["iwae_nll"]["mean"] <= 0,
        "iwae_nll_not_significantly_worse": diffs["iwae_nll"]["ci95"][0] <= 0,
    }
    return {**{k: first[k] for k in keep if k in first}, "seeds": seeds,
            "measured_at": time.strftime("%Y-%m-%d"),
            **({"pooled_from": pooled_from} if pooled_from else {}),
            "iwae_subset": "per seed: torch.randperm(test_size, generator seeded with the seed)" if
                           first["iwae_test_size"] != first["test_size"] else "the whole test split",
            "aelab_over_pythae_samples_per_second": ratio,
            "aelab_minus_pythae_over_seeds": diffs, "targets": targets, "per_seed": per_seed}


def run_seed(args: argparse.Namespace, python: Path, data, x_test: Tensor) -> dict:
    """One side-by-side training and scoring with ``args.seed``: the single-seed report."""
    n_iwae = len(data.test) if args.test_subset in (0, None) else min(args.test_subset, len(data.test))
    iwae_idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(args.seed))[:n_iwae]
    x_iwae = x_test[iwae_idx]
    load = {"start": list(os.getloadavg())}

    log(f"training both sides, taking turns every {args.turn_steps} steps ({args.epochs} epochs, "
        f"{args.threads} threads)")
    with tempfile.TemporaryDirectory(prefix="aelab-vae-vs-pythae-") as tmp:
        side = PythaeSide(python, data, x_iwae[:16], Path(tmp), args)
        try:
            side.turn()  # pythae first, then aelab, pythae, aelab, ...
            ae_model, records, ae_optimizer = train_aelab(data, args, other_turn=side.turn)
            py = side.result()
        finally:
            side.close()
    load["after_training"] = list(os.getloadavg())
    if py["transfer_max_abs_diff"] > 1e-4:
        raise RuntimeError(f"the rebuilt pythae model differs from pythae's by {py['transfer_max_abs_diff']:.3g}")
    log("scoring pythae's model")
    py_scores = score(py["model"], x_test, x_iwae, args.iwae_k, args.seed)
    log("scoring aelab's model")
    ae_scores = score(ae_model, x_test, x_iwae, args.iwae_k, args.seed)
    load["after_scoring"] = list(os.getloadavg())

    n_train = len(data.train)
    ae = throughput([r["seconds"] for r in records], [r["cpu_seconds"] for r in records], n_train)
    pt = throughput(py["epoch_seconds"], py["epoch_cpu_seconds"], py["epoch_samples"])
    ratio = ae["samples_per_second"] / pt["samples_per_second"]
    # epoch i of the two sides ran interleaved, so they saw about the same machine
    per_epoch = [p / a for p, a in zip(py["epoch_seconds"], (r["seconds"] for r in records))]
    sides = {"aelab": (ae, ae_scores), "pythae": (pt, py_scores)}
    results = {name: {**t, "test_neg_elbo": float(s["neg_elbo"].mean()), "test_iwae_nll": float(s["iwae_nll"].mean())}
               for name, (t, s) in sides.items()}
    results["aelab"] |= {"load_average_1min_after_each_epoch": [round(r["load_1min"], 2) for r in records],
                         "optimizer": ae_optimizer}
    results["pythae"] |= {"own_test_loss_one_sample": py["own_test_loss_one_sample"],
                          "optimizer": py["optimizer"], "scheduler": py["scheduler"]}
    diff = {"neg_elbo": paired(ae_scores["neg_elbo"], py_scores["neg_elbo"]),
            "iwae_nll": paired(ae_scores["iwae_nll"], py_scores["iwae_nll"])}
    report = {
        "benchmark": "vae_vs_pythae",
        "data": "fashion-mnist", "train_size": n_train, "test_size": len(data.test),
        "network": f"{DESCRIPTIONS[args.network]}, diagonal Gaussian q(z|x), N(0, I) prior, Bernoulli likelihood, "
                   f"Adam {LR:g} constant, batch {BATCH_SIZE}",
        "epochs": args.epochs, "threads": args.threads, "seed": args.seed,
        "precision": {"aelab": args.precision, "pythae": "fp32"},
        "seeds": {"init_and_data_order_both_sides": args.seed, "iwae_subset": args.seed,
                  "neg_elbo_noise": args.seed, "iwae_noise": args.seed + 1},
        "neg_elbo_test_size": len(data.test), "iwae_k": args.iwae_k, "iwae_test_size": n_iwae,
        "iwae_subset": "the whole test split" if n_iwae == len(data.test)
                       else f"torch.randperm(test_size, generator seeded {args.seed})[:{n_iwae}]",
        "results": results,
        "aelab_over_pythae_samples_per_second": ratio,
        "aelab_over_pythae_per_epoch": [round(r, 3) for r in per_epoch],
        "aelab_over_pythae_best_epoch": ae["best_epoch_samples_per_second"] / pt["best_epoch_samples_per_second"],
        "aelab_minus_pythae": diff,
        "targets": {
            "samples_per_second_at_least_2x": ratio >= 2.0,
            "neg_elbo_no_worse": results["aelab"]["test_neg_elbo"] <= results["pythae"]["test_neg_elbo"],
            "iwae_nll_no_worse": results["aelab"]["test_iwae_nll"] <= results["pythae"]["test_iwae_nll"],
        },
        "weight_transfer_max_abs_diff": py["transfer_max_abs_diff"],
        "load_average_1_5_15min": load,
        "versions": {"aelab": aelab.__version__, "torch": torch.__version__, "python": platform.python_version(),
                     "pythae": py["pythae"], "pythae_side_torch": py["torch"], "pythae_side_threads": py["threads"],
                     "pythae_venv": pip_freeze(python)},
    }
    report["targets"]["all"] = all(report["targets"].values())
    return report


if __name__ == "__main__":
    main()
