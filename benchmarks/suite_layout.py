"""The disentanglement suite (``dlib`` protocol) of one run, scored back to back with the model's
encoder in channels-last and in the default (NCHW) layout: seconds per phase and the metrics.

  python benchmarks/suite_layout.py runs/study/dip_vae_i/seed0 --save benchmarks/results/suite_layout.json

Each layout is scored in a fresh process (``--threads`` threads), channels-last first; the report
gives both totals, the speed-up and every metric that differs between the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from _host import host_info

from aelab.data.base import load_data
from aelab.io import atomic_write_text
from aelab.metrics.disentanglement import disentanglement_metric
from aelab.runs import load_run


def score(run_dir: str, channels_last: bool, seed: int) -> dict:
    cfg, model = load_run(run_dir)
    test = load_data(cfg.data).test
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    metrics = disentanglement_metric(model, test, protocol="dlib", seed=seed, timings=timings,
                                     channels_last=channels_last)
    return {"total_s": time.perf_counter() - t0, "timings": timings, "metrics": metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=("channels_last", "nchw"), help=argparse.SUPPRESS)
    p.add_argument("--save", help="write the JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(score(args.run_dir, args.child == "channels_last", args.seed)))
        return
    out = {}
    for layout in ("channels_last", "nchw"):
        proc = subprocess.run([sys.executable, __file__, args.run_dir, "--threads", str(args.threads),
                               "--seed", str(args.seed), "--child", layout], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"scoring {args.run_dir} ({layout}) failed:\n{proc.stderr}")
        out[layout] = json.loads(proc.stdout.splitlines()[-1])
    a, b = out["channels_last"]["metrics"], out["nchw"]["metrics"]
    report = {"benchmark": "suite_layout", "host": host_info(args.threads), "command": " ".join(sys.argv),
              "run_dir": args.run_dir, "layouts": out,
              "speedup": out["nchw"]["total_s"] / out["channels_last"]["total_s"],
              "encode_speedup": out["nchw"]["timings"]["encode"] / out["channels_last"]["timings"]["encode"],
              "metric_differences": {k: a[k] - b[k] for k in a if a[k] != b[k]}}
    text = json.dumps(report, indent=1)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    main()
