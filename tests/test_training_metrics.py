"""Video metrics against independent references (loops, scikit-learn)."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from nonlocal_keras.training import metrics


def test_top_k_matches_a_counting_loop():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 7))
    labels = rng.integers(0, 7, 50)
    for k in (1, 3, 5):
        hits = 0
        for row, label in zip(scores, labels):
            # label is in the top k iff fewer than k classes score higher.
            hits += int(np.sum(row > row[label]) < k)
        assert metrics.top_k_accuracy(scores, labels, k) == pytest.approx(hits / 50)


def test_top_k_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="scores.shape"):
        metrics.top_k_accuracy(np.zeros((3, 4)), np.zeros(2), 1)


def test_map_matches_sklearn_and_skips_classes_without_positives():
    rng = np.random.default_rng(1)
    scores = rng.random((40, 6))
    targets = (rng.random((40, 6)) < 0.3).astype(float)
    targets[:, 5] = 0  # no positive: excluded, as in the Charades protocol.
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(5)])
    assert metrics.mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
