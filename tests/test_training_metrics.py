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


@pytest.mark.parametrize("multi_label", [False, True])
def test_workers_each_scoring_a_share_give_the_metrics_of_one_process(monkeypatch, multi_label):
    """A multi-worker run's final evaluation: worker i scores records[i::n], the
    scores are summed over the workers (`runtime.sum_over_workers`, a collective
    run for real by the two-worker test of test_training_faults.py), and every
    worker gets the metrics of all videos, skipped ones left out."""
    from nonlocal_keras.training import data, evaluate, runtime

    rng = np.random.default_rng(0)
    num_videos, num_classes, workers = 11, 5, 3
    table = rng.random((num_videos, num_classes)).astype(np.float32)
    table[[2, 7]] = np.nan  # videos that could not be decoded
    records = [data.VideoRecord(f"v{i}.mp4", tuple(rng.choice(num_classes, 2, replace=False)
                                                   if multi_label else [i % num_classes]), i)
               for i in range(num_videos)]

    def fake_dataset(share, *args, **kwargs):
        return share

    def fake_predict(model, share, count, classes, bar):
        scores = table[[record.row for record in share]]
        return scores, ~np.isnan(scores[:, 0])

    monkeypatch.setattr(data, "eval_dataset", fake_dataset)
    monkeypatch.setattr(evaluate, "predict_videos", fake_predict)
    config = {"num_classes": num_classes, "num_clips": 1, "num_crops": 1}
    monkeypatch.setattr(data, "eval_options", lambda data_config: {})

    def evaluate_as(index, count, others=0.0):
        sent = []

        def fake_sum(strategy, value):
            sent.append(value)
            return value + others

        monkeypatch.setattr(runtime, "worker_share", lambda strategy: (index, count))
        monkeypatch.setattr(runtime, "sum_over_workers", fake_sum)
        results = evaluate.evaluate_records(None, records, config, multi_label, verbose=0)
        return results, (sent[0] if sent else None)

    alone, _ = evaluate_as(0, 1)
    shares = [evaluate_as(i, workers)[1] for i in range(workers)]
    for index in range(workers):
        others = sum(share for i, share in enumerate(shares) if i != index)
        together, _ = evaluate_as(index, workers, others)
        for key in ("num_videos", "skipped_videos", "mAP", "top1", "top5"):
            assert together.get(key) == pytest.approx(alone.get(key)), key
    assert alone["num_videos"] == 9 and alone["skipped_videos"] == 2


def test_a_batchs_views_go_through_the_network_in_parts_and_average_the_same():
    """A batch's views all went through the network at once: 4 videos x 2 clips x
    1000 crops overflowed a TensorFlow kernel's int32 index (a segmentation
    fault, no word, after minutes). Now at most `CLIPS_PER_CALL` clips a call,
    with the same per-video means (float64 NumPy below)."""
    import tensorflow as tf

    from nonlocal_keras.training import evaluate

    calls = []

    def model(clips, training):
        calls.append(int(clips.shape[0]) if clips.shape[0] is not None else None)
        return tf.nn.softmax(tf.reduce_sum(clips, axis=[1, 2]) * [[1.0, -2.0, 0.5]])

    rng = np.random.default_rng(0)
    views = rng.normal(size=(7, 15, 2, 3, 3)).astype("float32")  # 7 videos x 15 views
    batches = tf.data.Dataset.from_tensor_slices((views, np.zeros(7), np.arange(7))).batch(3)
    scores, seen = evaluate.predict_videos(model, batches, 7, 3)

    logits = views.astype(np.float64).sum(axis=(2, 3)) * [1.0, -2.0, 0.5]
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected = (expected / expected.sum(-1, keepdims=True)).mean(axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert seen.all()
    # Traced with the parts' shapes (45 views a full batch): each at most the bound.
    assert calls and all(c is None or c <= evaluate.CLIPS_PER_CALL for c in calls), calls
    assert evaluate.CLIPS_PER_CALL < 45


def test_map_says_over_how_many_classes_and_which_have_no_video(monkeypatch, caplog):
    """A validation set with positives of 2 of 4 classes reported "mAP 0.27"
    alone: its mean over 2 classes (Charades' rule) read as over 4."""
    from nonlocal_keras.training import data, evaluate

    scores = np.array([[0.9, 0.1, 0.3, 0.2], [0.2, 0.8, 0.1, 0.6], [0.7, 0.4, 0.2, 0.1]])
    records = [data.VideoRecord(f"v{i}.mp4", labels, i)
               for i, labels in enumerate([(0,), (3,), (0, 3)])]
    monkeypatch.setattr(data, "eval_dataset", lambda share, *args, **kwargs: share)
    monkeypatch.setattr(evaluate, "predict_videos",
                        lambda model, share, *args: (scores, np.ones(len(share), bool)))
    monkeypatch.setattr(data, "eval_options", lambda data_config: {})
    config = {"num_classes": 4, "num_clips": 1, "num_crops": 1,
              "class_names": ["run", "jump", "swim", "sit"]}
    with caplog.at_level("WARNING"):
        results = evaluate.evaluate_records(None, records, config, True, verbose=0)
    expected = np.mean([average_precision_score([1, 0, 1], scores[:, 0]),
                        average_precision_score([0, 1, 1], scores[:, 3])])
    assert results["mAP"] == pytest.approx(expected) and results["mAP_classes"] == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["mAP is the mean over the 2 of 4 classes that have a video among the 3 "
                      "evaluated; 2 have none ('jump', 'swim'), and no AP."], warned


@pytest.mark.parametrize("workers", [1, 2])
def test_scores_that_are_no_numbers_are_said_to_be_the_models(monkeypatch, workers):
    """A run whose weights overflowed (weight decay 1e9: loss 1e7, weights 4e29)
    scored NaN, and its evaluation said "None of the 8 evaluation videos could be
    decoded (see the warnings above)", with no warning above."""
    from nonlocal_keras.training import data, evaluate, runtime
    from nonlocal_keras.training.run_state import DivergedError

    records = [data.VideoRecord(f"v{i}.mp4", (i % 2,), i) for i in range(4)]
    table = np.array([[0.5, 0.5], [np.nan, np.nan], [0.2, 0.8], [np.inf, 0.0]], np.float32)
    monkeypatch.setattr(data, "eval_dataset", lambda share, *args, **kwargs: share)
    monkeypatch.setattr(evaluate, "predict_videos", lambda model, share, *args: (
        table[[r.row for r in share]], np.ones(len(share), bool)))
    monkeypatch.setattr(data, "eval_options", lambda data_config: {})
    monkeypatch.setattr(runtime, "worker_share", lambda strategy: (0, workers))
    # The other worker's share (rows 1 and 3) as it would send it.
    other = np.zeros((4, 4), np.float32)
    other[1::2, -2:] = 1
    monkeypatch.setattr(runtime, "sum_over_workers", lambda strategy, value: value + other)
    with pytest.raises(DivergedError, match=r"scores of 2 of the 4 evaluation videos decoded "
                       r"are not numbers \(NaN or infinite\): its weights have diverged"):
        evaluate.evaluate_records(None, records, {"num_classes": 2, "num_clips": 1,
                                                  "num_crops": 1}, False, verbose=0)
