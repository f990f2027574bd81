"""Posterior collapse and its remedies on the fortunes corpus: one table, several seeds per row.

Every row is an ordinary run (what ``aelab train`` does, in RUN_ROOT/ROW/seedS) followed by the
same evaluation on the test sentences: NLL (IWAE bound, ``--k`` samples, on ``--eval-limit``
sentences), perplexity (``<eos>`` counted), -ELBO, KL, mutual information, active units, and
greedy-reconstruction BLEU from the posterior mean; ``s/epoch`` is the training time per epoch
from the run's own log. Rows run ``--jobs`` at a time, one thread each.

  python benchmarks/text_claims.py --seeds 0,1,2 --out benchmarks/results/text_claims.json
  python benchmarks/text_claims.py --rows lm,vae --seeds 0 --epochs 1 --quick   # a smoke run
  python benchmarks/text_claims.py --time-iwae freebits --k 500 --threads 2      # IWAE k=500, all test sentences

Prints JSON (every run and per row the mean and s.d.), and a Markdown table with ``--markdown``.
Each row is ``text_vae`` with no remedy plus one remedy (or ``text_lm``); the protocol is the
shared ``BASE`` below.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _claims import common_arguments, emit, finished, merge, seconds_per_epoch, summarise
from _host import host_info

from aelab.config import to_dict
from aelab.data.base import load_data
from aelab.io import atomic_write_text
from aelab.metrics.latent import latent_diagnostics
from aelab.metrics.text import text_likelihood, text_reconstruction
from aelab.runs import RunConfig, load_run, train_run

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: the protocol every row shares: model sizes, vocabulary, optimisation
BASE: dict[str, Any] = {
    "model": {"embed_dim": 128, "hidden": 256, "latent_dim": 32},
    "data": {"name": "fortunes", "min_count": 3},
    # bfloat16 autocast (the output layer; LSTMs stay float32) and fused Adam: 1.3x faster at the
    # same NLL in benchmarks/text_vae_speed.py
    "trainer": {"batch_size": 64, "lr": 1e-3, "grad_clip": 5.0, "iwae_k": 0, "diagnostics": False,
                "precision": "bf16", "fused": True,
                "eval_limit": 200, "progress": False, "images": False, "log_every": 50},
}
#: fortunes' training sentences, and the steps in one epoch of them at batch 64 (the annealing horizon)
FORTUNES_TRAIN = 23_092
EPOCH_STEPS = 361

#: row -> (model, model overrides on top of BASE)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "lm": ("text_lm", {}),
    # the references of the dilated-CNN rows: the same decoders without a latent
    "lm_cnn_small": ("text_lm", {"decoder": "cnn", "cnn_preset": "small"}),
    "lm_cnn_medium": ("text_lm", {"decoder": "cnn", "cnn_preset": "medium"}),
    "lm_cnn_large": ("text_lm", {"decoder": "cnn", "cnn_preset": "large"}),
    "vae": ("text_vae", {}),
    "anneal": ("text_vae", {"beta": f"linear(0, 1, {EPOCH_STEPS // 2})"}),
    "wdrop25": ("text_vae", {"word_dropout": 0.25}),
    "wdrop50": ("text_vae", {"word_dropout": 0.5}),
    "freebits": ("text_vae", {"free_bits": 0.25, "free_bits_mode": "dim"}),
    "bow": ("text_vae", {"bow_weight": 1.0}),
    "anneal_wdrop50": ("text_vae", {"beta": f"linear(0, 1, {EPOCH_STEPS // 2})", "word_dropout": 0.5}),
    "cnn_small": ("text_vae", {"decoder": "cnn", "cnn_preset": "small"}),
    "cnn_medium": ("text_vae", {"decoder": "cnn", "cnn_preset": "medium"}),
    "cnn_large": ("text_vae", {"decoder": "cnn", "cnn_preset": "large"}),
    # He et al. check the MI once an epoch and run up to 100 inner steps; on 2 cores the phase is
    # checked every 40 steps and an inner loop stops after 10 (or when its loss stops falling)
    "aggressive": ("text_vae", {"aggressive": True, "aggressive_inner": 10, "aggressive_patience": 5,
                                "aggressive_check": 40}),
}
LABELS = {
    "lm": "`text_lm` (LSTM, no latent)", "vae": "`text_vae`, no remedy",
    "lm_cnn_small": "`text_lm`, dilated CNN small", "lm_cnn_medium": "`text_lm`, dilated CNN medium",
    "lm_cnn_large": "`text_lm`, dilated CNN large",
    "anneal": "+ KL annealing (0 -> 1 over half an epoch)",
    "wdrop25": "+ word dropout 0.25", "wdrop50": "+ word dropout 0.5", "freebits": "+ free bits 0.25/dim",
    "bow": "+ bag-of-words loss (weight 1)",
    "anneal_wdrop50": "+ KL annealing and word dropout 0.5 (Bowman et al.'s recipe)",
    "cnn_small": "dilated CNN small (RF 15)",
    "cnn_medium": "dilated CNN medium (RF 63)", "cnn_large": "dilated CNN large (RF 125)",
    "aggressive": "+ aggressive training (He et al.)",
}


def run_config(row: str, seed: int, args: argparse.Namespace) -> RunConfig:
    model, overrides = ROWS[row]
    model_cfg = dict(BASE["model"])
    if model == "text_lm":
        model_cfg.pop("latent_dim")
    return RunConfig.from_dict({
        "model": model,
        "model_config": merge(model_cfg, overrides),
        "data": dict(BASE["data"], root=str(args.data_dir)),
        "trainer": dict(BASE["trainer"], epochs=args.epochs, seed=seed,
                        **({"max_steps": args.max_steps} if args.max_steps else {})),
    })


def evaluate(run_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    cfg, model = load_run(run_dir)
    test = load_data(cfg.data).test
    out = text_likelihood(model, test, k=args.k, limit=args.eval_limit, batch_size=50)
    if model.capabilities.latent_prior:
        out |= latent_diagnostics(model, test, 500, limit=args.eval_limit, mi_limit=1000)
        out |= text_reconstruction(model, test, limit=args.eval_limit)
    return {k: v for k, v in out.items() if not k.startswith("kl_dim_")}


def one(job: tuple[str, int, argparse.Namespace]) -> dict[str, Any]:
    row, seed, args = job
    torch.set_num_threads(args.threads)
    run_dir = Path(args.runs) / row / f"seed{seed}"
    t0 = time.perf_counter()
    done = not args.retrain and finished(run_dir, args.epochs)
    cache = run_dir / f"claim_eval_k{args.k}_n{args.eval_limit or 0}.json"
    if done and cache.is_file():
        return json.loads(cache.read_text()) | {"s_per_epoch": seconds_per_epoch(run_dir, FORTUNES_TRAIN)}
    if not done:
        if args.finished_only:
            return {"row": row, "seed": seed, "missing": True}
        train_run(run_config(row, seed, args), run_dir, resume=(run_dir / "trainer_state.safetensors").is_file())
    metrics = evaluate(run_dir, args)
    result = {"row": row, "seed": seed, "run_dir": str(run_dir), "wall_s": time.perf_counter() - t0, **metrics,
              "s_per_epoch": seconds_per_epoch(run_dir, FORTUNES_TRAIN)}
    atomic_write_text(cache, json.dumps(result) + "\n")
    return result


def markdown(summary: dict[str, dict[str, Any]], k: int) -> str:
    cols = [("nll", f"NLL (IWAE k={k})", 2), ("ppl", "PPL", 1), ("kl", "KL", 2), ("mutual_info", "MI", 2),
            ("active_units", "AU", 1), ("recon_bleu", "recon BLEU", 3), ("s_per_epoch", "s/epoch", 0)]
    lines = ["| setting | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for s in summary.values():
        cells = []
        for key, _, digits in cols:
            if key not in s:
                cells.append("-")
                continue
            m, sd = s[key]["mean"], s[key]["sd"]
            cells.append(f"{m:.{digits}f} ± {sd:.{digits}f}")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_iwae(row: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time the IWAE bound with ``--k`` samples on the whole test split with seed 0's run of ``row``."""
    torch.set_num_threads(args.threads)
    cfg, model = load_run(Path(args.runs) / row / "seed0")
    test = load_data(cfg.data).test
    t0 = time.perf_counter()
    out = text_likelihood(model, test, k=args.k, limit=None, batch_size=50)
    return {"row": row, "k": args.k, "sentences": len(test), "seconds": time.perf_counter() - t0,
            "threads": args.threads, "host": host_info(args.threads), **out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p, list(ROWS), "aelab_text_claims", SHARED_DATA)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--k", type=int, default=50, help="importance samples of the NLL")
    p.add_argument("--eval-limit", type=int, default=1000, help="test sentences scored (0: all 2,565)")
    p.add_argument("--quick", action="store_true", help="60 steps a run, 200 test sentences, k=5")
    p.add_argument("--time-iwae", metavar="ROW", help="only time the IWAE bound (--k samples, every test "
                   "sentence) of ROW's seed-0 run")
    args = p.parse_args()
    if args.quick:
        args.max_steps, args.eval_limit, args.k, args.epochs = 60, 200, 5, 1
    args.eval_limit = args.eval_limit or None
    if args.time_iwae:
        text = json.dumps(time_iwae(args.time_iwae, args), indent=1)
        print(text)
        if args.out:
            atomic_write_text(args.out, text + "\n")
        return
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    # seed by seed (a table cut short still has every row), the slowest row first in each
    jobs = sorted(((r, s, args) for r in rows for s in seeds), key=lambda j: (j[1], j[0] != "aggressive"))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(one, jobs, chunksize=1)
    summary = summarise(results, rows, LABELS)
    protocol = {"base": BASE, "rows": {r: ROWS[r] for r in rows}, "epochs": args.epochs, "max_steps": args.max_steps,
                "k": args.k, "eval_limit": args.eval_limit, "jobs": args.jobs, "threads": args.threads}
    report = {"host": host_info(args.threads), "protocol": protocol,
              "command": " ".join(sys.argv), "wall_s": time.perf_counter() - t0, "summary": summary, "runs": results,
              "model_configs": {r: to_dict(run_config(r, 0, args).model_config) for r in rows}}
    emit(report, args, markdown(summary, args.k))


if __name__ == "__main__":
    main()
