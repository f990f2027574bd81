"""Benchmark: what torchrun data parallelism and the Ray sweep engine cost on this machine, as JSON.

* **DDP**: samples/s of the same training (an AE on mnist-10k, global batch ``--batch``) as one
  process with 1 thread, one process with 2 threads, and ``torchrun --nproc_per_node 2`` with 1
  thread a process (gloo), in interleaved rounds (``--rounds``) so that load from other processes
  falls on every variant alike. Throughput is the trainer's own ``samples_per_second`` of each
  epoch (the training loop only, no evaluation), median over epochs and rounds. On a 2-core
  machine two processes can at best match one process using both cores; the figure says what
  gloo's gradient all-reduce and the per-step loss all-reduce cost at this model size.
* **Sweep engine**: a sweep of ``--trials`` one-step trials on a local Ray with 2 CPUs (1 a
  trial): seconds from submitting the sweep to each trial's task starting, from the task
  starting to its first training step (data loaded, model built) and the driver's total wall
  time, next to the same trials trained in this process one after the other.

Usage:
    python benchmarks/distributed_overhead.py [--steps 300] [--rounds 3] [--trials 4] [--save]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _host import host_info

from aelab.io import atomic_write_text
from aelab.runs import RunConfig, train_run
from aelab.training.sweep import RayOptions, load_sweep_spec, read_trial_status, run_sweep

RESULT = Path(__file__).resolve().parent / "results" / "distributed_overhead.json"


def _ae_args(steps: int, batch: int) -> list[str]:
    sets = {"trainer.max_steps": steps, "trainer.batch_size": batch, "trainer.images": "false", "trainer.iwae_k": 0,
            "trainer.progress": "false", "trainer.eval_limit": 200, "trainer.checkpoint_every": 100_000,
            "model.backbone.hidden": "[512,256]"}
    return ["ae", "--data", "mnist-10k", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]


def _throughput(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_second"] for r in records if r.get("split") == "test" and "samples_per_second" in r]


def ddp(steps: int, batch: int, rounds: int, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    variants = {
        "1 process, 1 thread": ([sys.executable, "-m", "aelab", "--threads", "1", "train"], "1"),
        "1 process, 2 threads": ([sys.executable, "-m", "aelab", "--threads", "2", "train"], "2"),
        "torchrun 2 processes x 1 thread (gloo)": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "aelab",
             "--threads", "1", "train"], "1"),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for v, (name, (cmd, omp)) in enumerate(variants.items()):
            out = work / f"ddp-round{r}-variant{v}"
            subprocess.run([*cmd, *_ae_args(steps, batch), "--out", str(out)], env=env | {"OMP_NUM_THREADS": omp},
                           check=True, capture_output=True)
            samples[name] += _throughput(out)
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["1 process, 2 threads"]
    return {"model": "ae 784-512-256-(latent 32) on mnist-10k", "global_batch": batch, "steps": steps,
            "samples_per_second": med, "epochs_measured": {k: len(v) for k, v in samples.items()},
            "ratio_to_1_process_2_threads": {k: v / base for k, v in med.items()}}


def sweep(trials: int, work: Path) -> dict:
    spec_path = work / "overhead.json"
    spec_path.write_text(json.dumps({
        "name": "overhead", "base": {"model": "ae", "model_config": {"backbone": {"kind": "mlp", "hidden": [256]}},
                                      "data": {"name": "mnist-10k"},
                                      "trainer": {"epochs": 1, "max_steps": 1, "images": False, "iwae_k": 0,
                                                  "progress": False, "eval_limit": 200}},
        "grid": {"model.latent_dim": [8, 16]}, "seeds": list(range(max(1, trials // 2)))}))
    spec = load_sweep_spec(spec_path)
    t0 = time.time()
    rows = run_sweep(spec, work / "sweep", RayOptions(cpus=2, cpus_per_trial=1))
    wall = time.time() - t0
    status = [read_trial_status(work / "sweep" / "trials" / r["name"]) for r in rows]
    to_task = sorted(s["started"] - t0 for s in status)
    setup = [s["training_started"] - s["started"] for s in status]
    t1 = time.time()
    for i, t in enumerate(spec.trials()):  # the same trials, one after the other, in this process
        train_run(RunConfig.from_dict(t.config), work / "inline" / str(i))
    inline = time.time() - t1
    return {"trials": len(rows), "sweep_wall_seconds": wall, "inline_seconds": inline,
            "submission_to_task_start_seconds": to_task,
            "first_wave_task_start_seconds": to_task[:2],
            "task_start_to_first_step_seconds": {"median": statistics.median(setup), "max": max(setup)},
            "note": "the first wave's start includes starting Ray (once a sweep); later trials also wait for a "
                    "free CPU (2 CPUs, 1 a trial)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--parts", default="ddp,sweep")
    p.add_argument("--save", action="store_true", help=f"also write the JSON to {RESULT}")
    args = p.parse_args()
    out = {"benchmark": "distributed_overhead", "host": host_info(2)}
    with tempfile.TemporaryDirectory() as tmp:
        if "ddp" in args.parts:
            out["ddp"] = ddp(args.steps, args.batch, args.rounds, Path(tmp))
        if "sweep" in args.parts:
            out["sweep"] = sweep(args.trials, Path(tmp))
    text = json.dumps(out, indent=2)
    print(text)
    if args.save:
        atomic_write_text(RESULT, text + "\n")


if __name__ == "__main__":
    main()
