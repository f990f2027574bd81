"""The pure parts of benchmarks/dlib_metrics.py and its side script: code families and adapters.

The comparison itself needs disentanglement_lib in a side virtual environment; these check what it
relies on without one: the code tables are indexed the way the adapters look them up, the
adapters replay and sample as disentanglement_lib's data sets do, and the agreement rules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _dlib_side as side  # noqa: E402
import dlib_metrics as bench  # noqa: E402

from aelab.metrics.disentanglement import mig  # noqa: E402

SIZES = (3, 4, 5)


def test_grid_rows_are_flat_indices():
    g = bench.grid(SIZES)
    assert g.shape == (60, 3)
    assert np.array_equal(bench.flat_index(g, SIZES), np.arange(60))
    assert np.array_equal(side.Table(list(SIZES)).sample_observations_from_factors(g, None), np.arange(60))


@pytest.mark.parametrize("family", ["near_perfect", "rotated_pairs", "nuisance_dead", "low_snr", "noise"])
def test_families_are_deterministic_tables(family):
    a, b = bench.code_table(family, SIZES), bench.code_table(family, SIZES)
    assert a.shape[0] == 60 and np.array_equal(a, b) and np.isfinite(a).all()
    if family == "nuisance_dead":
        assert a.shape[1] == 3 + 5 and (a[:, 6] == 0).all() and a[:, 7].std() < 0.05


def test_family_quality_is_graded_by_mig():
    sizes = (4, 6, 8)
    v = bench.grid(sizes)
    scores = {f: mig(bench.code_table(f, sizes), v)["mig"] for f in ("near_perfect", "low_snr", "noise")}
    assert scores["near_perfect"] > 0.8 > scores["low_snr"] > scores["noise"]


def test_nonlinear_family_needs_dsprites_factors():
    z = bench.code_table("nonlinear", (2, 2, 8, 3, 3))
    assert z.shape == (2 * 2 * 8 * 3 * 3, 7)
    with pytest.raises(ValueError, match="five"):
        bench.code_table("nonlinear", SIZES)


def test_replay_hands_out_rows_in_order_and_lookup_finds_their_codes():
    factors = bench.grid(SIZES)[::7]
    codes = np.arange(len(factors) * 2, dtype=np.float64).reshape(-1, 2)
    data, rep = side.Replay(factors, list(SIZES)), side.lookup(codes)
    f1, o1 = data.sample(4, np.random.RandomState(0))
    f2, o2 = data.sample(3, np.random.RandomState(1))  # the random state is ignored
    assert np.array_equal(np.concatenate([f1, f2]), factors[:7])
    assert np.array_equal(rep(np.concatenate([o1, o2])), codes[:7])
    with pytest.raises(IndexError):
        data.sample(len(factors), np.random.RandomState(0))


def test_table_samples_uniform_factors_with_the_metrics_random_state():
    data = side.Table(list(SIZES))
    f = data.sample_factors(3000, np.random.RandomState(0))
    assert f.shape == (3000, 3) and data.num_factors == 3
    assert all(set(np.unique(f[:, k])) == set(range(s)) for k, s in enumerate(SIZES))
    assert np.array_equal(f, data.sample_factors(3000, np.random.RandomState(0)))
    factors, obs = data.sample(10, np.random.RandomState(2))
    assert np.array_equal(bench.grid(SIZES)[obs], factors)


def test_aelab_side_encoder_matches_the_table_lookup():
    table = bench.code_table("near_perfect", SIZES)
    runs = bench.aelab_interventional(torch.from_numpy(table), SIZES, [0], n_train=50, n_eval=30, n_variance=200)
    assert runs[0]["betavae_score"] > 0.9 and runs[0]["factorvae_score"] > 0.9


def test_agreement_rules():
    ok = bench.sampled_agreement([0.80, 0.81], [0.805], 5000)
    assert ok["agree"] and ok["se_diff"] == pytest.approx(np.sqrt(0.805 * 0.195 / 5000 / 2 + 0.805 * 0.195 / 5000))
    assert not bench.sampled_agreement([0.80], [0.85], 5000)["agree"]
    assert bench.sampled_agreement([1.0], [1.0], 5000)["agree"]
    assert not bench.sampled_agreement([1.0], [0.99], 5000)["agree"]
    assert bench.exact_agreement(0.5, 0.51, 0.02)["agree"] and not bench.exact_agreement(0.5, 0.53, 0.02)["agree"]
