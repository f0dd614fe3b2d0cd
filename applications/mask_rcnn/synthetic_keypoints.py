"""The embedded keypoint dataset: stick figures at random poses, as COCO person keypoints.

Each image holds one to three non-overlapping stick figures (category
`person`) on a noisy background. A figure has seven named keypoints: head,
neck, hip, and two hands and two feet joined to neck and hip by limbs drawn
as thick lines, with a disc on every keypoint. "Left" is the hand (foot) with
the smaller image x, so the names are learnable and swap exactly under a
horizontal flip. Every keypoint is visible (`v = 2`). The box is the
figure's drawn extent and the `area` (the OKS scale) is the box area. The
TFRecords are Model Garden's converter's, plus the keypoints
(`keypoint_data.create_keypoint_tf_example`).
"""

import functools
import os

import numpy as np
from PIL import Image, ImageDraw

from nonlocal_keras.applications.mask_rcnn import keypoint_data, synthetic_coco

KEYPOINTS = ("head", "neck", "hip", "left_hand", "right_hand", "left_foot", "right_foot")
FLIP_PERMUTATION = (0, 1, 2, 4, 3, 6, 5)
SKELETON = ((1, 2), (2, 3), (2, 4), (2, 5), (3, 6), (3, 7))  # 1-based, as COCO writes it
# OKS constant per keypoint (COCO's range is 0.025 for eyes to 0.107 for hips).
OKS_SIGMAS = (0.05,) * len(KEYPOINTS)
CATEGORIES = ({"id": 1, "name": "person", "keypoints": list(KEYPOINTS),
               "skeleton": [list(edge) for edge in SKELETON]},)
_LIMB_WIDTH = 3
_JOINT_RADIUS = 3


def _pose(rng, x0, y0, w, h):
    # Points as fractions of the box, then mapped into it; every point stays
    # inside so the box is the figure's extent.
    head = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.0, 0.1)])
    neck = head + [rng.uniform(-0.1, 0.1), rng.uniform(0.12, 0.2)]
    hip = neck + [rng.uniform(-0.15, 0.15), rng.uniform(0.3, 0.4)]
    hands = [neck + [side * rng.uniform(0.2, 0.45), rng.uniform(-0.1, 0.35)] for side in (-1, 1)]
    feet = [hip + [side * rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.45)] for side in (-1, 1)]
    hands.sort(key=lambda p: p[0])
    feet.sort(key=lambda p: p[0])
    points = np.clip(np.array([head, neck, hip, *hands, *feet]), 0.0, 1.0)
    return points * [w, h] + [x0, y0]


def _draw_figures(rng, pixels, max_figures):
    image_size = pixels.shape[0]
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    taken, annotations = [], []
    for _ in range(rng.integers(1, max_figures + 1)):
        placed = synthetic_coco.place_box(rng, image_size, taken, image_size // 4, image_size // 2)
        if placed is None:
            continue
        points = _pose(rng, *placed)
        colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
        for a, b in SKELETON:
            draw.line([tuple(points[a - 1]), tuple(points[b - 1])], fill=colour, width=_LIMB_WIDTH)
        for x, y in points:
            r = _JOINT_RADIUS
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        low = np.floor(points.min(0) - _JOINT_RADIUS).clip(0, image_size - 1)
        high = np.ceil(points.max(0) + _JOINT_RADIUS).clip(1, image_size)
        (bx, by), (bw, bh) = low, high - low
        annotations.append({
            "category_id": 1,
            "bbox": [float(bx), float(by), float(bw), float(bh)],
            "area": float(bw * bh),
            "iscrowd": 0,
            "num_keypoints": len(KEYPOINTS),
            "keypoints": [v for x, y in points for v in (round(float(x), 2), round(float(y), 2), 2)],
        })
    pixels[...] = np.asarray(picture)
    return annotations


def make_split(output_dir, split, num_images, image_size=256, max_figures=3, seed=0):
    """Write `{split}/*.png` and `{split}.json` (COCO person keypoints) under `output_dir`.

    Returns:
        The path of the COCO JSON file.
    """
    return synthetic_coco.write_split(
        output_dir, split, num_images, image_size, seed,
        functools.partial(_draw_figures, max_figures=max_figures), CATEGORIES)


def build(output_dir, num_train=64, num_val=16, image_size=256, seed=0):
    """Generate the dataset and its TFRecords under `output_dir`.

    Returns:
        A dict with `train_tfrecords`, `val_tfrecords` (file patterns),
        `train_json` and `val_json` (COCO keypoint files; the evaluator reads `val_json`).
    """
    paths = {}
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        json_path = make_split(output_dir, split, count, image_size, seed=split_seed)
        paths[f"{split}_json"] = json_path
        paths[f"{split}_tfrecords"] = keypoint_data.write_keypoint_tfrecords(
            json_path, os.path.join(output_dir, split), os.path.join(output_dir, f"{split}.tfrecord"))
    return paths


def task_override():
    """The task settings this dataset implies (classes, keypoints, flip, OKS constants)."""
    return {"model": {"num_classes": 2, "keypoint_head": {
        "num_keypoints": len(KEYPOINTS),
        "flip_permutation": list(FLIP_PERMUTATION),
        "oks_sigmas": list(OKS_SIGMAS),
    }}}
