"""Benchmark (issue 14): aelab's ``text_vae`` against a plain-PyTorch sentence VAE, side by side.

The contenders train the same model (Bowman et al.'s sentence VAE: separate word embeddings for
encoder and decoder, E = ``--embed``; a one-layer LSTM encoder of width H = ``--hidden`` whose
final hidden state gives mu and log-variance of a D = ``--latent`` diagonal Gaussian; z -> a
linear map -> the decoder LSTM's initial (tanh(h), c); a linear output layer over the whole
vocabulary; standard normal prior; KL weight 1, analytic) on fortunes with the same vocabulary
(aelab's ``Vocab`` at ``--vocab-min-count``), batch size, learning rate (Adam 1e-3, constant),
number of optimizer steps and seed. Each uses its own default initialisation.

    reference: written the way open re-implementations write it (e.g. timbmg/Sentence-VAE and
        the many repositories derived from it): batches drawn by a random shuffle and padded to
        the batch's longest sentence, ``nn.Embedding``, the encoder ``nn.LSTM`` over
        ``pack_padded_sequence`` (sorted by length), ``nn.Linear`` to mu and to log-variance,
        the decoder ``nn.LSTM`` over ``pack_padded_sequence`` with its state from z,
        ``pad_packed_sequence``, the output ``nn.Linear`` on every (padded) position,
        ``log_softmax`` + ``NLLLoss(ignore_index=pad, reduction="sum")``, the analytic KL, the sum
        divided by the batch size, ``torch.optim.Adam`` with its defaults (per-tensor loop).
    aelab: ``text_vae`` (``posterior_scale=log_var``, so the head is the same function of its
        weights) trained by the Trainer's own step, ``Trainer._train_step`` (batch to device,
        ``model.loss(batch)``, the finite check, backward, Adam), on the Trainer's batches
        (``train_batches``: length-bucketed order), with ``--precision`` (fp32 or bf16 autocast)
        and aelab's fused Adam (``--no-fused``: torch's loop).

Timing: the two train in one process and never at once; they take turns every ``--turn-steps``
optimizer steps, each with its own torch RNG stream (swapped in at each turn, so a side draws
exactly what it would alone). Load from other processes on a shared machine then falls on both
alike. Tokens per second = training tokens (every sentence's ``<eos>`` included, padding not) /
the seconds of that side's turns (batching, forward, loss, backward, optimizer step).

Likelihood (one estimator for both): the reference's trained weights are copied into an aelab
``text_vae`` of the same shape (the script checks that it reproduces the reference's
reconstruction NLL on a batch to float rounding), then ``aelab.metrics.text.text_likelihood``
scores both on the same test sentences with the same random numbers: the IWAE bound with
``--iwae-k`` samples (NLL per sentence, nats) and the k-sample -ELBO.

Memory: each contender trains ``--rss-steps`` steps and scores ``--rss-eval`` test sentences in a
subprocess of its own; its peak resident set (``VmHWM``) is reported.

IWAE k = 500: ``--iwae-full-k`` samples on ``--iwae-full-limit`` test sentences (default: all
2,565) with aelab's model of the first seed, timed; on a subset the extrapolation to the full
test set is reported as such.

Usage:
    python benchmarks/text_vae_speed.py --quick                       # about 2 minutes
    # the measurement in benchmarks/results/text_vae_speed.json (about 12 minutes on 2 cores):
    python benchmarks/text_vae_speed.py --seeds 0-2 --max-steps 50 --turn-steps 10 --test-limit 1000 \
        --iwae-k 5 --rss-steps 10 --rss-eval 50 --iwae-full-limit 32
    python benchmarks/text_vae_speed.py --epochs 5 --seeds 0-2 --iwae-k 100 --out FILE  # the full protocol
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _host import host_info
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import aelab
from aelab.data.base import DataConfig, load_data
from aelab.data.batches import steps_per_epoch, train_batches
from aelab.data.text import BOS, PAD, TokenSequences
from aelab.metrics.text import text_likelihood
from aelab.protocol import WEIGHTS_NAME, build_model, load_weights
from aelab.training.trainer import Trainer, TrainerConfig

GIB = 1 << 30


# --- the reference: a sentence VAE as open re-implementations write it ---------------------------
class ReferenceSentenceVAE(nn.Module):
    """Plain PyTorch, in the style of timbmg/Sentence-VAE (sort, pack, pad back, unsort)."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.encoder_embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.decoder_embedding = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        self.encoder_rnn = nn.LSTM(embed, hidden, batch_first=True)
        self.hidden2mean = nn.Linear(hidden, latent)
        self.hidden2logv = nn.Linear(hidden, latent)
        self.latent2hidden = nn.Linear(latent, 2 * hidden)
        self.decoder_rnn = nn.LSTM(embed, hidden, batch_first=True)
        self.outputs2vocab = nn.Linear(hidden, vocab_size)

    def encode(self, target: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        sorted_lengths, sorted_idx = torch.sort(lengths, descending=True)
        emb = self.encoder_embedding(target[sorted_idx])
        packed = pack_padded_sequence(emb, sorted_lengths.tolist(), batch_first=True)
        _, (h, _) = self.encoder_rnn(packed)
        _, reversed_idx = torch.sort(sorted_idx)
        h = h[-1][reversed_idx]
        return self.hidden2mean(h), self.hidden2logv(h)

    def decode_logp(self, z: Tensor, inputs: Tensor, lengths: Tensor) -> Tensor:
        """Log-probabilities ``(B, T, V)`` of the next token at every padded position."""
        sorted_lengths, sorted_idx = torch.sort(lengths, descending=True)
        h, c = self.latent2hidden(z[sorted_idx]).chunk(2, -1)
        state = (torch.tanh(h).unsqueeze(0).contiguous(), c.unsqueeze(0).contiguous())
        emb = self.decoder_embedding(inputs[sorted_idx])
        packed = pack_padded_sequence(emb, sorted_lengths.tolist(), batch_first=True)
        outputs, _ = self.decoder_rnn(packed, state)
        padded, _ = pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])
        _, reversed_idx = torch.sort(sorted_idx)
        padded = padded[reversed_idx]
        b, t, _ = padded.shape
        return F.log_softmax(self.outputs2vocab(padded.reshape(-1, self.hidden)), -1).view(b, t, -1)

    def forward(self, target: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logv = self.encode(target, lengths)
        z = torch.randn_like(mean) * torch.exp(0.5 * logv) + mean
        inputs = torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], 1)
        return self.decode_logp(z, inputs, lengths), mean, logv


def reference_loss(model: ReferenceSentenceVAE, target: Tensor, lengths: Tensor) -> Tensor:
    logp, mean, logv = model(target, lengths)
    nll = F.nll_loss(logp.view(-1, logp.shape[-1]), target.reshape(-1), ignore_index=PAD, reduction="sum")
    kl = -0.5 * torch.sum(1 + logv - mean.pow(2) - logv.exp())
    return (nll + kl) / target.shape[0]


def reference_batches(data: TokenSequences, batch_size: int, generator: torch.Generator):
    """A DataLoader(shuffle=True)'s batches, each padded to its longest sentence."""
    order = torch.randperm(len(data), generator=generator)
    for i in range(0, len(data) - batch_size + 1, batch_size):  # drop_last: the trainer's step count
        idx = order[i : i + batch_size]
        lengths = data.lengths[idx]
        yield data.ids[idx][:, : int(lengths.max())], lengths


def port_reference(ref: ReferenceSentenceVAE, cfg: dict) -> nn.Module:
    """An aelab ``text_vae`` computing the reference's function (its weights copied)."""
    m = build_model("text_vae", **cfg)
    sd = ref.state_dict()
    new = {
        "encoder.embedding.weight": sd["encoder_embedding.weight"],
        "decoder.embedding.weight": sd["decoder_embedding.weight"],
        "head.linear.weight": torch.cat([sd["hidden2mean.weight"], sd["hidden2logv.weight"]]),
        "head.linear.bias": torch.cat([sd["hidden2mean.bias"], sd["hidden2logv.bias"]]),
        "decoder.init.weight": sd["latent2hidden.weight"], "decoder.init.bias": sd["latent2hidden.bias"],
        "decoder.out.weight": sd["outputs2vocab.weight"], "decoder.out.bias": sd["outputs2vocab.bias"],
    }
    for k, v in sd.items():
        for a, b in (("encoder_rnn.", "encoder.lstm."), ("decoder_rnn.", "decoder.lstm.")):
            if k.startswith(a):
                new[b + k[len(a):]] = v
    target = m.state_dict()
    missing = set(target) - set(new)
    missing = {k for k in missing if not k.startswith(("aggressive_on", "mi_window", "prior."))}
    if missing:
        raise RuntimeError(f"port: no reference weights for {sorted(missing)}")
    m.load_state_dict({**target, **new})
    return m


@torch.no_grad()
def check_port(ref: ReferenceSentenceVAE, ported: nn.Module, data: TokenSequences) -> float:
    """Largest |difference| of per-sentence reconstruction NLL given the same z (posterior mean)."""
    ref.eval()
    ported.eval()
    idx = torch.arange(min(64, len(data)))
    x, lengths = data.ids[idx][:, : int(data.lengths[idx].max())], data.lengths[idx]
    mean, _ = ref.encode(x, lengths)
    inputs = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], 1)
    logp = ref.decode_logp(mean, inputs, lengths)
    ref_nll = -(logp.gather(2, x.unsqueeze(2))[..., 0] * x.ne(PAD)).sum(1)
    q = ported.encode(x)
    ours = ported.decode(q.mean).nll(x)
    ref.train()
    return max(float((ref_nll - ours).abs().max()), float((q.mean - mean).abs().max()))


# --- the contenders' training, in turns -----------------------------------------------------------
class Side:
    """One contender: its steps as an iterator, its own RNG stream, its clock and token count."""

    def __init__(self, name: str, steps) -> None:
        self.name, self.steps = name, steps
        self.rng = None
        self.seconds, self.tokens, self.done, self.losses = 0.0, 0, 0, []

    def turn(self, n: int) -> bool:
        saved = torch.get_rng_state()
        if self.rng is not None:
            torch.set_rng_state(self.rng)
        t0 = time.perf_counter()
        more = True
        for _ in range(n):
            try:
                tokens, loss = next(self.steps)
            except StopIteration:
                more = False
                break
            self.tokens += tokens
            self.done += 1
            self.losses.append(loss)
        self.seconds += time.perf_counter() - t0
        self.rng = torch.get_rng_state()
        torch.set_rng_state(saved)
        return more


def model_cfg(args, vocab_size: int, max_len: int) -> dict:
    return dict(vocab_size=vocab_size, max_len=max_len, embed_dim=args.embed, hidden=args.hidden,
                latent_dim=args.latent, posterior_scale="log_var")


def aelab_steps(args, splits, seed: int, total: int, precision: str):
    torch.manual_seed(seed)
    model = build_model("text_vae", **model_cfg(args, len(splits.info.vocab), splits.info.shape[0]))
    cfg = TrainerConfig(epochs=math.ceil(total / steps_per_epoch(len(splits.train), args.batch_size)),
                        max_steps=total, batch_size=args.batch_size, lr=args.lr, seed=seed, fused=args.fused,
                        precision=precision, images=False, progress=False, diagnostics=False, iwae_k=0)
    trainer = Trainer(model, splits.train, None, cfg)

    def steps():
        epoch = 0
        while trainer.step < total:
            for batch in train_batches(splits.train, args.batch_size, seed, epoch):
                logs = trainer._train_step(batch)
                yield int(batch.lengths.sum()), logs["loss"]
                if trainer.step >= total:
                    return
            epoch += 1

    return model, steps()


def reference_steps(args, splits, seed: int, total: int):
    torch.manual_seed(seed)
    model = ReferenceSentenceVAE(len(splits.info.vocab), args.embed, args.hidden, args.latent)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(seed)

    def steps():
        done = 0
        model.train()
        while done < total:
            for target, lengths in reference_batches(splits.train, args.batch_size, generator):
                loss = reference_loss(model, target, lengths)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                done += 1
                yield int(lengths.sum()), loss.item()
                if done >= total:
                    return

    return model, steps()


def run_seed(args, splits, seed: int, total: int) -> dict:
    vocab, max_len = len(splits.info.vocab), splits.info.shape[0]
    sides: dict[str, Side] = {}
    models: dict[str, nn.Module] = {}
    models["reference"], it = reference_steps(args, splits, seed, total)
    sides["reference"] = Side("reference", it)
    for p in args.precisions:
        models[f"aelab_{p}"], it = aelab_steps(args, splits, seed, total, p)
        sides[f"aelab_{p}"] = Side(f"aelab_{p}", it)
    for s in sides.values():  # each side's own stream: seeded as if it ran alone
        torch.manual_seed(seed + 1)
        s.rng = torch.get_rng_state()
    more = True
    turn = 0
    while more:
        order = list(sides.values())
        order = order[turn % len(order):] + order[: turn % len(order)]  # rotate who goes first
        more = all([s.turn(args.turn_steps) for s in order])
        turn += 1
    out: dict = {"seed": seed, "steps": total}
    test = splits.test
    scored = {"reference": port_reference(models["reference"], model_cfg(args, vocab, max_len))}
    out["port_max_abs_diff"] = check_port(models["reference"], scored["reference"], test)
    for p in args.precisions:
        scored[f"aelab_{p}"] = models[f"aelab_{p}"]
    for name, s in sides.items():
        t0 = time.perf_counter()
        lik = text_likelihood(scored[name], test, k=args.iwae_k, limit=args.test_limit, seed=1234)
        out[name] = {"tokens_per_second": s.tokens / s.seconds, "seconds": s.seconds, "tokens": s.tokens,
                     "steps": s.done, "last_100_train_loss": statistics.fmean(s.losses[-100:]),
                     f"test_nll_iwae_k{args.iwae_k}": lik["nll"], "test_neg_elbo": lik["neg_elbo"],
                     "test_kl": lik["kl"], "test_ppl": lik["ppl"], "eval_seconds": time.perf_counter() - t0}
    for p in args.precisions:
        a, r = out[f"aelab_{p}"], out["reference"]
        out[f"aelab_{p}"]["speedup_over_reference"] = a["tokens_per_second"] / r["tokens_per_second"]
        out[f"aelab_{p}"]["nll_minus_reference"] = (a[f"test_nll_iwae_k{args.iwae_k}"]
                                                    - r[f"test_nll_iwae_k{args.iwae_k}"])
    name = f"aelab_{args.iwae_full_precision}"
    if args.keep_model is not None and seed == args.seeds[0] and name in models:
        models[name].save_pretrained(args.keep_model)  # safetensors + config.json, never pickle
    return out


# --- memory and the k = 500 IWAE, each in a process of its own ------------------------------------
def rss_side(args, splits) -> dict:
    side = args.rss_side
    if side == "reference":
        model, it = reference_steps(args, splits, 0, args.rss_steps)
    else:
        model, it = aelab_steps(args, splits, 0, args.rss_steps, side.removeprefix("aelab_"))
    for _ in it:
        pass
    if side == "reference":
        vocab, max_len = len(splits.info.vocab), splits.info.shape[0]
        model = port_reference(model, model_cfg(args, vocab, max_len))
    text_likelihood(model, splits.test, k=args.iwae_k, limit=args.rss_eval, seed=0)
    peak = peak_rss()
    return {"side": side, "peak_rss_bytes": peak, "peak_rss_gib": peak / GIB}


def iwae_full(args, splits) -> dict:
    torch.manual_seed(0)
    model = build_model("text_vae", **model_cfg(args, len(splits.info.vocab), splits.info.shape[0]))
    trained = bool(args.keep_model) and (Path(args.keep_model) / WEIGHTS_NAME).is_file()
    if trained:
        load_weights(model, args.keep_model)
    n = len(splits.test) if args.iwae_full_limit is None else min(args.iwae_full_limit, len(splits.test))
    t0 = time.perf_counter()
    if args.iwae_full_precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lik = text_likelihood(model, splits.test, k=args.iwae_full_k, limit=n, seed=0)
    else:
        lik = text_likelihood(model, splits.test, k=args.iwae_full_k, limit=n, seed=0)
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    return {"k": args.iwae_full_k, "sentences": n, "test_sentences": len(splits.test), "seconds": seconds,
            "extrapolated_full_test_seconds": seconds * len(splits.test) / n,
            "measured_on_full_test": n == len(splits.test),
            "precision": args.iwae_full_precision, "trained_weights": trained, "nll": lik["nll"],
            "peak_rss_gib": peak / GIB}


def profile(args, splits) -> dict:
    """Self CPU time per step of the costliest operators of each contender (``torch.profiler``),
    after ``--profile-steps`` warm-up steps, over ``--profile-steps`` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    n = args.profile_steps
    out: dict = {}
    contenders = {"reference": reference_steps(args, splits, 0, 2 * n)[1]}
    for q in args.precisions:
        contenders[f"aelab_{q}"] = aelab_steps(args, splits, 0, 2 * n, q)[1]
    for name, it in contenders.items():
        for _ in range(n):
            next(it)
        tokens = 0
        t0 = time.perf_counter()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                tokens += next(it)[0]
        wall = time.perf_counter() - t0
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        out[name] = {"ms_per_step_profiled": 1e3 * wall / n, "tokens_per_step": tokens / n,
                     "top_ops_self_ms_per_step": {e.key: round(e.self_cpu_time_total / 1e3 / n, 1)
                                                  for e in rows[:14]}}
    return out


def peak_rss() -> int:
    """This process's peak resident set in bytes: ``VmHWM`` (Linux; reset at ``exec``, unlike
    ``ru_maxrss``, which a child inherits from its parent's peak at ``fork``), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(args, mode: str, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args.argv, "--child", mode, *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def host() -> dict:
    """The machine (benchmarks/_host.py) and the versions of aelab and Python."""
    return host_info() | {"aelab": aelab.__version__, "python": platform.python_version()}


def mean_sd(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}


def parse_seeds(s: str) -> list[int]:
    if "-" in s:
        a, b = s.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in s.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0-2")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs (of the aelab trainer's batches)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per contender (overrides --epochs)")
    p.add_argument("--vocab-min-count", type=int, default=1)
    p.add_argument("--embed", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precisions", default="fp32,bf16", help="aelab contenders (trainer.precision)")
    p.add_argument("--no-fused", dest="fused", action="store_false", help="aelab with torch's per-tensor Adam")
    p.add_argument("--turn-steps", type=int, default=20)
    p.add_argument("--iwae-k", type=int, default=20, help="importance samples for the NLL table")
    p.add_argument("--test-limit", type=int, default=None, help="score a seeded subset of the test split")
    p.add_argument("--rss-steps", type=int, default=50)
    p.add_argument("--rss-eval", type=int, default=200)
    p.add_argument("--iwae-full-k", type=int, default=500)
    p.add_argument("--iwae-full-limit", type=int, default=None, help="test sentences for the k=500 timing")
    p.add_argument("--iwae-full-precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--skip-iwae-full", action="store_true")
    p.add_argument("--profile-steps", type=int, default=0, help="only profile this many steps per contender")
    p.add_argument("--quick", action="store_true", help="a ~2 minute check: 1 seed, 6 steps, small eval")
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss-side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--keep-model", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = [a for a in argv if a not in ("--child",)]
    if args.quick:
        args.seeds, args.max_steps, args.turn_steps, args.test_limit, args.iwae_k = "0", 6, 3, 50, 2
        args.rss_steps, args.rss_eval, args.iwae_full_limit = 4, 20, 2
    args.seeds = parse_seeds(args.seeds)
    args.precisions = [s for s in args.precisions.split(",") if s]
    splits = load_data(DataConfig(name="fortunes", min_count=args.vocab_min_count))

    if args.profile_steps:
        print(json.dumps({"host": host(), "profile": profile(args, splits)}, indent=2))
        return
    if args.child == "rss":
        print(json.dumps(rss_side(args, splits)))
        return
    if args.child == "iwae":
        print(json.dumps(iwae_full(args, splits)))
        return

    spe = steps_per_epoch(len(splits.train), args.batch_size)
    total = args.max_steps if args.max_steps is not None else max(1, round(args.epochs * spe))
    keep = Path(tempfile.gettempdir()) / f"text_vae_speed_{os.getpid()}"
    args.keep_model = str(keep)
    per_seed = [run_seed(args, splits, seed, total) for seed in args.seeds]
    names = ["reference"] + [f"aelab_{q}" for q in args.precisions]
    summary: dict = {}
    for n in names:
        summary[n] = {k: mean_sd([r[n][k] for r in per_seed])
                      for k in ("tokens_per_second", f"test_nll_iwae_k{args.iwae_k}", "test_neg_elbo", "test_kl")}
        if n != "reference":
            summary[n]["speedup_over_reference"] = mean_sd([r[n]["speedup_over_reference"] for r in per_seed])
            summary[n]["nll_minus_reference"] = mean_sd([r[n]["nll_minus_reference"] for r in per_seed])
    rss = {n: child(args, "rss", ["--rss-side", n]) for n in names}
    iwae = None
    if not args.skip_iwae_full:
        iwae = child(args, "iwae", ["--keep-model", str(keep)])
    shutil.rmtree(keep, ignore_errors=True)
    targets = {}
    for q in args.precisions:
        n = f"aelab_{q}"
        d = per_seed and [r[n]["nll_minus_reference"] for r in per_seed]
        targets[n] = {
            "speedup_at_least_2x": summary[n]["speedup_over_reference"]["mean"] >= 2.0,
            "speedup_at_least_2x_every_seed": all(r[n]["speedup_over_reference"] >= 2.0 for r in per_seed),
            # "equal or better": the mean difference is not above zero by more than its standard error
            "nll_equal_or_better": statistics.fmean(d) <= (statistics.stdev(d) / math.sqrt(len(d))
                                                           if len(d) > 1 else 0.0),
            "peak_rss_under_2gib": rss[n]["peak_rss_bytes"] < 2 * GIB,
        }
    report = {
        "benchmark": "text_vae_speed", "host": host(),
        "settings": {"data": "fortunes", "train_sentences": len(splits.train), "test_sentences": len(splits.test),
                     "vocab_min_count": args.vocab_min_count, "vocab_size": len(splits.info.vocab),
                     "embed": args.embed, "hidden": args.hidden, "latent": args.latent,
                     "batch_size": args.batch_size, "lr": args.lr, "steps_per_contender": total,
                     "epochs": total / spe, "seeds": args.seeds, "turn_steps": args.turn_steps,
                     "aelab_fused_adam": args.fused, "iwae_k": args.iwae_k,
                     "test_limit": args.test_limit, "quick": args.quick},
        "per_seed": per_seed, "summary": summary, "peak_rss": rss, "iwae_full": iwae,
        "targets": targets | {"iwae_k500_full_test_seconds": iwae and iwae["extrapolated_full_test_seconds"],
                              "iwae_k500_measured_on_full_test": iwae and iwae["measured_on_full_test"]},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
