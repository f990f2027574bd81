"""aelab's ``dlib`` disentanglement protocol against disentanglement_lib's own code, on codes of graded quality.

  python benchmarks/dlib_metrics.py --dci-train 2000 --dci-test 1000 --save benchmarks/results/dlib_metrics.json

disentanglement_lib is a comparison, not a dependency: it is installed with pip into its own
virtual environment (``--venv``, outside the repository; created on first use, reused after)
without TensorFlow: ``pip install --no-deps disentanglement-lib==1.5`` plus the packages its
metric modules import: numpy, scipy and scikit-learn pinned to the versions aelab runs with,
gin-config 0.4.0 (the last to accept its ``blacklist`` argument), six and absl-py.
``_dlib_side.py`` stubs ``gin.tf`` so that no TensorFlow is needed.

Each code family is a deterministic code table over a finite factor grid (dSprites' factor
sizes unless stated), noise included (fixed per combination, as a deterministic encoder's codes
are). For each family:

* observational metrics (MIG, SAP, DCI): aelab draws the codes; both libraries score the same
  arrays (disentanglement_lib through a replaying ``ground_truth_data`` adapter), so they must
  agree within ``--tol`` (0.02; in practice to rounding, trees up to tie breaking);
* interventional metrics (BetaVAE, FactorVAE): each library draws its own samples with its own
  random numbers over the same code table, ``--seeds`` runs each; the means must agree within 3
  standard errors of their difference (binomial errors of the 5,000 evaluation points per run).

DCI's gradient-boosted trees cost disentanglement_lib (scikit-learn) about 2 s per factor value
at 10,000 training points on one core per family (aelab's in-library trees, the same algorithm,
a small fraction of that; both timed in ``seconds``); ``--dci-train`` / ``--dci-test`` shrink
DCI's sample for a quicker run (the equality being checked does not depend on N).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _host import host_info  # noqa: E402

from aelab.data.factors import sample_factors  # noqa: E402
from aelab.io import atomic_write_text  # noqa: E402
from aelab.metrics.disentanglement import beta_vae_score, dci, factor_vae_score, mig, sap  # noqa: E402

DLIB = "disentanglement-lib==1.5"
#: gin-config 0.5 renamed ``configurable``'s ``blacklist`` argument, which disentanglement_lib 1.5 uses
GIN = "gin-config==0.4.0"
DSPRITES = (3, 6, 40, 32, 32)
METRICS_EXACT = ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness_train",
                 "dci_informativeness_test")
METRICS_SAMPLED = ("betavae_score", "factorvae_score")


def log(msg: str) -> None:
    print(f"[dlib_metrics] {msg}", file=sys.stderr, flush=True)


# --- code families -------------------------------------------------------------------------------
def grid(factor_sizes: tuple[int, ...]) -> np.ndarray:
    """Every factor combination in flat-index order (last factor fastest): int64 ``(prod(sizes), K)``."""
    return np.stack(np.meshgrid(*[np.arange(s) for s in factor_sizes], indexing="ij"), -1).reshape(-1,
                                                                                                   len(factor_sizes))


def standardised(v: np.ndarray, factor_sizes: tuple[int, ...]) -> np.ndarray:
    """Factors scaled to zero mean and unit variance under uniform draws."""
    s = np.asarray(factor_sizes, dtype=np.float64)
    return (v - (s - 1) / 2) / np.sqrt((s ** 2 - 1) / 12)


def rotate(a: np.ndarray, b: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * a - s * b, s * a + c * b


def code_table(family: str, factor_sizes: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The codes of every factor combination for one family: float64 ``(prod(sizes), D)``.

    Families, roughly from best to worst: ``near_perfect`` (each factor in its own dimension, noise
    std 0.01), ``rotated_pairs`` (factors 0/1 and 3/4 rotated by 45 degrees in their planes),
    ``nuisance_dead`` (the factors with noise 0.05, three pure-noise dimensions and two dead ones,
    one constant and one of std 0.001 that FactorVAE prunes), ``low_snr`` (noise std 1 on
    unit-variance factors), ``nonlinear`` (orientation as its cosine and sine, scale squared,
    positions through tanh and a product, noise 0.05), ``noise`` (codes independent of the
    factors). Noise is drawn once per combination from ``seed``.
    """
    v = grid(factor_sizes)
    s = standardised(v, factor_sizes)
    rng = np.random.default_rng(seed)
    n, k = s.shape

    def noise(d: int, std: float) -> np.ndarray:
        return std * rng.standard_normal((n, d))

    if family == "near_perfect":
        return s + noise(k, 0.01)
    if family == "rotated_pairs":
        z = s.copy()
        z[:, 0], z[:, 1] = rotate(s[:, 0], s[:, 1], math.pi / 4)
        if k >= 5:
            z[:, 3], z[:, 4] = rotate(s[:, 3], s[:, 4], math.pi / 4)
        return z + noise(k, 0.01)
    if family == "nuisance_dead":
        return np.concatenate([s + noise(k, 0.05), noise(3, 1.0), np.zeros((n, 1)), noise(1, 0.001)], 1)
    if family == "low_snr":
        return s + noise(k, 1.0)
    if family == "nonlinear":
        if k != 5:
            raise ValueError("the nonlinear family is defined for dSprites' five factors")
        angle = 2 * math.pi * v[:, 2] / factor_sizes[2]
        z = np.stack([s[:, 0], s[:, 1] ** 2, np.cos(angle), np.sin(angle), np.tanh(s[:, 3]), s[:, 3] * s[:, 4],
                      np.tanh(2 * s[:, 4])], 1)
        return z + noise(z.shape[1], 0.05)
    if family == "noise":
        return noise(k, 1.0)
    raise ValueError(f"unknown family {family!r}")


FAMILIES: dict[str, tuple[int, ...]] = {"near_perfect": DSPRITES, "rotated_pairs": DSPRITES,
                                        "nuisance_dead": DSPRITES, "low_snr": DSPRITES, "nonlinear": DSPRITES,
                                        "noise": DSPRITES, "small_space": (4, 5, 6)}


def family_table(name: str) -> np.ndarray:
    """The table of family ``name`` (``small_space``: ``near_perfect`` codes on a 4 x 5 x 6 grid)."""
    return code_table("near_perfect" if name == "small_space" else name, FAMILIES[name])


def flat_index(factors: np.ndarray, factor_sizes: tuple[int, ...]) -> np.ndarray:
    """Row of each combination in :func:`grid` (the side script's ``Table`` observations)."""
    strides = np.array([math.prod(factor_sizes[k + 1:]) for k in range(len(factor_sizes))], dtype=np.int64)
    return np.asarray(factors, dtype=np.int64) @ strides


# --- agreement -----------------------------------------------------------------------------------
def sampled_agreement(ours: list[float], theirs: list[float], n_eval: int) -> dict:
    """Means over runs and whether they agree within 3 standard errors of their difference.

    Each run's accuracy on ``n_eval`` points has binomial variance ``p (1 - p) / n_eval``; the
    standard error of a mean over runs is that over the number of runs, and the two sides are
    independent.
    """
    a, b = float(np.mean(ours)), float(np.mean(theirs))
    var = sum(m * (1 - m) / n_eval / len(x) for m, x in ((a, ours), (b, theirs)))
    se = math.sqrt(var)
    diff = a - b
    return {"aelab": a, "dlib": b, "diff": diff, "se_diff": se, "z": diff / se if se > 0 else 0.0,
            "agree": bool(abs(diff) <= 3 * se + 1e-12)}


def exact_agreement(ours: float, theirs: float, tol: float) -> dict:
    return {"aelab": ours, "dlib": theirs, "diff": ours - theirs, "agree": bool(abs(ours - theirs) <= tol)}


# --- the side venv --------------------------------------------------------------------------------
def default_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "aelab-bench" / "dlib-venv"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


def pins() -> list[str]:
    """numpy, scipy and scikit-learn at the versions aelab runs with, so both sides run the same classifiers."""
    import scipy  # noqa: PLC0415
    import sklearn  # noqa: PLC0415

    return [f"numpy=={np.__version__}", f"scipy=={scipy.__version__}", f"scikit-learn=={sklearn.__version__}"]


def side_versions(python: Path) -> dict | None:
    code = ("import json, numpy, sklearn, importlib.metadata as m; "
            "print(json.dumps({'disentanglement-lib': m.version('disentanglement-lib'), "
            "'numpy': numpy.__version__, 'scikit-learn': sklearn.__version__, 'gin-config': m.version('gin-config')}))")
    if not python.exists():
        return None
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def ensure_dlib_venv(venv: Path) -> Path:
    """Create (or reuse) a venv with disentanglement-lib (no TensorFlow) and aelab's numpy/scikit-learn."""
    python = venv_python(venv)
    want = pins()
    found = side_versions(python)
    if (found and f"scikit-learn=={found['scikit-learn']}" in want and f"numpy=={found['numpy']}" in want
            and f"gin-config=={found['gin-config']}" == GIN):
        log(f"reusing {venv} ({found})")
        return python
    log(f"creating {venv} with {DLIB} (no deps) and {' '.join(want)}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + [*want, GIN, "six", "absl-py"], check=True)
    subprocess.run(pip + ["--no-deps", DLIB], check=True)
    if side_versions(python) is None:
        raise RuntimeError(f"disentanglement-lib does not import in {venv}; delete it and run again")
    return python


# --- aelab's side --------------------------------------------------------------------------------
def aelab_observational(z_tr, v_tr, z_te, v_te, n_dci: tuple[int, int], with_dci: bool) -> dict:
    out, seconds = {}, {}
    t = time.perf_counter()
    out |= mig(z_tr, v_tr, 20)
    seconds["mig"] = time.perf_counter() - t
    t = time.perf_counter()
    out |= sap(z_tr, v_tr, z_te, v_te)
    seconds["sap"] = time.perf_counter() - t
    if with_dci:
        args = (z_tr[: n_dci[0]], v_tr[: n_dci[0]], z_te[: n_dci[1]], v_te[: n_dci[1]])
        t = time.perf_counter()
        out |= dci(*args)
        seconds["dci"] = time.perf_counter() - t
    return {"values": out, "seconds": seconds}


def aelab_interventional(table: torch.Tensor, sizes: tuple[int, ...], seeds: list[int], n_train: int, n_eval: int,
                         n_variance: int) -> list[dict]:
    strides = torch.tensor([math.prod(sizes[k + 1:]) for k in range(len(sizes))])

    def encode(f: torch.Tensor) -> torch.Tensor:
        return table[(f * strides).sum(-1)]

    runs = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(1000 + seed)
        t = time.perf_counter()
        b = beta_vae_score(encode, sizes, gen, 64, n_train, n_eval, batch_size=100_000, classifier="sklearn")
        tb = time.perf_counter() - t
        t = time.perf_counter()
        f = factor_vae_score(encode, sizes, gen, 64, n_train, n_eval, n_variance=n_variance, prune_threshold=0.05,
                             batch_size=100_000)
        runs.append({"seed": seed, **b, **f, "seconds": {"betavae": tb, "factorvae": time.perf_counter() - t}})
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seeds", default="0,1", help="runs of the sampled metrics on each side")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=5000)
    p.add_argument("--n-points-train", type=int, default=10_000)
    p.add_argument("--n-points-eval", type=int, default=5000)
    p.add_argument("--dci-train", type=int, default=10_000, help="DCI's training codes (at most --n-train)")
    p.add_argument("--dci-test", type=int, default=5000, help="DCI's test codes (at most --n-test)")
    p.add_argument("--tol", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--venv", type=Path, default=default_venv())
    p.add_argument("--save", help="also write the JSON here (atomically)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    families = args.families.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    n_dci = (min(args.dci_train, args.n_train), min(args.dci_test, args.n_test))
    python = ensure_dlib_venv(args.venv.expanduser())
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlib-metrics-") as tmp, threadpool_limits(args.threads):
        work = Path(tmp)
        request: dict = {"seeds": seeds, "families": {}}
        draws = {}
        for name in families:
            sizes = FAMILIES[name]
            table = family_table(name)
            gen = torch.Generator().manual_seed(0)
            v = sample_factors((args.n_train + args.n_test,), sizes, gen).numpy()
            z = table[flat_index(v, sizes)]
            draws[name] = (table, z, v)
            arrays = {"table": table, "z_train": z[: args.n_train], "v_train": v[: args.n_train],
                      "z_test": z[args.n_train:], "v_test": v[args.n_train:]}
            for key, a in arrays.items():
                np.save(work / f"{name}_{key}.npy", a, allow_pickle=False)
            request["families"][name] = {key: f"{name}_{key}.npy" for key in arrays} | {
                "factor_sizes": list(sizes), "dci_train": n_dci[0], "dci_test": n_dci[1],
                "n_points_train": args.n_points_train, "n_points_eval": args.n_points_eval,
                "n_variance": args.n_train}
        (work / "request.json").write_text(json.dumps(request))
        env = os.environ | {k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
        side = subprocess.Popen([str(python), str(Path(__file__).resolve().parent / "_dlib_side.py"), str(work)],
                                env=env)  # runs beside aelab's side: one core each at --threads 1
        ours = {}
        for name in families:
            table, z, v = draws[name]
            sizes = FAMILIES[name]
            z_tr, v_tr, z_te, v_te = z[: args.n_train], v[: args.n_train], z[args.n_train:], v[args.n_train:]
            ours[name] = aelab_observational(z_tr, v_tr, z_te, v_te, n_dci, True)
            ours[name]["runs"] = aelab_interventional(torch.from_numpy(table), sizes, seeds, args.n_points_train,
                                                      args.n_points_eval, args.n_train)
            log(f"aelab side: {name} done")
        if side.wait() != 0:
            raise RuntimeError(f"the disentanglement_lib side failed (exit {side.returncode})")
        theirs = json.loads((work / "dlib.json").read_text())
    results, all_agree = {}, True
    for name in families:
        a, b = ours[name], theirs[name]
        rows = {m: exact_agreement(a["values"][m], b["values"][m], args.tol) for m in METRICS_EXACT}
        rows |= {m: sampled_agreement([r[m] for r in a["runs"]], [r[m] for r in b["runs"]], args.n_points_eval)
                 for m in METRICS_SAMPLED}
        all_agree &= all(r["agree"] for r in rows.values())
        results[name] = {"factor_sizes": list(FAMILIES[name]), "code_dim": int(draws[name][0].shape[1]),
                         "agreement": rows,
                         "seconds": {"aelab": a["seconds"] | {"runs": [r["seconds"] for r in a["runs"]]},
                                     "dlib": b["seconds"] | {"runs": [r["seconds"] for r in b["runs"]]}},
                         "runs": {"aelab": a["runs"], "dlib": b["runs"]}}
    text = json.dumps({
        "benchmark": "dlib_metrics", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {"n_train": args.n_train, "n_test": args.n_test, "n_points_train": args.n_points_train,
                     "n_points_eval": args.n_points_eval, "dci_train": n_dci[0], "dci_test": n_dci[1],
                     "group_size": 64, "bins": 20, "prune_threshold": 0.05, "seeds": seeds, "tol": args.tol},
        "host": host_info(args.threads), "load_average_after": os.getloadavg()[0],
        "side": side_versions(python), "wall_seconds": time.perf_counter() - t_start,
        "all_agree": all_agree, "families": results,
    }, indent=1)
    print(text)
    if args.save:
        atomic_write_text(args.save, text + "\n")


if __name__ == "__main__":
    main()
