"""disentanglement_lib's own metric code on codes handed over as arrays; run by ``dlib_metrics.py``.

Runs in the side virtual environment (disentanglement-lib installed with ``--no-deps``, plus
numpy, scipy, scikit-learn, gin-config, six and absl-py; no TensorFlow):

  python _dlib_side.py WORKDIR

``WORKDIR/request.json`` lists the code families; each family's arrays are ``.npy`` files in
``WORKDIR`` (read with ``allow_pickle=False``). Results go to ``WORKDIR/dlib.json``. Nothing is
pickled either way.

TensorFlow: the metric modules import ``gin.tf`` (gin-config's TensorFlow bindings, which import
TensorFlow) only to reach ``gin.configurable``; a stub module ``gin.tf`` is put in
``sys.modules`` before they are imported, so ``import gin.tf`` binds plain ``gin``. The metrics'
own code is untouched.

disentanglement_lib's metrics take a ``ground_truth_data`` object and a
``representation_function``; two adapters stand in for a data set and a model:

* :class:`Replay` hands out given factor rows in order (ignoring the random state), with their
  row numbers as "observations"; the representation looks the codes up by row. The observational
  metrics (MIG, SAP, DCI) thus see exactly the codes aelab saw.
* :class:`Table` samples factors with the metric's own ``random_state`` (as disentanglement_lib's
  data sets do); the "observation" of a combination is its flat index into the factor grid and
  the representation looks up a precomputed code table ``(prod(factor_sizes), D)``. The
  interventional metrics (BetaVAE, FactorVAE) draw their own samples this way.
"""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import numpy as np


class Replay:
    """``ground_truth_data`` that returns the rows of ``factors (N, K)`` in order, observations = row numbers."""

    def __init__(self, factors: np.ndarray, factor_sizes: list[int]) -> None:
        self.factors = np.asarray(factors, dtype=np.int64)
        self.factors_num_values = list(factor_sizes)
        self.pos = 0

    @property
    def num_factors(self) -> int:
        return self.factors.shape[1]

    def sample(self, num: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        del random_state  # the draws were made by aelab; replay them
        if self.pos + num > self.factors.shape[0]:
            raise IndexError(f"replay exhausted: {self.pos} + {num} > {self.factors.shape[0]} rows")
        rows = np.arange(self.pos, self.pos + num)
        self.pos += num
        return self.factors[rows], rows


class Table:
    """``ground_truth_data`` over a finite factor grid; observations are flat indices into it."""

    def __init__(self, factor_sizes: list[int]) -> None:
        self.factors_num_values = [int(s) for s in factor_sizes]
        self.strides = np.array([int(np.prod(self.factors_num_values[k + 1:])) for k in range(len(factor_sizes))],
                                dtype=np.int64)

    @property
    def num_factors(self) -> int:
        return len(self.factors_num_values)

    def sample_factors(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        # disentanglement_lib's SplitDiscreteStateSpace.sample_latent_factors: one randint per factor
        return np.stack([random_state.randint(s, size=num) for s in self.factors_num_values], axis=1)

    def sample_observations_from_factors(self, factors: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
        del random_state
        return np.asarray(factors, dtype=np.int64) @ self.strides

    def sample(self, num: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        return self.sample(num, random_state)[1]


def lookup(codes: np.ndarray):
    """The representation function of a code table: ``observations (B,) int -> codes (B, D)``."""
    return lambda obs: codes[np.asarray(obs, dtype=np.int64)]


def load_dlib() -> dict:
    """disentanglement_lib's metric modules, imported without TensorFlow (see the module docstring)."""
    import gin  # noqa: PLC0415  (the side venv's packages; this file is imported by tests without them)

    sys.modules.setdefault("gin.tf", types.ModuleType("gin.tf"))
    from disentanglement_lib.evaluation.metrics import beta_vae, dci, factor_vae, mig, sap_score  # noqa: PLC0415

    gin.parse_config("discretizer.discretizer_fn = @histogram_discretizer\n"
                     "discretizer.num_bins = 20\n"
                     "prune_dims.threshold = 0.05\n")
    return {"mig": mig, "sap": sap_score, "dci": dci, "beta_vae": beta_vae, "factor_vae": factor_vae}


def observational(m: dict, workdir: Path, fam: dict) -> dict:
    """MIG, SAP and DCI by disentanglement_lib's public functions on the codes aelab scored."""
    z_tr, v_tr = np.load(workdir / fam["z_train"]), np.load(workdir / fam["v_train"])
    z_te, v_te = np.load(workdir / fam["z_test"]), np.load(workdir / fam["v_test"])
    sizes, n_tr, n_te = fam["factor_sizes"], z_tr.shape[0], z_te.shape[0]
    codes, factors = np.concatenate([z_tr, z_te]), np.concatenate([v_tr, v_te])
    out, seconds = {}, {}
    rs = np.random.RandomState(0)
    t = time.perf_counter()
    out["mig"] = float(m["mig"].compute_mig(Replay(v_tr, sizes), lookup(z_tr), rs, num_train=n_tr)["discrete_mig"])
    seconds["mig"] = time.perf_counter() - t
    t = time.perf_counter()
    out["sap"] = float(m["sap"].compute_sap(Replay(factors, sizes), lookup(codes), rs, num_train=n_tr, num_test=n_te,
                                            continuous_factors=False)["SAP_score"])
    seconds["sap"] = time.perf_counter() - t
    if fam.get("dci", True):
        n_dci = fam.get("dci_train", n_tr), fam.get("dci_test", n_te)
        zd = np.concatenate([z_tr[:n_dci[0]], z_te[:n_dci[1]]])
        vd = np.concatenate([v_tr[:n_dci[0]], v_te[:n_dci[1]]])
        t = time.perf_counter()
        d = m["dci"].compute_dci(Replay(vd, sizes), lookup(zd), rs, num_train=n_dci[0], num_test=n_dci[1])
        seconds["dci"] = time.perf_counter() - t
        out |= {"dci_disentanglement": float(d["disentanglement"]), "dci_completeness": float(d["completeness"]),
                "dci_informativeness_train": float(d["informativeness_train"]),
                "dci_informativeness_test": float(d["informativeness_test"])}
    return {"values": out, "seconds": seconds}


def interventional(m: dict, workdir: Path, fam: dict, seeds: list[int]) -> dict:
    """BetaVAE and FactorVAE by disentanglement_lib's functions, sampling with their own random state."""
    table = np.load(workdir / fam["table"])
    data, rep = Table(fam["factor_sizes"]), lookup(table)
    runs = []
    for seed in seeds:
        t = time.perf_counter()
        b = m["beta_vae"].compute_beta_vae_sklearn(data, rep, np.random.RandomState(seed), batch_size=64,
                                                   num_train=fam["n_points_train"], num_eval=fam["n_points_eval"])
        tb = time.perf_counter() - t
        t = time.perf_counter()
        f = m["factor_vae"].compute_factor_vae(data, rep, np.random.RandomState(seed), batch_size=64,
                                               num_train=fam["n_points_train"], num_eval=fam["n_points_eval"],
                                               num_variance_estimate=fam["n_variance"])
        runs.append({"seed": seed, "betavae_score": float(b["eval_accuracy"]),
                     "betavae_train_acc": float(b["train_accuracy"]), "factorvae_score": float(f["eval_accuracy"]),
                     "factorvae_train_acc": float(f["train_accuracy"]),
                     "seconds": {"betavae": tb, "factorvae": time.perf_counter() - t}})
    return {"runs": runs}


def main() -> None:
    workdir = Path(sys.argv[1])
    request = json.loads((workdir / "request.json").read_text())
    m = load_dlib()
    out = {}
    for name, fam in request["families"].items():
        out[name] = observational(m, workdir, fam) | interventional(m, workdir, fam, request["seeds"])
        print(f"dlib side: {name} done", file=sys.stderr, flush=True)
    (workdir / "dlib.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
