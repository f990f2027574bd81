"""Benchmark (issue 18): each benchmark model's training step as a fraction of the host's matrix-product bound.

In one process, for every model family of the other benchmarks (their configurations, imported
from their scripts, on their real data):

* the bound: the host's float32 matrix-product rate, ``torch.mm`` of two 2048 x 2048 matrices at
  ``--threads`` threads, the best of ``--peak-repeats`` calls, in GFLOP/s; bfloat16 too where the
  CPU has avx512_bf16 or AMX (reported, not used as the bound: every step here runs in float32).
  It is measured before every round of the models and once after the last, so that load from
  other processes falls on the bound and on the models alike; every measurement is reported and
  the bound is their **maximum** (the least flattering choice for the models' fractions);
* the work of one training step, counted from the model: the real step (the one the family's
  benchmark times: aelab's ``Trainer._train_step``, i.e. forward, loss, ``.item()``, backward,
  fused Adam) runs under ``torch.utils.flop_counter.FlopCounterMode``, once on each batch of the
  timed cycle after ``--warmup`` steps (past the VQ-VAE's k-means initialisation on its first
  step), and its total is taken (matrix products and convolutions, forward and backward;
  FlopCounterMode counts nothing else, so the Adam update, element-wise ops and reductions add
  nothing). Two of aelab's CPU paths run oneDNN operators that FlopCounterMode has no formula
  for: ``aelab.nn.Linear``'s ``mkldnn._linear_pointwise`` and the float32 LSTM's
  ``mkldnn_rnn_layer`` (and its backward); their formulas are given here (:data:`ONEDNN_FLOPS`),
  so they are counted like ``mm`` and ``lstm``'s native cells. The breakdown by operator is
  reported;
* the step time: the same step on the same cycle of real batches, timed one step at a time
  (``time.perf_counter`` around the step; the ``.item()`` of the loss makes it synchronous),
  ``--steps`` steps a round after ``--warmup`` untimed ones, median over all rounds' steps;
* fraction of the bound = (FLOPs per step / step seconds) / bound;
* beside each step time, the process's CPU time per step (all threads) and its involuntary
  context switches per step: on a shared machine they tell a step that waited for the CPU from
  one that computed (an OpenMP thread spinning at a barrier for a preempted partner burns CPU
  time that does no work).

Peers, timed in the same rounds, on the same batches, their FLOPs counted the same way:

* MLP VAE: pythae 0.1.2's VAE (the same network) in the side virtual environment that
  ``vae_vs_pythae.py`` builds (``ensure_pythae_venv``), stepped by ``_pythae_roofline_side.py``:
  pythae's forward and loss, backward, ``torch.optim.Adam`` (its per-tensor loop, pythae's
  default). ``--no-peers`` skips it.
* text VAE: ``text_vae_speed.py``'s plain-PyTorch reference (packed LSTMs, per-tensor Adam), in
  this process, on the same sentences (each batch cut to its longest sentence). Its LSTMs run
  PyTorch's native cells over packed sequences (counted as their ``mm``/``addmm``), aelab's run
  oneDNN's over the padded batch; each fraction uses its own count (they differ by a few percent
  on the same batch), and the ratio is of step times on the same sentences.

The ratio ``aelab_over_peer`` = peer step time / aelab step time (same batches): above 1 means
aelab is faster.

Usage:
    python benchmarks/roofline.py --threads 2 --save --markdown     # all families (~11 min on 2 busy cores)
    python benchmarks/roofline.py --threads 1 --save benchmarks/results/roofline_threads1.json --markdown
    python benchmarks/roofline.py --quick --families mlp_vae --no-peers   # a smoke run (seconds)
    python benchmarks/roofline.py --threads 2 --bf16 --profile 20 --markdown   # + bfloat16 steps, + time per operator
    python benchmarks/roofline.py --threads 2 --families mlp_vae,conv_vae --compile --no-peers   # + torch.compile
    python benchmarks/roofline.py --threads 2 --families conv_vae,dsprites_vae --bf16 --channels-last --no-peers
        # + the model and images in channels-last layout (fp32, and bf16 with --bf16)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import deterministic_aes
import disentangle_study
import numpy as np
import tdvae_claims
import text_vae_speed as tvs
import torch
import vae_variants
import vae_vs_pythae
import vq_fashion
from _host import host_info
from torch.utils.flop_counter import FlopCounterMode

import aelab
from aelab.batch import Batch
from aelab.data.base import DataConfig, load_data
from aelab.data.batches import train_batches
from aelab.io import atomic_write_text
from aelab.models import build_model
from aelab.runs import code_dataset, encode_codes, fit_config_to_data
from aelab.training.trainer import Trainer, TrainerConfig

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parents[1] / "shared" / "data"
RESULT = HERE / "results" / "roofline.json"
PEAK_N = 2048
PEAK_N_QUICK = 512
FAMILIES = ("mlp_vae", "conv_vae", "dsprites_vae", "vqvae", "pixelcnn_prior", "cae", "text_vae", "tdvae")


def log(msg: str) -> None:
    print(f"[roofline] {msg}", file=sys.stderr, flush=True)


# --- counting ----------------------------------------------------------------------------------
def _linear_pointwise_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """``mkldnn._linear_pointwise(x, w, b, ...)``: ``x @ w.T`` with x ``(M, K)``, w ``(N, K)``."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


def _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """``mkldnn_rnn_layer``, one direction of one layer over all steps: ``x_t @ W_ih.T`` and
    ``h_{t-1} @ W_hh.T`` for each of the ``T * B`` (step, sequence) pairs (the gates' element-wise
    work is not counted, as for every other operator)."""
    rows = math.prod(input_shape[:-1])  # T * B
    return 2 * rows * w_ih_shape[0] * (w_ih_shape[1] + w_hh_shape[1])


def _rnn_layer_backward_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    """Its backward: the input/state gradients and the weight gradients, each one forward's work."""
    return 2 * _rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape)


#: formulas for the oneDNN operators aelab's CPU paths run, which FlopCounterMode lacks
ONEDNN_FLOPS: dict[Any, Callable[..., int]] = {
    torch.ops.mkldnn._linear_pointwise: _linear_pointwise_flops,
    torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops,
    torch.ops.aten.mkldnn_rnn_layer_backward: _rnn_layer_backward_flops,
}


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks break
    ``torch.autograd.grad(..., is_grads_batched=True)`` (the contractive AE's exact penalty:
    "A leaf node was passed to _will_engine_execute_node"); only the ``Global`` totals are used."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """``(total, {operator: flops})`` of what ``fn()`` runs (FlopCounterMode plus :data:`ONEDNN_FLOPS`)."""
    counter = FlopCounterMode(display=False, custom_mapping=ONEDNN_FLOPS)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return int(counter.get_total_flops()), dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


# --- the bound ---------------------------------------------------------------------------------
def matmul_gflops(n: int, dtype: torch.dtype, repeats: int) -> float:
    """Best of ``repeats`` calls of ``torch.mm`` on two ``n x n`` matrices of ``dtype``, in GFLOP/s."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def has_bf16(host: dict[str, Any]) -> bool:
    return any(f in host["flags"] for f in ("avx512_bf16", "amx_bf16"))


def _preemptions() -> int:
    """Involuntary context switches of this process so far (the scheduler took a thread away)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


# --- the families ------------------------------------------------------------------------------
@dataclass
class Contender:
    """A training step to count and time: ``step(batch)`` runs one, on a cycle of fixed batches."""

    name: str
    step: Callable[[Any], Any]
    batches: list[Any]
    flops: list[int] = field(default_factory=list)
    by_op: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # the process's CPU seconds (all threads) per step
    preempted: list[int] = field(default_factory=list)  # involuntary context switches per step
    profiled: dict[str, Any] | None = None
    #: variants of the same step (``--bf16``, ``--compile``, ``--channels-last``): name -> a factory of the contender
    twins: dict[str, Callable[[], Contender]] = field(default_factory=dict)
    compile_seconds: float | None = None  # a compiled variant: its first step (compilation included)
    _next: int = 0

    def count(self) -> None:
        """One step on each batch of the cycle under the counter (these also warm it up)."""
        for b in self.batches:
            n, by_op = count_flops(lambda b=b: self.step(b))
            self.flops.append(n)
            for k, v in by_op.items():
                self.by_op[k] = self.by_op.get(k, 0) + v

    def run(self, steps: int, warmup: int) -> None:
        for i in range(warmup + steps):
            b = self.batches[self._next % len(self.batches)]
            self._next += 1
            t0, c0, n0 = time.perf_counter(), time.process_time(), _preemptions()
            self.step(b)
            if i >= warmup:
                self.times.append(time.perf_counter() - t0)
                self.cpu_times.append(time.process_time() - c0)
                self.preempted.append(_preemptions() - n0)

    def profile(self, steps: int, top: int = 20) -> None:
        """Where a step's time goes: ``torch.profiler``'s self time of each operator over ``steps``
        steps (ms per step; an operator's intra-op threads run inside its time), and the rest of
        the wall time, spent outside any operator (Python, the autograd engine's bookkeeping,
        dispatch). Under the profiler (a few microseconds per operator more)."""
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            self.run(0, steps)  # ``steps`` untimed steps: the timings above stay profiler-free
            wall = (time.perf_counter() - t0) * 1e3 / steps
        ops = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()), key=lambda kv: -kv[1])
        in_ops = sum(v for _, v in ops)
        self.profiled = {"steps": steps, "wall_ms_per_step": wall, "in_operators_ms_per_step": in_ops,
                         "outside_operators_ms_per_step": wall - in_ops,
                         "ms_per_step_by_operator": {k: v for k, v in ops[:top]},
                         "other_operators_ms_per_step": sum(v for _, v in ops[top:]),
                         "operator_calls_per_step": sum(e.count for e in prof.key_averages()) / steps}

    def summary(self, peak: float) -> dict[str, Any]:
        flops = statistics.fmean(self.flops)
        sec = statistics.median(self.times)
        achieved = flops / sec / 1e9
        return {"gflop_per_step": flops / 1e9, "gflop_per_step_by_batch": [n / 1e9 for n in self.flops],
                "gflop_per_step_by_op": {k: v / 1e9 / len(self.flops) for k, v in self.by_op.items()},
                "ms_per_step": sec * 1e3, "ms_per_step_min": min(self.times) * 1e3,
                "ms_per_step_quartiles": [q * 1e3 for q in statistics.quantiles(self.times, n=4)]
                if len(self.times) > 1 else [sec * 1e3] * 3,
                "cpu_ms_per_step": statistics.median(self.cpu_times) * 1e3,
                "involuntary_context_switches_per_step": statistics.fmean(self.preempted),
                "steps_timed": len(self.times), "steps_per_second": 1 / sec, "achieved_gflops": achieved,
                "fraction_of_fp32_bound": achieved / peak} | ({"profile": self.profiled} if self.profiled else {})


@dataclass
class Family:
    name: str
    label: str
    config: str
    data: str
    batch_size: int
    aelab: Contender
    peer: Contender | None = None
    peer_label: str | None = None
    notes: str = ""
    variants: dict[str, Contender] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # variants that could not run: the error


def _cycle(it: Iterator[Any], n: int) -> list[Any]:
    return [next(it) for _ in range(n)]


def trainer_step(model, train, cfg: TrainerConfig) -> Callable[[Batch], Any]:
    """aelab's real step: ``Trainer._train_step`` (what the Trainer's epoch loop calls per batch)."""
    return Trainer(model, train, None, cfg)._train_step


def aelab_contender(model, train, cfg: TrainerConfig, batches: list[Any]) -> Contender:
    """aelab's step of ``model`` on ``batches``, with its variants, each made (before any step:
    the same initial weights) on a copy of the model: ``bf16``, stepped under
    ``trainer.precision=bf16``; ``compiled``, its ``loss`` (forward, loss terms, and through
    AOTAutograd the backward) under ``torch.compile`` (default inductor backend);
    ``channels_last`` and ``bf16_channels_last``, under ``trainer.channels_last`` (weights and
    images in NHWC layout)."""

    def bf16() -> Contender:
        return Contender("aelab bf16", trainer_step(copy.deepcopy(model), train,
                                                    dataclasses.replace(cfg, precision="bf16")), batches)

    def compiled() -> Contender:
        twin = copy.deepcopy(model)
        twin.loss = torch.compile(twin.loss)
        return Contender("aelab compiled", trainer_step(twin, train, cfg), batches)

    def channels_last(precision: str) -> Contender:  # trainer.channels_last: weights and images in NHWC
        return Contender(f"aelab channels_last{' bf16' if precision == 'bf16' else ''}",
                         trainer_step(copy.deepcopy(model), train,
                                      dataclasses.replace(cfg, precision=precision, channels_last=True)), batches)

    return Contender("aelab", trainer_step(model, train, cfg), batches,
                     twins={"bf16": bf16, "compiled": compiled, "channels_last": lambda: channels_last("fp32"),
                            "bf16_channels_last": lambda: channels_last("bf16")})


def image_batches(data, batch_size: int, n: int, seed: int = 0) -> list[Batch]:
    return _cycle(train_batches(data.train, batch_size, seed, 0), n)


def quiet_cfg(**kw: Any) -> TrainerConfig:
    return TrainerConfig(**{"images": False, "progress": False, "diagnostics": False, "iwae_k": 0, **kw})


class Loader:
    """The data sets, each loaded once and shared by the families that use it."""

    def __init__(self, root: str) -> None:
        self.root, self._cache = root, {}

    def __call__(self, name: str, **kw: Any):
        key = (name, tuple(sorted(kw.items())))
        if key not in self._cache:
            self._cache[key] = load_data(DataConfig(name=name, root=self.root, **kw))
        return self._cache[key]


def mlp_vae(args, load: Loader) -> Family:
    data = load("fashion-mnist")
    bs = vae_vs_pythae.BATCH_SIZE
    torch.manual_seed(0)
    model = build_model("vae", **vae_vs_pythae.MODEL)
    batches = image_batches(data, bs, args.cycle)
    return Family("mlp_vae", "MLP VAE (pythae protocol)", "784-512-16, Bernoulli, fused Adam", "fashion-mnist",
                  bs, aelab_contender(model, data.train, quiet_cfg(batch_size=bs, lr=vae_vs_pythae.LR, seed=0),
                                      batches))


def conv_vae(args, load: Loader) -> Family:
    data = load("fashion-mnist")
    torch.manual_seed(0)
    model = build_model("vae", image_shape=data.info.shape, latent_dim=16, backbone=vae_variants.NETWORK)
    return Family("conv_vae", "conv VAE (vae_variants)", "conv 32-64 s2 + dense 256, 16-d, Bernoulli", "fashion-mnist",
                  128, aelab_contender(model, data.train, quiet_cfg(batch_size=128, lr=1e-3, seed=0),
                                       image_batches(data, 128, args.cycle)))


def dsprites_vae(args, load: Loader) -> Family:
    data = load("dsprites", test_subset=2000)
    torch.manual_seed(0)
    model = build_model("vae", image_shape=data.info.shape, **disentangle_study.MODEL)
    return Family("dsprites_vae", "dSprites VAE (disentangle_study)", "disentanglement_lib conv 32-32-64-64 k4 s2 + "
                  "dense 256, 10-d, 64x64", "dsprites", 64,
                  aelab_contender(model, data.train, quiet_cfg(batch_size=64, lr=1e-4, seed=0),
                                  image_batches(data, 64, args.cycle)))


def vqvae(args, load: Loader) -> Family:
    data = load("fashion-mnist")
    torch.manual_seed(0)
    model = build_model("vqvae", image_shape=data.info.shape, **vq_fashion.MODELS["vqvae"])
    return Family("vqvae", "VQ-VAE (vq_fashion)", "aelab's default vqvae", "fashion-mnist", 128,
                  aelab_contender(model, data.train, quiet_cfg(batch_size=128, lr=1e-3, seed=0),
                                  image_batches(data, 128, args.cycle)))


def pixelcnn_prior(args, load: Loader) -> Family:
    data = load("fashion-mnist")
    torch.manual_seed(0)
    vq = build_model("vqvae", image_shape=data.info.shape, **vq_fashion.MODELS["vqvae"])
    # the prior's data: code grids of real images (of an untrained VQ-VAE: which codes they hold
    # changes neither the FLOPs nor the time of a step)
    n = 128 * args.cycle
    sub = load("fashion-mnist", train_subset=n) if n < len(data.train) else data
    codes = code_dataset(encode_codes(vq, sub.train, 500, torch.device("cpu")))
    prior_args = argparse.Namespace(prior_channels=128, prior_layers=10)  # vq_fashion's defaults
    torch.manual_seed(0)
    prior = vq_fashion.code_prior_for(vq, prior_args)
    batches = _cycle(train_batches(codes, 128, 0, 0), args.cycle)
    grid = "x".join(map(str, vq.code_shapes[0]))
    return Family("pixelcnn_prior", "PixelCNN code prior (vq_fashion)",
                  f"gated PixelCNN 128 ch, 10 layers, on {grid} code grids", "fashion-mnist codes", 128,
                  aelab_contender(prior, codes, quiet_cfg(batch_size=128, lr=1e-3, seed=0), batches))


def cae(args, load: Loader) -> Family:
    data = load("fashion-mnist")
    torch.manual_seed(0)
    model = build_model("cae", image_shape=data.info.shape, latent_dim=32,
                        backbone={"kind": "mlp", "hidden": (512, 256)}, **deterministic_aes.MODELS["cae"])
    return Family("cae", "contractive AE (deterministic_aes)", "784-512-256-32, exact Jacobian penalty",
                  "fashion-mnist", 128, aelab_contender(model, data.train, quiet_cfg(batch_size=128, lr=1e-3, seed=0),
                                                        image_batches(data, 128, args.cycle)))


TEXT = argparse.Namespace(embed=256, hidden=512, latent=32, batch_size=32, lr=1e-3)  # text_vae_speed's defaults


def text_vae(args, load: Loader) -> Family:
    splits = load("fortunes", min_count=1)
    vocab, max_len = len(splits.info.vocab), splits.info.shape[0]
    torch.manual_seed(0)
    model = build_model("text_vae", **tvs.model_cfg(TEXT, vocab, max_len))
    batches = _cycle(train_batches(splits.train, TEXT.batch_size, 0, 0), args.cycle)
    mine = aelab_contender(model, splits.train, quiet_cfg(batch_size=TEXT.batch_size, lr=TEXT.lr, seed=0), batches)
    torch.manual_seed(0)
    ref = tvs.ReferenceSentenceVAE(vocab, TEXT.embed, TEXT.hidden, TEXT.latent)
    opt = torch.optim.Adam(ref.parameters(), lr=TEXT.lr)
    ref.train()

    def ref_step(b: Batch) -> float:
        target = b.x[:, : int(b.lengths.max())]
        loss = tvs.reference_loss(ref, target, b.lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return Family("text_vae", "text VAE (text_vae_speed)", "emb 256, LSTM 512, 32-d, vocab "
                  f"{vocab}", "fortunes", TEXT.batch_size, mine,
                  Contender("reference", ref_step, batches), "plain PyTorch (text_vae_speed.py's reference)")


def tdvae(args, load: Loader) -> Family:
    ns = argparse.Namespace(data_dir=load.root, epochs=1, max_steps=None)
    cfg = tdvae_claims.run_config("tdvae", 0, ns)
    data = load_data(cfg.data)
    cfg = fit_config_to_data(cfg, data.info)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.model_config)
    bs = cfg.trainer.batch_size
    return Family("tdvae", "TD-VAE (tdvae_claims)", "moving MNIST 20 frames, jumps 1..5", "moving-mnist", bs,
                  aelab_contender(model, data.train, cfg.trainer, image_batches(data, bs, args.cycle)))


BUILDERS: dict[str, Callable[[argparse.Namespace, Loader], Family]] = {
    "mlp_vae": mlp_vae, "conv_vae": conv_vae, "dsprites_vae": dsprites_vae, "vqvae": vqvae,
    "pixelcnn_prior": pixelcnn_prior, "cae": cae, "text_vae": text_vae, "tdvae": tdvae,
}


# --- the pythae peer, in its own environment --------------------------------------------------
class PythaeContender(Contender):
    """pythae's step in a subprocess of the pythae venv (``_pythae_roofline_side.py``), on the same batches."""

    def __init__(self, python: Path, batches: list[Batch], threads: int, workdir: Path) -> None:
        super().__init__("pythae", lambda b: None, batches)
        arrays = workdir / "batches.npz"
        np.savez(arrays, x=torch.stack([b.x for b in batches]).numpy())
        cmd = [str(python), str(HERE / "_pythae_roofline_side.py"), "--batches", str(arrays),
               "--threads", str(threads), "--lr", str(vae_vs_pythae.LR),
               "--latent-dim", str(vae_vs_pythae.MODEL["latent_dim"]),
               "--hidden", str(vae_vs_pythae.MODEL["backbone"]["hidden"][0])]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env.pop("PYTHONPATH", None)
        self.log_path = workdir / "pythae.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=workdir, text=True)
        self.info: dict[str, Any] = {}

    def _ask(self, line: str) -> dict[str, Any]:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            self.proc.wait()
            raise RuntimeError(f"the pythae side failed (exit {self.proc.returncode}):\n"
                               f"{self.log_path.read_text()[-4000:]}")
        return json.loads(reply)

    def count(self) -> None:
        reply = self._ask("count")
        self.flops, self.by_op = reply.pop("flops"), reply.pop("by_op")
        self.info = reply

    def run(self, steps: int, warmup: int) -> None:
        reply = self._ask(f"run {steps} {warmup}")
        self.times += reply["seconds"]
        self.cpu_times += reply["cpu_seconds"]
        self.preempted += reply["preempted"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --- the run -----------------------------------------------------------------------------------
def measure_peak(args, host: dict[str, Any], when: str) -> dict[str, Any]:
    n = PEAK_N_QUICK if args.quick else PEAK_N
    out = {"when": when, "fp32_gflops": matmul_gflops(n, torch.float32, args.peak_repeats)}
    if has_bf16(host):
        out["bf16_gflops"] = matmul_gflops(n, torch.bfloat16, args.peak_repeats)
    out["load_1min"] = os.getloadavg()[0]
    log(f"peak {when}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items() if k.endswith("gflops")))
    return out


def family_report(f: Family, peak: float, bf16_peak: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"label": f.label, "config": f.config, "data": f.data, "batch_size": f.batch_size,
                           "aelab": f.aelab.summary(peak)}
    if f.failed:
        row["failed_variants"] = f.failed
    for name, c in f.variants.items():  # a bf16 step's fraction is of the bfloat16 bound (where the CPU has one)
        bf16 = name.startswith("bf16") and bf16_peak is not None
        twin = c.summary(bf16_peak if bf16 else peak)
        twin["fraction_of_bound"] = twin.pop("fraction_of_fp32_bound")
        row.setdefault("variants", {})[name] = twin | {
            "bound": "bf16" if bf16 else "fp32", "speedup": row["aelab"]["ms_per_step"] / twin["ms_per_step"],
            **({"compile_seconds": c.compile_seconds} if c.compile_seconds is not None else {})}
    if f.notes:
        row["notes"] = f.notes
    if f.peer is not None:
        peer = f.peer.summary(peak)
        if isinstance(f.peer, PythaeContender):
            peer |= {"side": f.peer.info}
        row["peer"] = {"name": f.peer_label, **peer}
        row["aelab_over_peer"] = peer["ms_per_step"] / row["aelab"]["ms_per_step"]
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    host = host_info(args.threads)
    load = Loader(args.data_dir)
    families: list[Family] = []
    with tempfile.TemporaryDirectory(prefix="aelab-roofline-") as tmp:
        try:
            for name in args.families:
                log(f"building {name}")
                fam = BUILDERS[name](args, load)
                if name == "mlp_vae" and args.peers:
                    python = vae_vs_pythae.ensure_pythae_venv(args.venv.expanduser())
                    fam.peer = PythaeContender(python, fam.aelab.batches, args.threads, Path(tmp))
                    fam.peer_label = f"{vae_vs_pythae.PYTHAE} (its BaseTrainer step, torch.optim.Adam)"
                elif not args.peers:
                    fam.peer = None
                fam.variants = {v: fam.aelab.twins[v]() for v in args.variants}
                log(f"counting {name}")
                for c in (fam.aelab, *list(fam.variants.values()), fam.peer):
                    if c is None:
                        continue
                    if c.name == "aelab compiled":  # its first step compiles; its FLOPs are aelab's
                        t0 = time.perf_counter()
                        try:
                            c.run(0, 1)
                        except Exception as e:  # noqa: BLE001 - a step torch.compile cannot run is a finding
                            fam.variants.pop("compiled")
                            fam.failed["compiled"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                            log(f"{name} compiled: {fam.failed['compiled']}")
                            continue
                        c.compile_seconds = time.perf_counter() - t0
                        c.run(0, args.warmup)
                        c.flops, c.by_op = list(fam.aelab.flops), dict(fam.aelab.by_op)
                        continue
                    c.run(0, args.warmup)  # past the first step (the VQ-VAE's k-means initialisation)
                    c.count()
                families.append(fam)
            peaks = []
            for r in range(args.rounds):
                peaks.append(measure_peak(args, host, f"before round {r + 1}"))
                for fam in families:
                    contenders = [c for c in (fam.aelab, *fam.variants.values(), fam.peer) if c is not None]
                    for c in contenders if r % 2 == 0 else contenders[::-1]:  # alternate who goes first
                        c.run(args.steps, args.warmup)
                    log(f"round {r + 1}/{args.rounds} {fam.name}: "
                        + ", ".join(f"{c.name} {1e3 * statistics.median(c.times):.1f} ms" for c in contenders))
            peaks.append(measure_peak(args, host, "after the last round"))
            for fam in families if args.profile else []:
                log(f"profiling {fam.name}")
                fam.aelab.profile(args.profile)
        finally:
            for fam in families:
                if isinstance(fam.peer, PythaeContender):
                    fam.peer.close()
    bound = max(p["fp32_gflops"] for p in peaks)
    bf16_bound = max((p["bf16_gflops"] for p in peaks if "bf16_gflops" in p), default=None)
    return {
        "benchmark": "roofline",
        "command": "python benchmarks/roofline.py " + " ".join(args.argv),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": host | {"aelab": aelab.__version__, "python": platform.python_version(),
                        "load_average_1_5_15min_at_end": list(os.getloadavg())},
        "settings": {"threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
                     "warmup_per_round": args.warmup, "batches_in_cycle": args.cycle, "quick": args.quick,
                     "peak_matrix": PEAK_N_QUICK if args.quick else PEAK_N, "peak_repeats": args.peak_repeats},
        "bound": {"fp32_gflops": bound, "rule": "the maximum of the fp32 torch.mm measurements below",
                  "measurements": peaks},
        "counting": "FlopCounterMode over one real training step per batch of the cycle (matrix products and "
                    "convolutions, forward and backward; the optimizer, element-wise ops and reductions count "
                    "zero), with formulas for mkldnn._linear_pointwise and mkldnn_rnn_layer(_backward)",
        "families": {f.name: family_report(f, bound, bf16_bound) for f in families},
    }


def markdown(report: dict[str, Any]) -> str:
    h = report["host"]
    b = report["bound"]
    peaks = ", ".join(f"{p['fp32_gflops']:.0f}" for p in b["measurements"])
    bf16 = [p["bf16_gflops"] for p in b["measurements"] if "bf16_gflops" in p]
    lines = [
        f"Host: {h['cpu']} ({h['cores']} cores; {', '.join(h['flags'])}; PyTorch capability "
        f"{h['cpu_capability']}), {h['threads']} threads, torch {h['torch']}; measured {report['measured_at']}.",
        f"Bound: float32 `torch.mm` {report['settings']['peak_matrix']}^3, best of "
        f"{report['settings']['peak_repeats']}, measured before each round and after the last: {peaks} GFLOP/s; "
        f"the bound is their maximum, {b['fp32_gflops']:.0f} GFLOP/s"
        + (f" (bfloat16: {min(bf16):.0f}-{max(bf16):.0f} GFLOP/s, the bound of the bf16 variants only)."
           if bf16 else "."),
        "",
        "| family | batch | GFLOP / step | ms / step | steps / s | GFLOP/s | fraction of fp32 bound | peer | "
        "peer ms / step | peer fraction | aelab / peer speed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for f in report["families"].values():
        a = f["aelab"]
        row = (f"| {f['label']} | {f['batch_size']} | {a['gflop_per_step']:.3g} | {a['ms_per_step']:.1f} | "
               f"{a['steps_per_second']:.1f} | {a['achieved_gflops']:.1f} | {a['fraction_of_fp32_bound']:.3f} |")
        if "peer" in f:
            p = f["peer"]
            row += (f" {p['name'].split(' (')[0]} | {p['ms_per_step']:.1f} | {p['fraction_of_fp32_bound']:.3f} | "
                    f"{f['aelab_over_peer']:.2f}x |")
        else:
            row += " - | | | |"
        lines.append(row)
    variant_rows = [(f, name, v) for f in report["families"].values() for name, v in f.get("variants", {}).items()]
    if variant_rows:
        lines += ["", "| family | variant | ms / step | fp32 eager ms / step | speed-up | fraction of its bound | "
                  "compile s |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for f, name, v in variant_rows:
            compiled = f"{v['compile_seconds']:.0f}" if "compile_seconds" in v else ""
            lines.append(f"| {f['label']} | {name} | {v['ms_per_step']:.1f} | {f['aelab']['ms_per_step']:.1f} | "
                         f"{v['speedup']:.2f}x | {v['fraction_of_bound']:.3f} ({v['bound']}) | {compiled} |")
    for f in report["families"].values():
        for name, why in f.get("failed_variants", {}).items():
            lines += ["", f"{f['label']}, {name}: failed ({why})."]
        prof = f["aelab"].get("profile")
        if prof:
            ops = ", ".join(f"`{k}` {v:.2f}" for k, v in list(prof["ms_per_step_by_operator"].items())[:10])
            lines += ["", f"{f['label']}, ms per step under the profiler ({prof['steps']} steps): wall "
                      f"{prof['wall_ms_per_step']:.2f}, outside any operator "
                      f"{prof['outside_operators_ms_per_step']:.2f}, "
                      f"{prof['operator_calls_per_step']:.0f} operator calls; {ops}; other operators "
                      f"{prof['other_operators_ms_per_step']:.2f}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, from {', '.join(FAMILIES)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="rounds of (bound, every family); the bound once more after")
    p.add_argument("--steps", type=int, default=4, help="timed steps per contender and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them, each round")
    p.add_argument("--cycle", type=int, default=2, help="real batches per family, counted once each, cycled")
    p.add_argument("--peak-repeats", type=int, default=5)
    p.add_argument("--no-peers", dest="peers", action="store_false",
                   help="no peers (pythae's venv not built or wanted; the text reference is skipped too)")
    p.add_argument("--venv", type=Path, default=vae_vs_pythae.default_venv(),
                   help="the pythae virtual environment of vae_vs_pythae.py (default: %(default)s)")
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)))
    p.add_argument("--bf16", action="store_true",
                   help="also time each family's step under trainer.precision=bf16 (a copy of the same model)")
    p.add_argument("--compile", action="store_true",
                   help="also time each family's step with its loss under torch.compile (compile time reported)")
    p.add_argument("--channels-last", action="store_true",
                   help="also time each family's step with the model and images in channels-last (NHWC) layout "
                        "(with --bf16 also under bfloat16)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after the rounds, profile aelab's step of each family over STEPS steps (time per operator)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 2 steps, 2 batches, 512^3 bound")
    p.add_argument("--save", nargs="?", const=RESULT, type=Path, default=None, metavar="PATH",
                   help=f"also write the JSON (atomically) to PATH, default {RESULT.relative_to(HERE.parent)}")
    p.add_argument("--markdown", action="store_true", help="print the README table to stderr")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = [str(a) for a in argv]
    args.families = [f for f in args.families.split(",") if f]
    args.variants = [v for v, on in (("bf16", args.bf16), ("compiled", args.compile),
                                     ("channels_last", args.channels_last),
                                     ("bf16_channels_last", args.channels_last and args.bf16)) if on]
    unknown = [f for f in args.families if f not in BUILDERS]
    if unknown:
        p.error(f"unknown family {unknown[0]!r}; families: {', '.join(FAMILIES)}")
    if args.quick:
        args.rounds, args.steps, args.warmup, args.cycle, args.peak_repeats = 1, 2, 1, 2, 2
    for name in ("threads", "rounds", "steps", "cycle", "peak_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.save is not None:
        atomic_write_text(args.save, text + "\n")
        log(f"saved {args.save}")
    if args.markdown:
        print(markdown(report), file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
