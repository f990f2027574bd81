"""Speed and memory of the dSprites disentanglement protocol (issue 4's targets), printed as JSON.

One training run of the protocol used for the paper's dSprites claim
(``decomposition_claims.py dsprites``: a conv decomposition VAE, 10 latents, one pass over
120,000 seeded random dSprites images, batch 64), then the full metric suite on that model (MIG,
SAP, DCI, BetaVAE and FactorVAE scores, plus reconstruction) under ``--protocol`` (``dlib`` by
default: disentanglement_lib's sample sizes; ``seconds_*``: encoding, and each metric), timed
separately, and the process's peak resident memory. dSprites (737,280 images) is rendered on
demand, so only an index array is held in memory.

  python benchmarks/dsprites_protocol.py --threads 2 --save benchmarks/results/dsprites_protocol.json

Targets: training protocol <= 30 min, metric suite < 1 min, peak RSS < 1 GiB, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import host_info  # noqa: E402
from decomposition_claims import CLAIMS, SHARED_DATA, run_one  # noqa: E402

import aelab  # noqa: E402
from aelab.io import atomic_write_text  # noqa: E402


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", default="anisotropic N(0, diag v)", choices=sorted(CLAIMS["dsprites"]["settings"]))
    p.add_argument("--train-images", type=int, default=120_000)
    p.add_argument("--data-dir", default=os.environ.get("AELAB_DATA_DIR", str(SHARED_DATA)))
    p.add_argument("--protocol", choices=("dlib", "fast"), default="dlib", help="the disentanglement metrics' protocol")
    p.add_argument("--save", help="also write the JSON here (atomically)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(data_dir=args.data_dir, train_images=args.train_images, out=None, seeds=str(args.seed),
                            protocol=args.protocol)
    rss_before = peak_rss_mib()
    row = run_one("dsprites", args.setting, args.seed, ns)
    rss = peak_rss_mib()
    targets = {"train_seconds_max": 1800.0, "metric_suite_seconds_max": 60.0, "peak_rss_mib_max": 1024.0}
    text = json.dumps({
        "benchmark": "dsprites_protocol", "setting": args.setting, "seed": args.seed, "threads": args.threads,
        "train_images": args.train_images, "metrics": args.protocol,
        "protocol": {k: v for k, v in CLAIMS["dsprites"].items() if k != "settings"},
        "aelab": aelab.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "host": host_info(args.threads), "load_average_after": os.getloadavg()[0],
        "results": row | {"peak_rss_mib": rss, "rss_mib_at_start": rss_before},
        "targets": targets,
        "met": {"train_seconds": row["train_seconds"] <= targets["train_seconds_max"],
                "metric_suite_seconds": row["metric_seconds"] < targets["metric_suite_seconds_max"],
                "peak_rss": rss < targets["peak_rss_mib_max"]},
    }, indent=2, default=list)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    main()
