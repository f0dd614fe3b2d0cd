"""Video-level metrics of the evaluation protocol (NumPy).

`top_k_accuracy` for single-label data (Kinetics top-1 / top-5) and
`mean_average_precision` for multi-label data (Charades mAP: the mean over
classes that have at least one positive of the average precision, AP being
the mean of the precision at the rank of each positive).
"""

import numpy as np


def top_k_accuracy(scores, labels, k):
    """Fraction of rows whose label is among the `k` highest scores.

    Ties are broken in favour of the lower class index (a stable sort).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(
            "`scores` must be (num_videos, num_classes) with one label per row. "
            f"Received: scores.shape={scores.shape}, labels.shape={labels.shape}")
    if len(labels) == 0:
        return float("nan")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def average_precision(scores, targets):
    """AP of one class: mean precision at the rank of each positive."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(targets)[order] > 0
    if not hits.any():
        return float("nan")
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def mean_average_precision(scores, targets):
    """Mean AP over the classes (columns) that have at least one positive."""
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            "`scores` and `targets` must both be (num_videos, num_classes). "
            f"Received: scores.shape={scores.shape}, targets.shape={targets.shape}")
    values = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
