"""Disentanglement metrics against known factors: MIG, SAP, DCI, BetaVAE and FactorVAE scores.

Two kinds of metric, two kinds of input:

* **Observational** metrics are pure functions of codes ``z (N, D)`` and the factors ``v (N, K)``
  (integer indices) that generated them: :func:`mig`, :func:`sap`, :func:`dci`.
* **Interventional** metrics need batches in which one factor is held fixed, so they take a
  callable ``encode_factors(factors: LongTensor (B, K)) -> codes (B, D)``, the factor sizes and a
  ``torch.Generator``: :func:`beta_vae_score`, :func:`factor_vae_score`. A synthetic "encoder"
  (the identity map of factors, a rotation, noise) tests them; a model on dSprites is
  ``lambda f: model.encode(render(f)).mean``.

:func:`evaluate_disentanglement` runs all five on one encoder from one generator, and the
registered :func:`disentanglement_metric` does so for a model and a factor data set that can
render images of chosen factors (dSprites). All randomness comes from the generator, so every
result is reproducible.

What each score rewards. All are about 1 for a code whose dimensions are the factors up to
order and scale; "noise" is what a code independent of the factors scores:

* MIG: each factor is captured by one code dimension more than by any other (gap in mutual
  information). Noise: about 0.
* SAP: each factor is predicted by one dimension much better than by the runner-up. Noise:
  about 0.
* DCI disentanglement / completeness: each code dimension matters for one factor only / each
  factor is captured by one dimension only. Noise: 0.
* DCI informativeness: the code predicts the factors (test R^2; unchanged by rotations).
  Noise: about 0.
* BetaVAE: a linear classifier names the fixed factor from mean ``|z - z'|`` (tolerates
  rotations). Noise: chance, about 1/K.
* FactorVAE: the dimension with the least normalised variance names the fixed factor, by
  majority vote. Noise: chance, about 1/K.

References:
    Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
    Framework", ICLR 2017.
    Kim & Mnih, "Disentangling by Factorising", ICML 2018.
    Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in Variational
    Autoencoders", NeurIPS 2018.
    Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled Latent Concepts
    from Unlabeled Observations", ICLR 2018.
    Eastwood & Williams, "A Framework for the Quantitative Evaluation of Disentangled
    Representations", ICLR 2018.
    Locatello et al., "Challenging Common Assumptions in the Unsupervised Learning of
    Disentangled Representations", ICML 2019 (disentanglement_lib, whose protocols these follow
    unless a docstring says otherwise).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aelab.compat import MissingDependencyError
from aelab.data.base import DataSplits, ImageDataset
from aelab.data.factors import sample_factors
from aelab.metrics.probe import linear_probe
from aelab.nn.modes import evaluation
from aelab.registry import METRICS

__all__ = [
    "PROTOCOLS",
    "EncodeFactors",
    "beta_vae_score",
    "dci",
    "dci_from_importance",
    "dci_lasso",
    "default_lasso_alpha",
    "disentanglement_metric",
    "discretize",
    "encode_once",
    "evaluate_disentanglement",
    "evaluate_disentanglement_dlib",
    "factor_vae_score",
    "gbt_importance",
    "importance_matrix",
    "lasso",
    "mig",
    "sample_codes",
    "sample_factors",
    "sap",
    "sap_threshold",
    "disentanglement",
]

#: the suites :func:`disentanglement_metric` runs: disentanglement_lib's, and today's quick one
PROTOCOLS = ("dlib", "fast")
#: what a missing scikit-learn (the ``dlib`` protocol's classifiers) raises
SKLEARN_MISSING = ("the dlib protocol of the disentanglement metrics needs scikit-learn: pip install scikit-learn "
                   "(or use protocol='fast', and dci_lasso / sap_threshold)")

#: what a missing numba (the in-library boosted trees of DCI) raises
NUMBA_MISSING = ("DCI's boosted trees need numba: pip install numba (or estimator='sklearn': scikit-learn's own, "
                 "about 20 times slower)")

#: ``factors (B, K) int64 -> codes (B, D)``: an encoder seen through the factors it is shown.
EncodeFactors = Callable[[Tensor], Tensor]


# --- input checks -------------------------------------------------------------------------------
def _codes(z: Tensor | np.ndarray) -> Tensor:
    z = torch.as_tensor(z)
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"codes must be a float array of shape (N, D), got {z.dtype} {tuple(z.shape)}")
    return z.detach().cpu().double()


def _factors(v: Tensor | np.ndarray, n: int) -> Tensor:
    v = torch.as_tensor(v)
    if v.dim() == 1:
        v = v[:, None]
    if v.dim() != 2 or v.is_floating_point() or v.is_complex() or v.shape[0] != n:
        raise ValueError(f"factors must be integer indices of shape ({n}, K), got {v.dtype} {tuple(v.shape)}")
    return v.cpu().long()


def _normalized_entropy(p: Tensor) -> Tensor:
    """Entropy of each row of ``p`` (rows sum to 1) in units of ``log(#columns)``: in [0, 1]."""
    n = p.shape[-1]
    if n < 2:
        return torch.zeros(p.shape[:-1], dtype=p.dtype)
    h = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return (h / math.log(n)).clamp(0.0, 1.0)


# --- MIG ----------------------------------------------------------------------------------------
def discretize(z: Tensor | np.ndarray, bins: int = 20) -> Tensor:
    """Equal-width histogram bin of each code value, per dimension (disentanglement_lib's binning).

    Each dimension's range ``[min, max]`` over the data is cut into ``bins`` equal intervals with
    numpy's bin edges (``np.histogram``), and values are placed by ``np.digitize`` on the left
    edges, exactly as disentanglement_lib's ``_histogram_discretize`` does (the maximum falls
    into the last bin); a constant dimension falls into one bin.

    Returns:
        int64 bin indices ``(N, D)`` in ``[0, bins)``.

    Example:
        >>> discretize(torch.tensor([[0.0], [0.5], [1.0]]), bins=2).flatten().tolist()
        [0, 1, 1]
    """
    z = _codes(z).numpy()
    out = np.empty(z.shape, dtype=np.int64)
    for j in range(z.shape[1]):
        edges = np.histogram_bin_edges(z[:, j], bins)
        out[:, j] = np.digitize(z[:, j], edges[:-1]) - 1
    return torch.from_numpy(out)


def mig(z: Tensor | np.ndarray, v: Tensor | np.ndarray, bins: int = 20) -> dict[str, float]:
    """Mutual information gap: per factor, the gap in ``I(z_j; v_k)`` between the best and the
    second-best code dimension, over the factor's entropy ``H(v_k)``; mean over factors.

    Mutual informations are plug-in estimates from the joint histogram of the discretised code
    (``bins`` equal-width bins per dimension, as in disentanglement_lib) and the factor. Range
    ``[0, 1]``: 1 when one dimension determines the factor and no other carries information
    about it. Binning caps what one dimension can show: a factor with more values than ``bins``
    scores at most about ``log(bins) / log(#values)`` (0.81 for dSprites' 40 orientations at
    20 bins), so the identity code scores about 0.9 at 20 bins and about 1 at ``bins >= 40``.
    The plug-in estimate is biased up by about ``(bins - 1)(#values - 1) / 2N`` nats, which
    keeps noise codes slightly above 0 at small N. Factors that take a single value have no
    entropy and are left out.

    Args:
        z: codes ``(N, D)`` with ``D >= 2``.
        v: factor indices ``(N, K)``.
        bins: histogram bins per code dimension (20 in Chen et al.'s and disentanglement_lib's
            protocol; published numbers use it).

    Returns:
        ``{"mig": value}``.

    References:
        Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in Variational
        Autoencoders", NeurIPS 2018.

    Example:
        >>> i = torch.arange(100)
        >>> v = torch.stack([i % 4, i // 4 % 5], 1)  # every combination 5 times
        >>> round(mig(v.double(), v)["mig"], 9)
        1.0
    """
    z = _codes(z)
    v = _factors(v, z.shape[0])
    if z.shape[1] < 2:
        raise ValueError("MIG needs at least 2 code dimensions (it compares the best two)")
    n, d = z.shape
    zb = discretize(z, bins)  # (N, D)
    offset = torch.arange(d) * bins  # every (dimension, bin) pair gets its own row
    gaps = []
    for k in range(v.shape[1]):
        _, cls = torch.unique(v[:, k], return_inverse=True)
        c = int(cls.max()) + 1
        if c < 2:  # a constant factor has no entropy to explain
            continue
        # joint counts of (dimension j, bin of z_j, factor value) for all j at once: (D, bins, C)
        joint = torch.bincount(((zb + offset) * c + cls[:, None]).flatten(), minlength=d * bins * c)
        p = joint.view(d, bins, c).double() / n
        p_z, p_v = p.sum(2, keepdim=True), p.sum((0, 1)) / d
        ratio = torch.where(p > 0, p / (p_z * p_v).clamp_min(1e-300), torch.ones_like(p))
        mi = (p * ratio.log()).sum((1, 2)).clamp_min(0.0)  # (D,) nats
        h = float(-(p_v * p_v.log()).sum())
        top = mi.topk(2).values
        gaps.append(float(top[0] - top[1]) / h)
    if not gaps:
        raise ValueError("every factor is constant: MIG is undefined")
    return {"mig": float(np.mean(gaps))}


# --- SAP ----------------------------------------------------------------------------------------
def _nearest_centroid_scores(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> Tensor:
    """Chance-adjusted balanced test accuracy of a 1-D nearest-class-mean classifier per dimension.

    In one dimension the nearest class mean is a threshold classifier (thresholds halfway
    between consecutive sorted class means), so it can carve a dimension into as many
    intervals as there are classes: an ordered factor read off one dimension is classified
    exactly. Returns ``(D,)`` scores.
    """
    classes, y_tr = torch.unique(y_train, return_inverse=True)
    c = classes.numel()
    counts = torch.bincount(y_tr, minlength=c).double()
    means = torch.zeros(c, z_train.shape[1], dtype=torch.float64).index_add_(0, y_tr, z_train) / counts[:, None]
    # test labels unseen in training can never be predicted: map them to -1
    pos = torch.searchsorted(classes, y_test).clamp_max(c - 1)
    y_te = torch.where(classes[pos] == y_test, pos, torch.full_like(pos, -1))
    _, group, group_size = torch.unique(y_test, return_inverse=True, return_counts=True)
    n_present = group_size.numel()
    if n_present < 2:
        return torch.zeros(z_train.shape[1], dtype=torch.float64)
    weight = 1.0 / (group_size[group].double() * n_present)  # balanced accuracy: mean recall per class
    chance = 1.0 / n_present
    scores = torch.empty(z_train.shape[1], dtype=torch.float64)
    for j in range(z_train.shape[1]):
        m, order = means[:, j].sort()
        pred = order[torch.bucketize(z_test[:, j].contiguous(), (m[1:] + m[:-1]) / 2)]
        balanced = float(((pred == y_te).double() * weight).sum())
        scores[j] = (balanced - chance) / (1.0 - chance)
    return scores


def _squared_correlations(z: Tensor, y: Tensor) -> Tensor:
    """``R^2`` of a linear fit of ``y (N,)`` on each code dimension alone: ``(D,)``; 0 for a constant one.

    disentanglement_lib's continuous SAP score (``cov^2 / (var_z var_y)``, zero where the code's
    variance is at most 1e-12).
    """
    zc = z - z.mean(0)
    yc = y.double() - y.double().mean()
    var_z = zc.pow(2).sum(0)
    r = (zc * yc[:, None]).sum(0) / (var_z * yc.pow(2).sum()).sqrt().clamp_min(1e-300)
    return torch.where(var_z > 1e-12 * max(z.shape[0] - 1, 1), r.pow(2), torch.zeros_like(r))


def _svm_accuracies(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> Tensor:
    """Test accuracy of disentanglement_lib's one-dimensional linear SVM on each code dimension: ``(D,)``.

    ``LinearSVC(C=0.01, class_weight="balanced")`` fitted on one dimension at a time (one-vs-rest
    for more than two classes), scored by plain accuracy on the test set. The solver is pinned to
    the primal problem (scikit-learn's choice for ``N > D`` since version 1.5; disentanglement_lib
    ran under older releases that solved the dual, which reach the same optimum to the
    solver's tolerance: over 50 dimension-factor pairs of dSprites-sized codes the accuracies
    differed by at most 0.0004) so the result does not depend on the release.
    """
    svc = _sklearn("sklearn.svm").LinearSVC
    a_tr, a_te = z_train.numpy(), z_test.numpy()
    y_tr, y_te = y_train.numpy(), y_test.numpy()
    out = torch.empty(a_tr.shape[1], dtype=torch.float64)
    with warnings.catch_warnings():  # disentanglement_lib runs the capped solver as it is; so do we
        warnings.simplefilter("ignore", _sklearn("sklearn.exceptions").ConvergenceWarning)
        for j in range(a_tr.shape[1]):
            model = svc(C=0.01, class_weight="balanced", dual=False, random_state=0)
            model.fit(a_tr[:, j : j + 1], y_tr)
            out[j] = float(np.mean(model.predict(a_te[:, j : j + 1]) == y_te))
    return out


def _sap(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
         v_test: Tensor | np.ndarray, continuous: bool | Sequence[bool],
         discrete_scores: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> dict[str, float]:
    """SAP with the per-dimension scores of discrete factors from ``discrete_scores(z_tr, v_tr,
    z_te, v_te) -> (D,)`` (continuous factors: squared correlations on the training codes)."""
    z_tr, z_te = _codes(z_train), _codes(z_test)
    v_tr, v_te = _factors(v_train, z_tr.shape[0]), _factors(v_test, z_te.shape[0])
    if z_tr.shape[1] < 2:
        raise ValueError("SAP needs at least 2 code dimensions (it compares the best two)")
    k = v_tr.shape[1]
    cont = [continuous] * k if isinstance(continuous, bool) else list(continuous)
    if len(cont) != k:
        raise ValueError(f"continuous has {len(cont)} entries for {k} factors")
    gaps = []
    for f in range(k):
        if torch.unique(v_tr[:, f]).numel() < 2:
            continue
        if cont[f]:
            score = _squared_correlations(z_tr, v_tr[:, f])
        else:
            score = discrete_scores(z_tr, v_tr[:, f], z_te, v_te[:, f])
        top = score.topk(2).values
        gaps.append(float(top[0] - top[1]))
    if not gaps:
        raise ValueError("every factor is constant: SAP is undefined")
    return {"sap": float(np.mean(gaps))}


def sap(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
        v_test: Tensor | np.ndarray, continuous: bool | Sequence[bool] = False) -> dict[str, float]:
    """Separated attribute predictability as disentanglement_lib computes it (``sap_score``).

    Per factor, the gap between the two code dimensions that predict it best on their own;
    mean over factors. The score matrix ``S (D, K)`` holds how well each code dimension alone
    predicts each factor:

    * discrete factors (the default, and disentanglement_lib's ``continuous_factors=False``
      used for its published numbers): the test accuracy of a linear SVM fitted on that one
      dimension, ``sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")``;
    * continuous factors: ``R^2`` of a linear fit, the squared correlation, on the training set.

    Values are comparable with disentanglement_lib's (``SAP_score``): the benchmark
    ``benchmarks/dlib_metrics.py`` runs its own code on the same codes. Raw accuracy is not
    adjusted for chance, and one-vs-rest linear SVMs on one dimension separate only the
    extreme values of an ordered factor well, so a factor with many values read off one
    dimension scores well below 1 even for a perfect code (a near-perfect dSprites code scores
    about 0.17 overall); :func:`sap_threshold` is the chance-adjusted alternative. Factors that
    take one value are left out (disentanglement_lib's SVM would fail on them).

    Args:
        z_train, z_test: codes ``(N, D)`` with ``D >= 2``.
        v_train, v_test: factor indices ``(N, K)``.
        continuous: whether to treat the factors (all, or each) as continuous.

    Returns:
        ``{"sap": value}``.

    References:
        Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled Latent Concepts
        from Unlabeled Observations", ICLR 2018.
        Locatello et al., "Challenging Common Assumptions in the Unsupervised Learning of
        Disentangled Representations", ICML 2019 (disentanglement_lib).

    Example:
        >>> i = torch.arange(200)
        >>> v = torch.stack([i % 2, i // 2 % 5], 1)
        >>> z = torch.stack([v[:, 0].double(), torch.zeros(200)], 1)  # factor 0 in dimension 0, nothing else
        >>> sap(z, v, z, v)["sap"]  # factor 0: 1.0 - 0.5, factor 1: 0.2 - 0.2 (chance, either way)
        0.25
    """
    return _sap(z_train, v_train, z_test, v_test, continuous, _svm_accuracies)


def sap_threshold(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
        v_test: Tensor | np.ndarray, continuous: bool | Sequence[bool] = False) -> dict[str, float]:
    """SAP with a chance-adjusted threshold classifier: the ``fast`` protocol's SAP.

    Per factor, the gap between the two code dimensions that predict it best on their own;
    mean over factors. :func:`sap` is disentanglement_lib's estimator (a linear SVM's raw
    accuracy); this one differs in the discrete score only.

    The score matrix ``S (D, K)`` holds, for each code dimension and factor, how well that one
    dimension predicts the factor:

    * continuous factors: ``R^2`` of a linear fit, the squared correlation (on the training set,
      as in disentanglement_lib);
    * discrete factors (the default): the test accuracy of a one-dimensional threshold
      classifier, here the nearest class mean, which puts thresholds halfway between the sorted
      class means (Kumar et al. fit thresholds on the dimension; disentanglement_lib a linear
      SVM). The accuracy is balanced over classes and adjusted for chance,
      ``(acc - 1/C) / (1 - 1/C)`` for ``C`` classes: raw accuracy would give a perfectly
      captured 3-valued factor a gap of at most ``1 - 1/3`` against a useless runner-up, so
      scores would depend on the number of factor values. Because of this adjustment and the
      classifier, values are not comparable with disentanglement_lib's numbers.

    Range about ``[0, 1]``: near 1 when each factor is read off one dimension and no other,
    near 0 when no single dimension predicts (noise) or two predict equally well (mixed codes).
    Factors with one value are left out.

    Args:
        z_train, z_test: codes ``(N, D)`` with ``D >= 2``.
        v_train, v_test: factor indices ``(N, K)``.
        continuous: whether to treat the factors (all, or each) as continuous.

    Returns:
        ``{"sap": value}``.

    References:
        Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled Latent Concepts
        from Unlabeled Observations", ICLR 2018.

    Example:
        >>> i = torch.arange(200)
        >>> v = torch.stack([i % 4, i // 4 % 5], 1)
        >>> round(sap_threshold(v.double(), v, v.double(), v)["sap"], 9)
        1.0
    """
    return _sap(z_train, v_train, z_test, v_test, continuous,
                lambda z, v, zt, vt: _nearest_centroid_scores(z, v.contiguous(), zt, vt.contiguous()))


# --- DCI ----------------------------------------------------------------------------------------
def default_lasso_alpha(n: int, d: int) -> float:
    """``2 sqrt(2 log(2D) / N)``: the universal Lasso penalty for unit-variance targets.

    A code dimension independent of a (standardised) factor has a sample correlation of about
    ``N(0, 1/N)``; this threshold is ``2 sqrt(2 log 2D)`` standard errors (4.9 for D = 10),
    above the largest of the ``D`` spurious correlations with overwhelming probability, so pure
    noise gets no importance while a dimension correlated with a factor beyond it keeps its
    weight. See Bickel, Ritov & Tsybakov, "Simultaneous analysis of Lasso and Dantzig
    selector", Annals of Statistics, 2009.
    """
    return 2.0 * math.sqrt(2.0 * math.log(2 * d) / n)


def lasso(x: Tensor, y: Tensor, alpha: float, max_iter: int = 1000, tol: float = 1e-10) -> Tensor:
    """Lasso weights ``argmin_w ||y - x w||^2 / (2N) + alpha ||w||_1`` by coordinate descent.

    Exact (to ``tol``) on centred data; every target column is solved at once on the Gram
    matrix, so the cost is ``O(N D^2)`` once plus ``O(D^2 K)`` per sweep.

    Args:
        x: centred features ``(N, D)``.
        y: centred targets ``(N, K)``.
        alpha: the L1 penalty.
        max_iter: coordinate-descent sweeps at most.
        tol: stop when no weight moved more than this in a sweep.

    Returns:
        weights ``(D, K)``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]).double()
        >>> lasso(x, 2 * x[:, :1], alpha=0.1).flatten().tolist()
        [1.8, 0.0]
    """
    n = x.shape[0]
    gram = x.T @ x / n  # (D, D)
    corr = x.T @ y / n  # (D, K)
    w = torch.zeros_like(corr)
    diag = gram.diagonal()
    for _ in range(max_iter):
        biggest = 0.0
        for j in range(w.shape[0]):
            if diag[j] <= 0:
                continue
            rho = corr[j] - gram[j] @ w + diag[j] * w[j]
            new = torch.sign(rho) * (rho.abs() - alpha).clamp_min(0.0) / diag[j]
            biggest = max(biggest, float((new - w[j]).abs().max()))
            w[j] = new
        if biggest <= tol:
            break
    return w


def importance_matrix(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
                      v_test: Tensor | np.ndarray, alpha: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Importance of each code dimension for each factor, from per-factor Lasso regressions.

    Codes and factors are standardised with the training statistics; each factor is regressed
    on all code dimensions with the Lasso, and the importance ``R_jk`` is ``|w_jk|``, the
    weight of dimension ``j`` for factor ``k`` (Eastwood & Williams, 2018, Section 4).
    Constant code dimensions get importance 0.

    Args:
        z_train, z_test: codes ``(N, D)``.
        v_train, v_test: factor indices ``(N, K)``, regressed as numbers.
        alpha: the Lasso penalty on the standardised problem; ``None`` chooses
            :func:`default_lasso_alpha`.

    Returns:
        ``R (D, K)``, and the train and test ``R^2`` of each factor's regression ``(K,)``.
    """
    z_tr, z_te = _codes(z_train), _codes(z_test)
    y_tr = _factors(v_train, z_tr.shape[0]).double()
    y_te = _factors(v_test, z_te.shape[0]).double()
    mz, sz = z_tr.mean(0), z_tr.std(0)
    live = sz > 1e-12 * z_tr.abs().max().clamp_min(1.0)  # constant dimensions carry nothing
    sz = torch.where(live, sz, torch.ones_like(sz))
    my, sy = y_tr.mean(0), y_tr.std(0).clamp_min(1e-12)
    a_tr = ((z_tr - mz) / sz) * live
    a_te = ((z_te - mz) / sz) * live
    b_tr, b_te = (y_tr - my) / sy, (y_te - my) / sy
    if alpha is None:
        alpha = default_lasso_alpha(z_tr.shape[0], z_tr.shape[1])
    w = lasso(a_tr, b_tr, alpha)

    def r2(a: Tensor, b: Tensor) -> Tensor:
        sst = (b - b.mean(0)).pow(2).sum(0)
        return 1.0 - (b - a @ w).pow(2).sum(0) / sst.clamp_min(1e-300)

    return w.abs(), r2(a_tr, b_tr), r2(a_te, b_te)


def dci_from_importance(importance: Tensor | np.ndarray, eps: float = 0.0) -> dict[str, float]:
    """DCI disentanglement and completeness of an importance matrix ``R (D, K)``.

    Any non-negative importances will do (Lasso weights as in :func:`dci`, or a random forest's
    or gradient-boosted trees' feature importances computed elsewhere). Disentanglement is
    ``sum_j rho_j (1 - H_K(R_j. / sum_k R_jk))`` with ``rho_j = sum_k R_jk / sum R``; completeness
    is the same with codes and factors swapped. Codes (factors) with no importance carry no
    weight; an all-zero matrix scores 0 on both.

    Args:
        importance: ``R (D, K)``, non-negative.
        eps: added to every entry before the entropies (not the weights), as disentanglement_lib
            does with ``1e-11``; it moves scores by about ``1e-10``.

    Returns:
        ``dci_disentanglement`` and ``dci_completeness``, in ``[0, 1]``.

    References:
        Eastwood & Williams, "A Framework for the Quantitative Evaluation of Disentangled
        Representations", ICLR 2018.

    Example:
        >>> out = dci_from_importance(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
        >>> round(out["dci_disentanglement"], 6)  # code 0 is pure, code 1 split evenly
        0.5
    """
    r = torch.as_tensor(importance).detach().cpu().double()
    if r.dim() != 2 or bool((r < 0).any()):
        raise ValueError(f"importance must be a non-negative (D, K) matrix, got shape {tuple(r.shape)}")
    total = float(r.sum())
    if total == 0.0:
        return {"dci_disentanglement": 0.0, "dci_completeness": 0.0}
    code_weight, factor_weight = r.sum(1) / total, r.sum(0) / total
    p = r + eps
    per_code = 1.0 - _normalized_entropy(p / p.sum(1, keepdim=True).clamp_min(1e-300))  # (D,)
    per_factor = 1.0 - _normalized_entropy((p / p.sum(0, keepdim=True).clamp_min(1e-300)).T)  # (K,)
    return {"dci_disentanglement": float((code_weight * per_code).sum()),
            "dci_completeness": float((factor_weight * per_factor).sum())}


def _sklearn(module: str) -> Any:
    """The scikit-learn module ``module``, or a one-line :class:`MissingDependencyError` without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(SKLEARN_MISSING) from e


def _boosted_trees() -> Any:
    """:mod:`aelab.metrics.gbt` (imported on first use: numba takes seconds to import), or a
    one-line :class:`MissingDependencyError` without numba."""
    try:
        return importlib.import_module("aelab.metrics.gbt")
    except ImportError as e:
        raise MissingDependencyError(NUMBA_MISSING) from e


def gbt_importance(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
                   v_test: Tensor | np.ndarray, estimator: str = "gbt",
                   random_state: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Importance of each code dimension for each factor, from per-factor gradient-boosted trees.

    disentanglement_lib's ``compute_importance_gbt``: for each factor, a classifier is fitted on
    all code dimensions (raw codes, as scikit-learn's trees see them: float32), its
    ``feature_importances_`` (mean impurity decrease, summing to 1) form column ``k`` of ``R``,
    and its accuracy on the training and the test set is recorded.

    Args:
        z_train, z_test: codes ``(N, D)``.
        v_train, v_test: factor indices ``(N, K)``, the classes.
        estimator: ``"gbt"``: the trees of ``sklearn.ensemble.GradientBoostingClassifier()`` with
            its defaults (100 stages of depth-3 trees per class), grown by
            :func:`aelab.metrics.gbt.fit_boosted_trees`: the same algorithm, about 20 times
            faster (dSprites' 113 factor values at N = 10,000: seconds instead of about 4
            minutes on one core), equal to scikit-learn's trees but for the random choice among
            equally good splits. ``"sklearn"``: scikit-learn's own classifier, the reference.
        random_state: seeds the choice among equally good splits; disentanglement_lib leaves it
            unseeded.

    Returns:
        ``R (D, K)``, and the train and test accuracy of each factor's classifier ``(K,)``.
    """
    if estimator not in ("gbt", "sklearn"):
        raise ValueError(f"estimator must be 'gbt' or 'sklearn', got {estimator!r}")
    z_tr, z_te = _codes(z_train).numpy(), _codes(z_test).numpy()
    y_tr = _factors(v_train, z_tr.shape[0]).numpy()
    y_te = _factors(v_test, z_te.shape[0]).numpy()
    d, k = z_tr.shape[1], y_tr.shape[1]
    r = np.zeros((d, k))
    acc_tr, acc_te = np.zeros(k), np.zeros(k)
    for f in range(k):
        if estimator == "gbt":
            model = _boosted_trees().fit_boosted_trees(z_tr, y_tr[:, f], random_state=random_state,
                                                       threads=torch.get_num_threads())
            r[:, f] = np.abs(model.importances)
        else:
            model = _sklearn("sklearn.ensemble").GradientBoostingClassifier(random_state=random_state)
            model.fit(z_tr, y_tr[:, f])
            r[:, f] = np.abs(model.feature_importances_)
        acc_tr[f] = np.mean(model.predict(z_tr) == y_tr[:, f])
        acc_te[f] = np.mean(model.predict(z_te) == y_te[:, f])
    return torch.from_numpy(r), torch.from_numpy(acc_tr), torch.from_numpy(acc_te)


def dci(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
        v_test: Tensor | np.ndarray, estimator: str = "gbt", random_state: int = 0) -> dict[str, float]:
    """Disentanglement, completeness and informativeness as disentanglement_lib computes them.

    From the importance matrix ``R (D, K)`` of per-factor gradient-boosted tree classifiers
    (:func:`gbt_importance`):

    * **disentanglement**: ``sum_j rho_j (1 - H_K(P_j.))`` with ``P_jk`` code ``j``'s importance
      spread over the factors, ``H_K`` the entropy in base ``K`` and ``rho_j`` code ``j``'s share
      of the total importance;
    * **completeness**: ``sum_k rho_k (1 - H_D(P_.k))``, the same over codes for each factor,
      weighted by the factor's share;
    * **informativeness**: the mean accuracy of the factor classifiers on the training and on
      the test set (disentanglement_lib's ``informativeness_train`` / ``_test``; Eastwood &
      Williams used the prediction error instead).

    The entropies add ``1e-11`` to every importance, as disentanglement_lib does. Values are
    disentanglement_lib's up to the trees' choice among equally good splits, which
    ``benchmarks/dlib_metrics.py`` checks on codes of graded quality. :func:`dci_lasso` is the
    ``fast`` protocol's alternative.

    Args:
        z_train, z_test: codes ``(N, D)``.
        v_train, v_test: factor indices ``(N, K)``.
        estimator: ``"gbt"`` (disentanglement_lib's classifier, grown in-library) or
            ``"sklearn"`` (scikit-learn's own, slower; see :func:`gbt_importance`).
        random_state: seeds the trees' tie breaking.

    Returns:
        ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness_train`` and
        ``dci_informativeness_test``, all in ``[0, 1]``.

    References:
        Eastwood & Williams, "A Framework for the Quantitative Evaluation of Disentangled
        Representations", ICLR 2018.
        Locatello et al., "Challenging Common Assumptions in the Unsupervised Learning of
        Disentangled Representations", ICML 2019 (disentanglement_lib).

    Example:
        >>> i = torch.arange(120)
        >>> v = torch.stack([i % 2, i // 2 % 3], 1)
        >>> out = dci(v.double(), v, v.double(), v)
        >>> round(out["dci_disentanglement"], 6), round(out["dci_completeness"], 6), out["dci_informativeness_test"]
        (1.0, 1.0, 1.0)
    """
    r, acc_train, acc_test = gbt_importance(z_train, v_train, z_test, v_test, estimator, random_state)
    out = dci_from_importance(r, eps=1e-11)
    out["dci_informativeness_train"] = float(acc_train.mean())
    out["dci_informativeness_test"] = float(acc_test.mean())
    return out


def dci_lasso(z_train: Tensor | np.ndarray, v_train: Tensor | np.ndarray, z_test: Tensor | np.ndarray,
        v_test: Tensor | np.ndarray, alpha: float | None = None) -> dict[str, float]:
    """DCI from Lasso regressions: the ``fast`` protocol's DCI (Eastwood & Williams, 2018).

    :func:`dci` is disentanglement_lib's estimator (gradient-boosted trees, accuracy as
    informativeness); this one is exact, deterministic and takes milliseconds.

    From the importance matrix ``R (D, K)`` (:func:`importance_matrix`):

    * **disentanglement**: ``sum_j rho_j (1 - H_K(P_j.))`` with ``P_jk = R_jk / sum_k R_jk`` the
      importance of code ``j`` spread over the factors, ``H_K`` the entropy in base ``K`` and
      ``rho_j`` code ``j``'s share of the total importance. 1 when each code dimension matters
      for one factor only.
    * **completeness**: ``sum_k rho_k (1 - H_D(P_.k))``, the same over codes for each factor,
      weighted by the factor's share (as disentanglement_lib does). 1 when each factor is
      captured by one dimension.
    * **informativeness**: the mean ``R^2`` of the factor regressions, on the training and on
      the test set (1 - the normalised mean squared error of Eastwood & Williams, so higher is
      better). Unlike the other two it does not change when the code is rotated.

    The regressor is the Lasso, one of the two Eastwood & Williams used: it is exact and
    deterministic, needs no tuning beyond the penalty (set from N and D, see
    :func:`default_lasso_alpha`) and costs milliseconds, where disentanglement_lib's
    gradient-boosted trees (:func:`dci`) take minutes per model. Its
    limit is that it sees linear relations only: a dimension that encodes a factor
    non-monotonically (an angle as its cosine) gets little importance, and the categorical
    dSprites ``shape`` is regressed as a number. Values are therefore not comparable with
    disentanglement_lib's. When no code dimension gets any importance (pure noise is zeroed
    by the penalty) disentanglement and completeness are 0.

    Args:
        z_train, z_test: codes ``(N, D)``.
        v_train, v_test: factor indices ``(N, K)``.
        alpha: the Lasso penalty on the standardised problem (``None``: the default).

    Returns:
        ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness_train`` and
        ``dci_informativeness_test``, all in ``[0, 1]`` (the test ``R^2`` can dip below 0 for
        codes that carry nothing).

    References:
        Eastwood & Williams, "A Framework for the Quantitative Evaluation of Disentangled
        Representations", ICLR 2018.

    Example:
        >>> i = torch.arange(400)
        >>> v = torch.stack([i % 4, i // 4 % 5], 1)
        >>> out = dci_lasso(v.double(), v, v.double(), v)
        >>> round(out["dci_disentanglement"], 9), round(out["dci_completeness"], 9)
        (1.0, 1.0)
    """
    r, r2_train, r2_test = importance_matrix(z_train, v_train, z_test, v_test, alpha)
    out = dci_from_importance(r)
    out["dci_informativeness_train"] = float(r2_train.mean())
    out["dci_informativeness_test"] = float(r2_test.mean())
    return out


# --- sampling through an encoder ---------------------------------------------------------------
def _encode(encode_factors: EncodeFactors, factors: Tensor, batch_size: int) -> Tensor:
    """Codes for ``factors (..., K)`` in chunks of ``batch_size`` rows: float64 ``(..., D)`` on the CPU."""
    flat = factors.reshape(-1, factors.shape[-1])
    with torch.no_grad():
        z = torch.cat([torch.as_tensor(encode_factors(flat[i : i + batch_size])).detach().cpu().double()
                       for i in range(0, flat.shape[0], batch_size)])
    return z.reshape(*factors.shape[:-1], z.shape[-1])


def sample_codes(encode_factors: EncodeFactors, factor_sizes: Sequence[int], n: int,
                 generator: torch.Generator, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """``n`` uniformly drawn factor combinations and their codes: ``(n, D)`` float64, ``(n, K)``."""
    v = sample_factors((n,), factor_sizes, generator)
    return _encode(encode_factors, v, batch_size), v


def _fixed_factor_mask(p: int, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One random factor per point: its index ``(P,)`` and a mask ``(P, 1, K)`` selecting it."""
    fixed = torch.randint(0, k, (p,), generator=generator)
    return fixed, torch.nn.functional.one_hot(fixed, k).bool()[:, None, :]


def beta_vae_score(encode_factors: EncodeFactors, factor_sizes: Sequence[int], generator: torch.Generator,
                   group_size: int = 64, n_train: int = 10_000, n_eval: int = 5000,
                   batch_size: int = 1000, classifier: str = "probe") -> dict[str, float]:
    """The BetaVAE metric: how well a linear classifier names the factor held fixed in pairs.

    Each point draws a factor ``k`` and ``group_size`` pairs of factor combinations that agree
    in factor ``k`` only (otherwise independent and uniform); its feature is the mean absolute
    difference of the paired codes ``mean_l |z(v_l) - z(v'_l)|`` ``(D,)``, and its label ``k``. A
    softmax regression is trained on ``n_train`` points and scored on ``n_eval`` others:
    disentanglement_lib's ``sklearn.linear_model.LogisticRegression()`` with its defaults on the
    raw features (``classifier="sklearn"``: L-BFGS, ``C = 1``, at most 100 iterations), or
    :func:`aelab.metrics.probe.linear_probe` on standardised features with the same penalty
    (``classifier="probe"``, the ``fast`` protocol's).

    The score is the accuracy, in ``[0, 1]``; chance is about ``1/K``, which pure noise scores.
    A code that keeps each factor in its own dimension scores 1, and so does one rotated
    linearly (the classifier can undo a rotation: this metric does not detect mixing; see
    Kim & Mnih, 2018). Each point costs ``2 * group_size`` encodings; the defaults are
    disentanglement_lib's (1.9 million encodings), so pass smaller ``n_train``/``n_eval`` for
    quick checks.

    Args:
        encode_factors: ``factors (B, K) int64 -> codes (B, D)``.
        factor_sizes: the number of values of each factor.
        generator: the only source of randomness.
        group_size: pairs averaged into one feature vector (disentanglement_lib's ``batch_size``, 64).
        n_train, n_eval: classifier training and evaluation points.
        batch_size: the most factor rows handed to ``encode_factors`` at once.
        classifier: ``"sklearn"`` (disentanglement_lib's) or ``"probe"``.

    Returns:
        ``betavae_score`` (evaluation accuracy) and ``betavae_train_acc``.

    References:
        Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
        Framework", ICLR 2017.

    Example:
        >>> sizes = (3, 6, 40)
        >>> encode = lambda f: f.double() / (torch.tensor(sizes) - 1)
        >>> g = torch.Generator().manual_seed(0)
        >>> beta_vae_score(encode, sizes, g, group_size=16, n_train=60, n_eval=30)["betavae_score"]
        1.0
    """
    n = n_train + n_eval
    f1 = sample_factors((n, group_size), factor_sizes, generator)
    f2 = sample_factors((n, group_size), factor_sizes, generator)
    fixed, mask = _fixed_factor_mask(n, len(factor_sizes), generator)
    f2 = torch.where(mask, f1, f2)  # each pair agrees in the fixed factor only
    z1, z2 = _encode(encode_factors, f1, batch_size), _encode(encode_factors, f2, batch_size)
    features = (z1 - z2).abs().mean(1)  # (n, D)
    if classifier == "sklearn":
        with warnings.catch_warnings():  # disentanglement_lib scores the capped fit as it is; so do we
            warnings.simplefilter("ignore", _sklearn("sklearn.exceptions").ConvergenceWarning)
            model = _sklearn("sklearn.linear_model").LogisticRegression().fit(features[:n_train].numpy(),
                                                                              fixed[:n_train].numpy())
        acc = [float(np.mean(model.predict(x.numpy()) == y.numpy()))
               for x, y in ((features[:n_train], fixed[:n_train]), (features[n_train:], fixed[n_train:]))]
        return {"betavae_score": acc[1], "betavae_train_acc": acc[0]}
    if classifier != "probe":
        raise ValueError(f"classifier must be 'sklearn' or 'probe', got {classifier!r}")
    # l2 = 1 / (2 n_train) per example is scikit-learn's default C = 1 that disentanglement_lib uses
    probe = linear_probe(features[:n_train], fixed[:n_train], features[n_train:], fixed[n_train:],
                         l2=0.5 / max(n_train, 1))
    return {"betavae_score": probe["probe_test_acc"], "betavae_train_acc": probe["probe_train_acc"]}


def factor_vae_score(encode_factors: EncodeFactors, factor_sizes: Sequence[int], generator: torch.Generator,
                     group_size: int = 64, n_train: int = 10_000, n_eval: int = 5000,
                     n_variance: int = 10_000, prune_threshold: float = 0.05,
                     reference_codes: Tensor | None = None, batch_size: int = 1000) -> dict[str, float]:
    """The FactorVAE metric: the least-varying normalised dimension names the fixed factor.

    The codes' empirical standard deviation over the data is estimated from ``n_variance``
    random factor combinations (or from ``reference_codes`` when given, e.g. the codes another
    metric already drew). Dimensions whose std is below ``prune_threshold`` are inactive
    (collapsed) and excluded, as in disentanglement_lib (the threshold is on the std of the raw
    code; Kim & Mnih prune collapsed dimensions without fixing a value). Each point fixes
    one random factor ``k`` at a random value across ``group_size`` otherwise random combinations,
    divides each active dimension's variance in the batch by its variance over the data, and
    votes for ``(argmin dimension, k)``. The classifier is the majority vote: each dimension
    predicts the factor it most often voted for on ``n_train`` points; the score is its accuracy
    on ``n_eval`` others.

    Range ``[0, 1]``; chance (pure noise) is about ``1/K``. Dividing by the data std makes the
    score invariant to each dimension's scale, unlike the BetaVAE metric, and the argmin
    makes it drop when factors are spread over several dimensions (a rotated code).

    Args:
        encode_factors: ``factors (B, K) int64 -> codes (B, D)``.
        factor_sizes: the number of values of each factor.
        generator: the only source of randomness.
        group_size: combinations per point (disentanglement_lib's ``batch_size``, 64).
        n_train, n_eval: points for the vote and for its evaluation.
        n_variance: combinations for the std over the data (unused with ``reference_codes``).
        prune_threshold: dimensions with a smaller std are ignored.
        reference_codes: codes ``(N, D)`` of uniformly drawn factors, for the std over the data.
        batch_size: the most factor rows handed to ``encode_factors`` at once.

    Returns:
        ``factorvae_score`` (evaluation accuracy), ``factorvae_train_acc`` and
        ``factorvae_active_dims``; with no active dimension both accuracies are 0.

    References:
        Kim & Mnih, "Disentangling by Factorising", ICML 2018.

    Example:
        >>> sizes = (3, 6, 40)
        >>> encode = lambda f: f.double() / (torch.tensor(sizes) - 1)
        >>> g = torch.Generator().manual_seed(0)
        >>> factor_vae_score(encode, sizes, g, group_size=16, n_train=60, n_eval=30, n_variance=500)
        {'factorvae_score': 1.0, 'factorvae_train_acc': 1.0, 'factorvae_active_dims': 3.0}
    """
    if reference_codes is None:
        reference_codes, _ = sample_codes(encode_factors, factor_sizes, n_variance, generator, batch_size)
    ref = _codes(reference_codes)
    global_var = ref.var(0)
    active = global_var.sqrt() >= prune_threshold
    n_active = int(active.sum())
    if n_active == 0:
        return {"factorvae_score": 0.0, "factorvae_train_acc": 0.0, "factorvae_active_dims": 0.0}
    k = len(factor_sizes)
    n = n_train + n_eval
    factors = sample_factors((n, group_size), factor_sizes, generator)
    fixed, mask = _fixed_factor_mask(n, k, generator)
    factors = torch.where(mask, factors[:, :1, :], factors)  # the first row's value, throughout the group
    z = _encode(encode_factors, factors, batch_size)  # (n, L, D)
    ratio = z[:, :, active].var(1) / global_var[active]
    argmin = ratio.argmin(1)  # (n,)

    def votes(sel: slice) -> Tensor:
        table = torch.zeros(n_active, k, dtype=torch.float64)
        return table.index_put_((argmin[sel], fixed[sel]), torch.ones(argmin[sel].shape[0], dtype=torch.float64),
                                accumulate=True)

    train, evaluation = votes(slice(0, n_train)), votes(slice(n_train, n))
    predict = train.argmax(1)  # (n_active,): each dimension's majority factor
    rows = torch.arange(n_active)
    return {"factorvae_score": float(evaluation[rows, predict].sum()) / max(n_eval, 1),
            "factorvae_train_acc": float(train[rows, predict].sum()) / max(n_train, 1),
            "factorvae_active_dims": float(n_active)}


# --- the suite ------------------------------------------------------------------------------------
def evaluate_disentanglement(encode_factors: EncodeFactors, factor_sizes: Sequence[int],
                             generator: torch.Generator, n_samples: int = 10_000, test_fraction: float = 0.2,
                             bins: int = 20, group_size: int = 64, n_points: int = 150,
                             continuous: bool | Sequence[bool] = False, batch_size: int = 1000) -> dict[str, float]:
    """MIG, SAP, DCI, BetaVAE and FactorVAE scores of one encoder by the ``fast`` protocol.

    Today's quick estimators on small samples: SAP by :func:`sap_threshold`, DCI by
    :func:`dci_lasso`, BetaVAE with :func:`aelab.metrics.probe.linear_probe`, and few
    interventional points. Its SAP, DCI and (at the default ``n_points``) BetaVAE and FactorVAE
    values are not comparable with published numbers; :func:`evaluate_disentanglement_dlib`
    computes those. One draw of ``n_samples`` uniform factor combinations serves MIG (all of it), SAP and DCI
    (split into train and the last ``test_fraction`` as test) and the FactorVAE data std.
    BetaVAE and FactorVAE each use ``n_points`` points (60 % to fit, 40 % to score) of
    ``group_size`` combinations (twice that for BetaVAE's pairs). The number of encodings is
    ``n_samples + 3 * n_points * group_size`` (38,800 with the defaults).

    Args:
        encode_factors: ``factors (B, K) int64 -> codes (B, D)``.
        factor_sizes: the number of values of each factor.
        generator: the only source of randomness.
        n_samples: combinations for MIG, SAP, DCI and the FactorVAE std.
        test_fraction: the share of ``n_samples`` held out to test SAP and DCI predictors.
        bins: MIG histogram bins.
        group_size: combinations per BetaVAE / FactorVAE point.
        n_points: points per interventional metric.
        continuous: SAP's treatment of the factors (see :func:`sap`).
        batch_size: the most factor rows handed to ``encode_factors`` at once.

    Returns:
        the union of the five metrics' dictionaries.

    Example:
        >>> sizes = (3, 6, 40, 32, 32)
        >>> encode = lambda f: f.double() / (torch.tensor(sizes) - 1)
        >>> out = evaluate_disentanglement(encode, sizes, torch.Generator().manual_seed(0),
        ...                                n_samples=2000, n_points=50, group_size=16, bins=40)
        >>> all(v > 0.9 for k, v in out.items() if k != "factorvae_active_dims")
        True
    """
    z, v = sample_codes(encode_factors, factor_sizes, n_samples, generator, batch_size)
    n_test = max(1, int(round(n_samples * test_fraction)))
    z_tr, v_tr, z_te, v_te = z[:-n_test], v[:-n_test], z[-n_test:], v[-n_test:]
    n_fit = max(1, int(round(0.6 * n_points)))
    out = mig(z, v, bins) | sap_threshold(z_tr, v_tr, z_te, v_te, continuous) | dci_lasso(z_tr, v_tr, z_te, v_te)
    out |= beta_vae_score(encode_factors, factor_sizes, generator, group_size, n_fit, n_points - n_fit, batch_size)
    out |= factor_vae_score(encode_factors, factor_sizes, generator, group_size, n_fit, n_points - n_fit,
                            reference_codes=z, batch_size=batch_size)
    return out


def evaluate_disentanglement_dlib(encode_factors: EncodeFactors, factor_sizes: Sequence[int],
                                  generator: torch.Generator, n_train: int = 10_000, n_test: int = 5000,
                                  n_points_train: int = 10_000, n_points_eval: int = 5000, group_size: int = 64,
                                  bins: int = 20, prune_threshold: float = 0.05, continuous: bool = False,
                                  dci_estimator: str = "gbt", batch_size: int = 1000,
                                  timings: dict[str, float] | None = None) -> dict[str, float]:
    """MIG, SAP, DCI, BetaVAE and FactorVAE scores by disentanglement_lib's definitions and sample sizes.

    The ``dlib`` protocol: the metric configurations of disentanglement_lib's unsupervised study
    (Locatello et al., 2019), whose numbers papers quote.

    * MIG: 20-bin histograms of ``n_train`` = 10,000 codes (:func:`mig`).
    * SAP: ``LinearSVC(C=0.01, class_weight="balanced")`` accuracy per dimension, trained on
      10,000 codes and tested on ``n_test`` = 5,000 (:func:`sap`, discrete factors).
    * DCI: ``GradientBoostingClassifier()`` importances, accuracy as informativeness, on the
      same 10,000 / 5,000 codes (:func:`dci`).
    * BetaVAE: groups of ``group_size`` = 64 pairs, ``LogisticRegression()`` trained on
      ``n_points_train`` = 10,000 points and scored on ``n_points_eval`` = 5,000
      (:func:`beta_vae_score` with ``classifier="sklearn"``).
    * FactorVAE: groups of 64, the majority vote of 10,000 points scored on 5,000, dimensions
      with a standard deviation below ``prune_threshold`` = 0.05 pruned, the data variance from
      the 10,000 training codes (:func:`factor_vae_score`).

    disentanglement_lib draws a fresh sample for each metric; here the 15,000 codes serve MIG,
    SAP, DCI and the FactorVAE variance at once, which gives each metric the same distribution
    (each sees 10,000 / 5,000 independent uniform draws, as there) but makes the metrics'
    sampling errors correlated. Encodings: ``n_train + n_test + 3 * group_size *
    (n_points_train + n_points_eval)`` (2.9 million with the defaults); for a deterministic
    encoder of a finite factor space wrap it in :func:`encode_once`, which
    :func:`disentanglement_metric` does.

    Args:
        encode_factors: ``factors (B, K) int64 -> codes (B, D)``.
        factor_sizes: the number of values of each factor.
        generator: the only source of randomness besides the trees' seeded tie breaking.
        n_train, n_test: codes for MIG (train only), SAP and DCI.
        n_points_train, n_points_eval: BetaVAE and FactorVAE points to fit and to score.
        group_size: combinations per BetaVAE / FactorVAE point.
        bins: MIG histogram bins.
        prune_threshold: FactorVAE's collapsed-dimension threshold on the code's std.
        continuous: SAP's treatment of the factors (disentanglement_lib's study: discrete).
        dci_estimator: ``"gbt"`` (disentanglement_lib's trees, grown in-library) or ``"sklearn"``
            (scikit-learn's own classifier).
        batch_size: the most factor rows handed to ``encode_factors`` at once.
        timings: if given, filled with the seconds of each part (``codes``: drawing and encoding
            the 15,000 codes; ``mig_sap``, ``dci``, ``betavae``, ``factorvae``: each metric, its
            own draws and encodings included).

    Returns:
        the union of the five metrics' dictionaries (the keys of :func:`evaluate_disentanglement`).

    References:
        Locatello et al., "Challenging Common Assumptions in the Unsupervised Learning of
        Disentangled Representations", ICML 2019.

    Example:
        >>> sizes = (2, 3, 4)
        >>> encode = lambda f: f.double() / (torch.tensor(sizes) - 1)
        >>> out = evaluate_disentanglement_dlib(encode, sizes, torch.Generator().manual_seed(0), n_train=200,
        ...                                     n_test=100, n_points_train=40, n_points_eval=20, group_size=8)
        >>> out["dci_disentanglement"] > 0.9, out["betavae_score"] > 0.9, out["factorvae_score"]
        (True, True, 1.0)
    """
    clock = _Stopwatch(timings)
    with clock("codes"):
        z, v = sample_codes(encode_factors, factor_sizes, n_train + n_test, generator, batch_size)
    z_tr, v_tr, z_te, v_te = z[:n_train], v[:n_train], z[n_train:], v[n_train:]
    with clock("mig_sap"):
        out = mig(z_tr, v_tr, bins) | sap(z_tr, v_tr, z_te, v_te, continuous)
    with clock("dci"):
        out |= dci(z_tr, v_tr, z_te, v_te, estimator=dci_estimator)
    with clock("betavae"):
        out |= beta_vae_score(encode_factors, factor_sizes, generator, group_size, n_points_train, n_points_eval,
                              batch_size, classifier="sklearn")
    with clock("factorvae"):
        out |= factor_vae_score(encode_factors, factor_sizes, generator, group_size, n_points_train, n_points_eval,
                                prune_threshold=prune_threshold, reference_codes=z_tr, batch_size=batch_size)
    return out


class _Stopwatch:
    """``with clock(name):`` adds the block's wall seconds to ``timings[name]`` (nothing without a dict)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.timings is not None:
                self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def encode_once(encode_factors: EncodeFactors, factor_sizes: Sequence[int],
                max_combinations: int = 10_000_000) -> EncodeFactors:
    """An encoder that encodes each distinct factor combination once and looks the repeats up.

    For a deterministic encoder (a model's ``E[z|x]`` of rendered images) this changes no code
    beyond float rounding, and it makes disentanglement_lib's 2.9 million encodings of the
    ``dlib`` protocol cost at most the size of the factor space (dSprites: 737,280, of which
    the protocol's draws hit about 98 %). Codes are kept as float64 ``(prod(factor_sizes), D)``
    (dSprites, D = 10: 59 MB); a factor space larger than ``max_combinations`` is not cached.

    Example:
        >>> calls = []
        >>> enc = encode_once(lambda f: calls.append(len(f)) or f.double(), (2, 3))
        >>> enc(torch.tensor([[0, 1], [1, 2], [0, 1]])).tolist(), enc(torch.tensor([[1, 2]])).tolist(), calls
        ([[0.0, 1.0], [1.0, 2.0], [0.0, 1.0]], [[1.0, 2.0]], [2])
    """
    sizes = torch.tensor([int(s) for s in factor_sizes])
    total = math.prod(int(s) for s in factor_sizes)
    if total > max_combinations:
        return encode_factors
    strides = torch.tensor([math.prod(int(s) for s in factor_sizes[k + 1 :]) for k in range(len(sizes))])
    done = torch.zeros(total, dtype=torch.bool)
    table: list[Tensor] = []  # the (total, D) table, allocated when D is known

    def encode(factors: Tensor) -> Tensor:
        idx = (factors.cpu().long() * strides).sum(-1)
        new = torch.unique(idx[~done[idx]])
        if new.numel():
            rows = (new[:, None] // strides) % sizes  # (M, K): the combinations not yet encoded
            z = torch.as_tensor(encode_factors(rows.to(factors.device))).detach().cpu().double()
            if not table:
                table.append(torch.empty(total, z.shape[-1], dtype=torch.float64))
            table[0][new] = z
            done[new] = True
        return table[0][idx]

    return encode


def disentanglement_metric(model: nn.Module, data: ImageDataset, protocol: str = "fast", batch_size: int = 1000,
                           seed: int = 0, timings: dict[str, float] | None = None, channels_last: bool = True,
                           **options: Any) -> dict[str, float]:
    """MIG, SAP, DCI, BetaVAE and FactorVAE scores of a model's codes E[z|x] on a factor data set.

    Factor combinations are drawn uniformly from the whole factor space (not from ``data``'s
    split), rendered with ``data.render`` and encoded. Two protocols:

    * ``"dlib"``: disentanglement_lib's definitions and sample sizes, the numbers papers quote
      (:func:`evaluate_disentanglement_dlib`; the default of the registered ``disentanglement``
      metric). Each distinct combination is encoded once (:func:`encode_once`): on dSprites
      about 720,000 encodings, which for the 10-dimensional conv VAE of
      ``channels=(32, 32, 64, 64)`` take minutes on 2 CPU cores (the bulk of the suite), and
      DCI's boosted trees (in-library, :mod:`aelab.metrics.gbt`) about a minute.
    * ``"fast"``: today's quick estimators (:func:`evaluate_disentanglement`: 38,800
      encodings, 17-37 s on 2 shared cores for the same model; 24-47 s with ``sparsity`` and
      ``clustering`` added). MIG is disentanglement_lib's; SAP (:func:`sap_threshold`), DCI
      (:func:`dci_lasso`) and the BetaVAE / FactorVAE accuracies on 60 evaluation points
      (standard error up to 0.065) are not comparable with published numbers.

    Args:
        model: an autoencoder (``model.encode(x).mean`` gives the codes).
        data: a factor data set with ``factor_sizes`` and ``render(factors) -> images``
            (dSprites).
        protocol: ``"dlib"`` or ``"fast"``.
        batch_size: images per encoder pass.
        seed: seeds the generator behind every draw.
        timings: if given, filled with seconds: ``encode`` (rendering and the encoder, all
            calls), and with the ``dlib`` protocol each metric's (see
            :func:`evaluate_disentanglement_dlib`).
        channels_last: a model with 2-D convolutions encodes through a copy of itself whose
            weights, like the rendered images, are in channels-last (NHWC) layout, which oneDNN's
            inference convolutions prefer (the same function; codes differ at most by float
            rounding). ``False``: the model as it is.
        **options: the chosen protocol's sample sizes and settings (see
            :func:`evaluate_disentanglement_dlib` and :func:`evaluate_disentanglement`).

    Returns:
        ``mig``, ``sap``, ``dci_*``, ``betavae_*`` and ``factorvae_*`` (see each metric).

    References:
        Chen et al., NeurIPS 2018 (MIG); Kumar et al., ICLR 2018 (SAP); Eastwood & Williams,
        ICLR 2018 (DCI); Higgins et al., ICLR 2017 (BetaVAE); Kim & Mnih, ICML 2018 (FactorVAE);
        Locatello et al., ICML 2019 (disentanglement_lib).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    render = getattr(data, "render", None)
    sizes = getattr(data, "factor_sizes", None)
    if render is None or sizes is None:
        raise ValueError(f"disentanglement needs a factor data set that renders chosen factors "
                         f"(render and factor_sizes, as dSprites has); got {type(data).__name__}")
    clock = _Stopwatch(timings)
    with evaluation(model, seed) as device:
        nhwc = channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())
        encoder = copy.deepcopy(model).to(memory_format=torch.channels_last) if nhwc else model

        def encode_factors(f: Tensor) -> Tensor:
            with clock("encode"):
                x = render(f.to(device))
                return encoder.encode(x.contiguous(memory_format=torch.channels_last) if nhwc else x).mean

        gen = torch.Generator().manual_seed(seed)
        if protocol == "dlib":
            return evaluate_disentanglement_dlib(encode_once(encode_factors, sizes), sizes, gen,
                                                 batch_size=batch_size, timings=timings, **options)
        return evaluate_disentanglement(encode_factors, sizes, gen, batch_size=batch_size, **options)


@METRICS.register("disentanglement")
def disentanglement(model: nn.Module, splits: DataSplits, protocol: str = "dlib", **options: Any) -> dict[str, float]:
    """MIG, SAP, DCI, BetaVAE and FactorVAE scores of a model's codes on a factor data set.

    The registered form (``(model, splits, **options)``, like every metric): the options are those
    of :func:`disentanglement_metric`, which scores one split; the protocol defaults to
    disentanglement_lib's (``"dlib"``), ``protocol="fast"`` runs the quick estimators.
    """
    return disentanglement_metric(model, splits.test, protocol=protocol, **options)
