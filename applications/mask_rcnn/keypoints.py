"""Keypoint R-CNN targets, loss and heatmap decoding (Mask R-CNN paper, section 5).

Each keypoint of a RoI is one position on an `M x M` heatmap (M = 56): the
target is the index `row * M + col` of the bin the ground-truth keypoint falls
in, and the loss is a softmax cross-entropy over the `M * M` positions, for
every labelled keypoint inside its RoI. Decoding takes each heatmap's arg-max
back to image coordinates.

Conventions (Model Garden's): boxes are `[ymin, xmin, ymax, xmax]` and
keypoints `[y, x]`, both in pixels of the (resized) input image. Visibility is
COCO's `v` (0 not labelled, 1 labelled but occluded, 2 visible); like
Detectron, every labelled keypoint (`v > 0`) is a target.
"""

import tensorflow as tf


def keypoint_targets(keypoints, visibility, rois, heatmap_size):
    """The heatmap bin of every keypoint inside its RoI, and which ones count.

    Args:
        keypoints: `(..., K, 2)` float, `[y, x]` in image pixels.
        visibility: `(..., K)`, COCO's `v`; `v > 0` is labelled.
        rois: `(..., 4)` float, `[ymin, xmin, ymax, xmax]` in image pixels.
        heatmap_size: `M`, the heatmap side.

    Returns:
        `(targets, weights)`: `targets` `(..., K)` int32 in `[0, M * M)`
        (`row * M + col`; 0 where the weight is 0), `weights` `(..., K)`
        float32, 1 for a labelled keypoint inside its RoI, else 0.
    """
    keypoints = tf.cast(keypoints, tf.float32)
    rois = tf.cast(rois, tf.float32)[..., tf.newaxis, :]  # one RoI for its K keypoints
    size = float(heatmap_size)
    y, x = keypoints[..., 0], keypoints[..., 1]
    ymin, xmin, ymax, xmax = (rois[..., i] for i in range(4))

    def bin_of(value, low, high):
        scale = size / tf.maximum(high - low, 1e-6)
        index = tf.floor((value - low) * scale)
        # A keypoint exactly on the far edge belongs to the last bin.
        return tf.where(tf.equal(value, high), size - 1.0, index)

    row, col = bin_of(y, ymin, ymax), bin_of(x, xmin, xmax)
    inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
    valid = inside & (tf.cast(visibility, tf.float32) > 0)
    targets = tf.where(valid, tf.cast(row * size + col, tf.int32), 0)
    return targets, tf.cast(valid, tf.float32)


def keypoint_loss(logits, targets, weights):
    """Softmax cross-entropy over the `M * M` positions, averaged over the counted keypoints.

    Args:
        logits: `(..., M, M, K)` heatmap logits.
        targets, weights: `(..., K)` from `keypoint_targets`.

    Returns:
        A scalar: the sum of the counted keypoints' cross-entropies divided by
        their number (Detectron's normalisation by visible keypoints); 0 when
        none counts.
    """
    logits = tf.cast(logits, tf.float32)
    shape = tf.shape(logits)
    positions = shape[-3] * shape[-2]
    # (..., M, M, K) -> (..., K, M * M): one softmax per keypoint.
    flat = tf.reshape(logits, tf.concat([shape[:-3], [positions, shape[-1]]], 0))
    rank = len(logits.shape)
    flat = tf.transpose(flat, list(range(rank - 3)) + [rank - 2, rank - 3])
    # Integer-valued either way (a training step may cast every output to float).
    targets = tf.cast(targets, tf.int32)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=flat)
    weights = tf.cast(weights, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(cross_entropy * weights), tf.reduce_sum(weights))


def heatmaps_to_keypoints(logits, boxes):
    """Image-space keypoints and scores from heatmap logits.

    The arg-max bin of each heatmap maps to the centre of that bin in the box,
    so a keypoint comes back within half a bin (`box side / 2M`) of where it
    was encoded.

    Args:
        logits: `(..., M, M, K)` heatmap logits.
        boxes: `(..., 4)` `[ymin, xmin, ymax, xmax]`, the boxes the heatmaps belong to.

    Returns:
        `(keypoints, scores)`: `(..., K, 2)` `[y, x]` in image pixels and
        `(..., K)` the softmax probability of the arg-max position.
    """
    logits = tf.cast(logits, tf.float32)
    shape = tf.shape(logits)
    rows, cols = shape[-3], shape[-2]
    flat = tf.reshape(logits, tf.concat([shape[:-3], [rows * cols, shape[-1]]], 0))
    index = tf.argmax(flat, axis=-2, output_type=tf.int32)  # (..., K)
    scores = tf.reduce_max(tf.nn.softmax(flat, axis=-2), axis=-2)
    row = tf.cast(index // cols, tf.float32)
    col = tf.cast(index % cols, tf.float32)
    boxes = tf.cast(boxes, tf.float32)[..., tf.newaxis, :]
    bin_height = (boxes[..., 2] - boxes[..., 0]) / tf.cast(rows, tf.float32)
    bin_width = (boxes[..., 3] - boxes[..., 1]) / tf.cast(cols, tf.float32)
    y = boxes[..., 0] + (row + 0.5) * bin_height
    x = boxes[..., 1] + (col + 0.5) * bin_width
    return tf.stack([y, x], axis=-1), scores
