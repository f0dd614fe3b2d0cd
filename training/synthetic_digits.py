"""The embedded default dataset: "which digit is under the marker?" videos.

Built from scikit-learn's handwritten digits (`load_digits`, 8x8 images shipped
with the package) and written as real H.264 MP4 files, so that it goes through
the same PyAV pipeline as user data.

Each video has 8 frames of 32x32 RGB. Frame 0 shows four digits, one per
16x16 quadrant; frames 1-6 are dark; frame 7 shows a bright square marker in
one quadrant. The label is the digit that frame 0 showed in the marked
quadrant (10 classes). A C2D network keeps frames apart until its global
pooling and so cannot bind the marker to the digit; a non-local block can
attend from the marker to the digit seven frames earlier.

Train and test videos use disjoint digit images (the first 1,400 of the 1,797
images for training), so test accuracy measures generalisation to new
handwriting. Generation is deterministic in `seed` and cached: a folder is
reused when its `done.json` matches the requested parameters.
"""

import csv
import io
import os

import numpy as np

from nonlocal_keras import synthetic_digits_cache
from nonlocal_keras.training import atomic, video_io

NUM_CLASSES = 10
NUM_FRAMES = 8
FRAME_SIZE = 32
_QUADRANT = FRAME_SIZE // 2
_TRAIN_IMAGES = 1400
# Quadrant q (0..3, row-major) has its top-left corner here.
QUADRANT_ORIGINS = ((0, 0), (0, _QUADRANT), (_QUADRANT, 0), (_QUADRANT, _QUADRANT))
# A faint background colour per quadrant, the same in every frame: it tells a
# network which quadrant a position is in (red, green, blue, yellow).
QUADRANT_TINTS = ((48, 0, 0), (0, 48, 0), (0, 0, 48), (48, 48, 0))


def _digit_images():
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 grey levels -> 0..255, upscaled 2x to fill a 16x16 quadrant.
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = images.repeat(2, axis=1).repeat(2, axis=2)
    return images, digits.target.astype(np.int64)


def make_clip(digit_images, marker_quadrant):
    """Frames `(8, 32, 32, 3)` uint8 from four 16x16 digit images (row-major quadrants)."""
    frames = np.zeros((NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    for (top, left), tint in zip(QUADRANT_ORIGINS, QUADRANT_TINTS):
        frames[:, top:top + _QUADRANT, left:left + _QUADRANT, :] = tint
    for (top, left), image in zip(QUADRANT_ORIGINS, digit_images):
        window = frames[0, top:top + _QUADRANT, left:left + _QUADRANT, :]
        np.maximum(window, image[..., None], out=window)
    top, left = QUADRANT_ORIGINS[marker_quadrant]
    # An 8x8 bright square centred in the marked quadrant of the last frame.
    frames[-1, top + 4:top + 12, left + 4:left + 12, :] = 255
    return frames


def sample_clips(num_clips, split, seed):
    """Yield `(frames, label, marker_quadrant)` for `num_clips` random clips."""
    images, targets = _digit_images()
    pool = np.arange(_TRAIN_IMAGES) if split == "train" else np.arange(_TRAIN_IMAGES, len(images))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    for _ in range(num_clips):
        chosen = rng.choice(pool, size=4, replace=True)
        quadrant = int(rng.integers(4))
        yield make_clip(images[chosen], quadrant), int(targets[chosen[quadrant]]), quadrant


def generate(root=None, num_train=synthetic_digits_cache.NUM_TRAIN,
             num_test=synthetic_digits_cache.NUM_TEST, seed=synthetic_digits_cache.SEED):
    """Write (or reuse) the dataset and return its folder.

    Layout: `root/train.csv`, `root/test.csv` (`path,label,marker_quadrant`,
    paths relative to `root`) and `root/videos/{train,test}/NNNNNN.mp4`.
    """
    root = root or synthetic_digits_cache.default_cache_dir(num_train, num_test, seed)
    if synthetic_digits_cache.is_complete(root, num_train, num_test, seed):
        return root
    # Another dataset's stamp goes first: a rewrite cut short must not pass for it.
    if os.path.exists(synthetic_digits_cache.stamp_path(root)):
        os.remove(synthetic_digits_cache.stamp_path(root))
    for split, count in (("train", num_train), ("test", num_test)):
        # What a killed generation left half written (the folder is made by the writes).
        atomic.remove_stale(os.path.join(root, "videos", split))
        rows = []
        for i, (frames, label, quadrant) in enumerate(sample_clips(count, split, seed)):
            relative = os.path.join("videos", split, f"{i:06d}.mp4")
            # A full disk left an empty video under its final name, and a traceback.
            with atomic.replace(os.path.join(root, relative)) as temporary:
                video_io.write_video(temporary, frames)
            rows.append((relative, label, quadrant))
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["path", "label", "marker_quadrant"])
        writer.writerows(rows)
        atomic.write_text(os.path.join(root, f"{split}.csv"), table.getvalue())
    atomic.write_json(synthetic_digits_cache.stamp_path(root),
                      synthetic_digits_cache.parameters(num_train, num_test, seed))
    return root


if __name__ == "__main__":
    print(generate())
