"""The picture `make demo` saves: where the marker looks in the first frame.

For a few test videos, the queries of the non-local block that lie in the
marked quadrant of the last frame are averaged; their attention over the keys
of the first frame (`return_attention_scores`, keys after the block's
`(1, 2, 2)` pooling) is drawn over that frame, with the share of the whole
attention that lands on frame 0.
"""

import csv
import os

import numpy as np

from nonlocal_keras.training import preprocessing, video_io


def find_nonlocal_layer(model):
    """The first non-local block of `model` (searching nested models too)."""
    from nonlocal_keras.layers import BaseNonLocal

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, BaseNonLocal):
            return layer
    raise ValueError(f"Model {model.name!r} has no non-local block.")


def marker_attention(model, clips, quadrants):
    """Attention of the marked quadrant's last-frame queries over every key.

    Args:
        model: a functional model with a non-local block (channels last).
        clips: `(batch, T, H, W, 3)` normalised clips.
        quadrants: marked quadrant per clip (0..3, row-major).

    Returns:
        `(batch, T_k, H_k, W_k)` attention (each sums to 1 over the keys).
    """
    import keras

    layer = find_nonlocal_layer(model)
    features = keras.Model(model.inputs, layer.input)(clips, training=False)
    _, scores = layer(features, training=False, return_attention_scores=True)
    scores = keras.ops.convert_to_numpy(scores)
    time, height, width = features.shape[1:4]
    pool = layer.effective_pool_size
    key_grid = (time // pool[0], height // pool[1], width // pool[2])
    maps = []
    for score, quadrant in zip(scores, quadrants):
        rows = range((quadrant // 2) * height // 2, (quadrant // 2 + 1) * height // 2)
        cols = range((quadrant % 2) * width // 2, (quadrant % 2 + 1) * width // 2)
        queries = [((time - 1) * height + r) * width + c for r in rows for c in cols]
        maps.append(score[queries].mean(axis=0).reshape(key_grid))
    return np.stack(maps)


def _test_examples(root, count):
    with open(os.path.join(root, "test.csv")) as handle:
        rows = list(csv.DictReader(handle))[:count]
    frames = [video_io.decode_frames(os.path.join(root, r["path"]), np.arange) for r in rows]
    return (np.stack(frames), [int(r["label"]) for r in rows],
            [int(r["marker_quadrant"]) for r in rows])


def save_marker_attention(model, root, path, count=4, seed=0):
    """Draw `count` test videos of the dataset at `root` with the marker's attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, labels, quadrants = _test_examples(root, count)
    clips = preprocessing.normalize(frames).numpy()
    attention = marker_attention(model, clips, quadrants)
    predictions = np.argmax(np.asarray(model(clips, training=False)), axis=-1)
    size = frames.shape[2]
    figure, axes = plt.subplots(count, 3, figsize=(7.5, 2.5 * count), squeeze=False)
    for i in range(count):
        first = attention[i, 0]
        upsampled = np.kron(first, np.ones((size // first.shape[0], size // first.shape[1])))
        axes[i, 0].imshow(frames[i, 0])
        axes[i, 0].set_title(f"frame 0 (label {labels[i]})", fontsize=9)
        axes[i, 1].imshow(frames[i, -1])
        axes[i, 1].set_title(f"frame {frames.shape[1] - 1}: marker", fontsize=9)
        axes[i, 2].imshow(frames[i, 0])
        shown = axes[i, 2].imshow(upsampled, cmap="inferno", alpha=0.6, vmin=0,
                                  vmax=max(first.max(), 1e-6))
        axes[i, 2].set_title(f"marker's attention on frame 0\n{100 * attention[i, 0].sum():.0f}% "
                             f"of it; predicted {predictions[i]}", fontsize=9)
        figure.colorbar(shown, ax=axes[i, 2], fraction=0.046)
        for axis in axes[i]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("NL-C2D: attention of the marked quadrant's queries (last frame)", fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return attention
