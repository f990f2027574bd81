"""The in-library boosted trees against scikit-learn's GradientBoostingClassifier (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from aelab.metrics.gbt import fit_boosted_trees


def _data(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes of graded usefulness for a k-class factor: one clean, one noisy, a constant, a coarse one."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) * 0.5
    x[:, 0] += y
    if d > 1:
        x[:, 1] = 0.3 * y + rng.normal(size=n)
    if d > 2:
        x[:, 2] = 0.25  # constant: never split
    if d > 3:
        x[:, 3] = np.round(x[:, 3], 1)  # many equal values
    return x, y


def _centred(raw: np.ndarray) -> np.ndarray:
    """Raw multinomial predictions up to the per-example constant that softmax ignores."""
    raw = raw.reshape(len(raw), -1)
    return raw - raw.mean(1, keepdims=True) if raw.shape[1] > 1 else raw


@pytest.mark.parametrize("k", [2, 3, 7])
def test_one_feature_grows_scikit_learns_trees_exactly(k):
    # with one feature no two features can tie, so every split, leaf and prediction is scikit-learn's
    x, y = _data(600, 1, k, seed=k)
    x_new = np.random.default_rng(9).normal(size=(200, 1)) * k
    theirs = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(x, y)
    ours = fit_boosted_trees(x, y, n_stages=30)
    np.testing.assert_allclose(_centred(ours.decision_function(x)), _centred(theirs.decision_function(x)),
                               atol=1e-10)
    np.testing.assert_allclose(_centred(ours.decision_function(x_new)), _centred(theirs.decision_function(x_new)),
                               atol=1e-10)
    assert (ours.predict(x_new) == theirs.predict(x_new)).all()
    for s in range(30):  # the thresholds of every stage's first tree
        tree = theirs.estimators_[s, 0].tree_
        assert tree.threshold[0] == pytest.approx(ours.thresholds[s, 0, 0, 0], abs=1e-12)


@pytest.mark.parametrize("k", [2, 5])
def test_many_features_match_scikit_learn_up_to_ties(k):
    x, y = _data(1500, 6, k, seed=10 + k)
    theirs = GradientBoostingClassifier(random_state=0).fit(x, y)
    ours = fit_boosted_trees(x, y)
    np.testing.assert_allclose(ours.importances, theirs.feature_importances_, atol=0.01)
    assert ours.importances[2] == 0.0 and ours.importances.sum() == pytest.approx(1.0)
    assert (ours.predict(x) == theirs.predict(x)).mean() > 0.97
    # trees and tie-breaking follow random_state
    again = fit_boosted_trees(x, y, random_state=0)
    np.testing.assert_array_equal(again.importances, ours.importances)


def test_labels_are_kept_and_one_class_is_refused():
    x, y = _data(300, 2, 3, seed=3)
    labels = np.array([10, 20, 30])[y]
    model = fit_boosted_trees(x, labels, n_stages=10)
    reference = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(x, labels)
    assert set(np.unique(model.predict(x))) <= {10, 20, 30}
    assert (model.predict(x) == reference.predict(x)).mean() > 0.97
    with pytest.raises(ValueError, match="2 classes"):
        fit_boosted_trees(x, np.zeros(300, dtype=int))
