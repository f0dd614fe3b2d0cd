"""The picture `make demo` saves: what the marker frame reads from the first frame.

From the non-local block's `return_attention_scores` (queries at the block's
input positions, keys after its `(1, 2, 2)` pooling, so one key per quadrant
on the demo's 8x4x4 map), for a few test videos: which last-frame positions
attend to the first frame, where the strongest of them looks in it, and where
the queries inside the marked quadrant look. A trained demo model typically
routes the marker through one "reader" position of the last frame whose
attention lands on the digit under the marker.
"""

import csv
import os

import numpy as np

from nonlocal_keras.training import atomic, preprocessing, video_io


def find_nonlocal_layer(model):
    """The first non-local block of `model` (searching nested models too)."""
    from nonlocal_keras.layers import BaseNonLocal

    pending = list(model.layers)
    while pending:  # depth first, in layer order
        layer = pending.pop(0)
        if isinstance(layer, BaseNonLocal):
            return layer
        pending[:0] = getattr(layer, "layers", [])  # a nested model's own layers
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


def first_frame_reader(model, clips):
    """The last-frame query that attends most to the first frame, per clip.

    Returns `(mass, reader, attention)`: `mass` `(batch, H, W)` is each
    last-frame query's total attention on first-frame keys; `reader` the
    `(row, col)` of its maximum; `attention` `(batch, H_k, W_k)` that query's
    attention over the first frame's keys.
    """
    grid = attention_grid(model, clips)
    mass = grid[:, -1, :, :, 0].sum(axis=(-2, -1))
    readers, maps = [], []
    for scores, frame_mass in zip(grid, mass):
        row, col = np.unravel_index(np.argmax(frame_mass), frame_mass.shape)
        readers.append((int(row), int(col)))
        maps.append(scores[-1, row, col, 0])
    return mass, readers, np.stack(maps)


def _test_examples(root, count):
    with open(os.path.join(root, "test.csv")) as handle:
        rows = list(csv.DictReader(handle))[:count]
    frames = [video_io.decode_frames(os.path.join(root, r["path"]), np.arange) for r in rows]
    return (np.stack(frames), [int(r["label"]) for r in rows],
            [int(r["marker_quadrant"]) for r in rows])


def _overlay(axis, image, heat, title, vmax):
    size = image.shape[0]
    upsampled = np.kron(heat, np.ones((size // heat.shape[0], size // heat.shape[1])))
    axis.imshow(image)
    shown = axis.imshow(upsampled, cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
    axis.set_title(title, fontsize=8)
    axis.figure.colorbar(shown, ax=axis, fraction=0.046)


def save_marker_attention(model, root, path, count=4, seed=0):
    """Draw `count` test videos of the dataset at `root` with the block's attention.

    Columns: frame 0 (and the label); the last frame with the marker; which
    last-frame positions read frame 0 (their total attention on it); the
    attention over frame 0 of the strongest reader (outlined in column 3);
    the attention over frame 0 of the queries inside the marked quadrant.
    The three attention panels of a row share one colour scale (0 to the
    row's largest value), so a panel holding little of the attention is dark.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    frames, labels, quadrants = _test_examples(root, count)
    clips = preprocessing.normalize(frames).numpy()
    mass, readers, reader_maps = first_frame_reader(model, clips)
    marker_maps = marker_attention(model, clips, quadrants)
    predictions = np.argmax(np.asarray(model.predict(clips, verbose=0)), axis=-1)
    last = frames.shape[1] - 1
    cell = frames.shape[2] // mass.shape[1]
    figure, axes = plt.subplots(count, 5, figsize=(12.5, 2.6 * count), squeeze=False)
    for i in range(count):
        axes[i, 0].imshow(frames[i, 0])
        axes[i, 0].set_title(f"frame 0 (label {labels[i]}, predicted {predictions[i]})", fontsize=8)
        axes[i, 1].imshow(frames[i, last])
        axes[i, 1].set_title(f"frame {last}: marker", fontsize=8)
        vmax = max(float(mass[i].max()), float(reader_maps[i].max()),
                   float(marker_maps[i, 0].max()), 1e-6)
        _overlay(axes[i, 2], frames[i, last], mass[i],
                 f"frame-{last} queries: attention\nmass on frame 0", vmax)
        row, col = readers[i]
        axes[i, 2].add_patch(Rectangle((col * cell - 0.5, row * cell - 0.5), cell, cell,
                                       fill=False, edgecolor="cyan", linewidth=2))
        _overlay(axes[i, 3], frames[i, 0], reader_maps[i],
                 f"strongest reader's attention\non frame 0 ({100 * reader_maps[i].sum():.0f}% of it)",
                 vmax)
        _overlay(axes[i, 4], frames[i, 0], marker_maps[i, 0],
                 f"marked quadrant's queries on\nframe 0 ({100 * marker_maps[i, 0].sum():.0f}% of it)",
                 vmax)
        for axis in axes[i]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("NL-C2D: what the last frame reads from the first through the non-local block",
                    fontsize=10)
    figure.tight_layout()
    with atomic.replace(path) as temporary:
        figure.savefig(temporary, dpi=100, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(figure)
    return reader_maps
