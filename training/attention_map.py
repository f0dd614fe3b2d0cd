"""The picture `make demo` saves: where the marker looks in the first frame.

For a few test videos, the queries of the non-local block that lie in the
marked quadrant of the last frame are averaged; their attention over the keys
of the first frame (`return_attention_scores`, keys after the block's
`(1, 2, 2)` pooling) is drawn over that frame, with the share of the whole
attention that lands on frame 0. A fourth column shows the other direction:
how much each first-frame position attends to the marker's key.
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


def attention_grid(model, clips):
    """Attention of the first non-local block as `(batch, T, H, W, T_k, H_k, W_k)`.

    Queries are the block's input positions, keys the positions after its
    pooling (both in (t, h, w) order, as `return_attention_scores` gives them).
    """
    import keras

    layer = find_nonlocal_layer(model)
    features = keras.Model(model.input, layer.input)(clips, training=False)
    _, scores = layer(features, training=False, return_attention_scores=True)
    time, height, width = features.shape[1:4]
    pool = layer.effective_pool_size
    key_grid = (time // pool[0], height // pool[1], width // pool[2])
    scores = keras.ops.convert_to_numpy(scores)
    return scores.reshape((len(scores), time, height, width) + key_grid)


def _quadrant(size, quadrant):
    half = size // 2
    return slice((quadrant // 2) * half, (quadrant // 2 + 1) * half), \
        slice((quadrant % 2) * half, (quadrant % 2 + 1) * half)


def marker_attention(model, clips, quadrants):
    """Attention of the marked quadrant's last-frame queries over every key.

    Args:
        model: a functional model with a non-local block (channels last).
        clips: `(batch, T, H, W, 3)` normalised clips.
        quadrants: marked quadrant per clip (0..3, row-major).

    Returns:
        `(batch, T_k, H_k, W_k)` attention (each sums to 1 over the keys).
    """
    grid = attention_grid(model, clips)
    maps = []
    for scores, quadrant in zip(grid, quadrants):
        rows, cols = _quadrant(scores.shape[1], quadrant)
        maps.append(scores[-1, rows, cols].mean(axis=(0, 1)))
    return np.stack(maps)


def attention_to_marker(model, clips, quadrants):
    """For each first-frame query, its attention on the marker's key: `(batch, H, W)`.

    The other direction of the binding: a digit's positions may fetch "the
    marker is here" from the last frame instead of the marker fetching the digit.
    """
    grid = attention_grid(model, clips)
    maps = []
    for scores, quadrant in zip(grid, quadrants):
        rows, cols = _quadrant(scores.shape[-2], quadrant)
        maps.append(scores[0, :, :, -1, rows, cols].sum(axis=(-2, -1)))
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
    reverse = attention_to_marker(model, clips, quadrants)
    predictions = np.argmax(np.asarray(model.predict(clips, verbose=0)), axis=-1)
    size = frames.shape[2]
    figure, axes = plt.subplots(count, 4, figsize=(10, 2.5 * count), squeeze=False)
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
        back = np.kron(reverse[i], np.ones((size // reverse.shape[1], size // reverse.shape[2])))
        axes[i, 3].imshow(frames[i, 0])
        shown = axes[i, 3].imshow(back, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        axes[i, 3].set_title(f"frame 0 queries' attention on the\nmarker key (max {reverse[i].max():.2f})",
                             fontsize=9)
        figure.colorbar(shown, ax=axes[i, 3], fraction=0.046)
        for axis in axes[i]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("NL-C2D: attention of the marked quadrant's queries (last frame)", fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return attention
