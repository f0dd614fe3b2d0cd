"""The embedded default dataset: synthetic shapes in COCO format, and its TFRecords.

Each image holds a few non-overlapping filled shapes (rectangle, ellipse,
triangle) on a noisy background. A shape is a polygon; its instance mask is the
polygon rasterised by pycocotools, the same rasteriser Model Garden's converter
and the COCO evaluator use, and the image is painted with exactly that mask, so
the masks in the JSON are the objects' pixels. The TFRecords are written with
Model Garden's own converter functions (`create_coco_tf_record`).
"""

import collections
import functools
import glob
import json
import os

import numpy as np
from official.vision.data import create_coco_tf_record, tfrecord_lib
from PIL import Image
from pycocotools import mask as mask_api

from nonlocal_keras.training import atomic

CATEGORIES = ({"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"},
              {"id": 3, "name": "triangle"})
NUM_CLASSES = len(CATEGORIES) + 1  # Model Garden counts the background as class 0.
_ELLIPSE_VERTICES = 24


def _polygon(category_id, x0, y0, w, h):
    if category_id == 1:
        points = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif category_id == 2:
        angles = np.linspace(0, 2 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
        points = zip(x0 + w / 2 * (1 + np.cos(angles)), y0 + h / 2 * (1 + np.sin(angles)))
    else:
        points = [(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    return [float(round(c, 2)) for point in points for c in point]


def place_box(rng, image_size, taken, min_size, max_size):
    # Rejection sampling of a box that keeps a 2-pixel gap to the others, so
    # no shape occludes another and every mask stays complete.
    for _ in range(50):
        w, h = rng.integers(min_size, max_size + 1, size=2)
        x0, y0 = rng.integers(1, image_size - max(w, h) - 1, size=2)
        box = (x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1]
               for t in taken):
            taken.append(box)
            return int(x0), int(y0), int(w), int(h)
    return None


def write_split(output_dir, split, num_images, image_size, seed, draw, categories):
    """Write `{split}/*.png` and `{split}.json` (COCO format) under `output_dir`.

    Args:
        draw: `draw(rng, pixels)` paints one image's objects into `pixels`
            (uint8 `(size, size, 3)`, noisy background already there) and
            returns their COCO annotations without `id` and `image_id`.
        categories: the JSON's `categories`.

    Returns:
        The path of the COCO JSON file.
    """
    if num_images < 1:
        raise ValueError(f"`num_images` must be >= 1. Received: num_images={num_images}")
    if image_size < 64:
        raise ValueError(f"`image_size` must be >= 64. Received: image_size={image_size}")
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels = rng.integers(0, 60, size=(image_size, image_size, 3)).astype(np.uint8)
        for annotation in draw(rng, pixels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name,
                       "height": image_size, "width": image_size})
    json_path = os.path.join(output_dir, f"{split}.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": list(categories)}, f)
    return json_path


def _draw_shapes(rng, pixels, max_shapes):
    image_size = pixels.shape[0]
    taken, annotations = [], []
    for _ in range(rng.integers(1, max_shapes + 1)):
        placed = place_box(rng, image_size, taken, image_size // 6, image_size // 3)
        if placed is None:
            continue
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        polygon = _polygon(category_id, *placed)
        rle = mask_api.frPyObjects([polygon], image_size, image_size)
        mask = mask_api.decode(rle)[..., 0].astype(bool)
        pixels[mask] = rng.integers(120, 256, size=3)
        annotations.append({
            "category_id": category_id,
            "segmentation": [polygon],
            "area": float(mask.sum()),
            "bbox": [float(b) for b in mask_api.toBbox(mask_api.merge(rle))],
            "iscrowd": 0,
        })
    return annotations


def make_split(output_dir, split, num_images, image_size=256, max_shapes=3, seed=0):
    """Write `{split}/*.png` and `{split}.json` (COCO instances) under `output_dir`.

    Returns:
        The path of the COCO JSON file.
    """
    return write_split(output_dir, split, num_images, image_size, seed,
                       functools.partial(_draw_shapes, max_shapes=max_shapes), CATEGORIES)


def write_tfrecords(json_path, image_dir, output_prefix, num_shards=1):
    """Convert a COCO instances JSON with masks into TFRecords, Model Garden's way.

    A thin wrapper around the public functions of
    `official.vision.data.create_coco_tf_record` (its `main` needs absl
    flags): one process, masks included.

    Returns:
        The file pattern of the written shards.
    """
    images, image_to_annotations, id_to_name = load_coco(json_path)
    bad = short_polygon([a for found in image_to_annotations.values() for a in found])
    if bad is not None:  # pycocotools' TypeError named nothing
        raise ValueError(f"The `segmentation` of annotation {bad!r} of {json_path!r} holds a "
                         "polygon of fewer than 3 (x, y) points or an odd count of numbers. "
                         f"Received: json_path={json_path!r}")
    examples = create_coco_tf_record.generate_annotations(
        images=images,
        image_dirs=[image_dir],
        img_to_obj_annotation=image_to_annotations,
        id_to_name_map=id_to_name,
        include_masks=True,
    )
    return write_shards(output_prefix, examples, create_coco_tf_record.create_tf_example,
                        num_shards)


def write_shards(output_prefix, examples, make_example, num_shards):
    """`tfrecord_lib.write_tf_record_dataset` under temporary names, renamed once
    every shard is whole: an annotation that fails the conversion (the walk's:
    a polygon of 2 points, a box the converter drops) left half-written shards
    under the final names. Returns their file pattern."""
    temporary = atomic.temporary_name(output_prefix)
    try:
        tfrecord_lib.write_tf_record_dataset(temporary, examples, make_example, num_shards,
                                             multiple_processes=0)
    except BaseException:
        for path in glob.glob(glob.escape(temporary) + "-*"):
            os.remove(path)
        raise
    for path in glob.glob(glob.escape(temporary) + "-*"):
        os.replace(path, output_prefix + path[len(temporary):])
    return f"{output_prefix}-*"


def short_polygon(annotations):
    """The id of the first annotation whose polygon `segmentation` has fewer than
    3 points or an odd count of numbers (pycocotools fails on it), else None."""
    for annotation in annotations:
        polygons = annotation.get("segmentation") if isinstance(annotation, dict) else None
        if isinstance(polygons, list) and not all(
                isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in polygons):
            return annotation.get("id")
    return None


def load_coco(json_path):
    """`(images, annotations by image id, category name by id)` of a COCO JSON file.

    What the converter's `generate_annotations` takes; read here rather than
    through its private loaders.
    """
    with open(json_path) as f:
        coco = json.load(f)
    by_image = collections.defaultdict(list)
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    return coco["images"], by_image, {c["id"]: c["name"] for c in coco["categories"]}


def build(output_dir, num_train=64, num_val=16, image_size=256, seed=0):
    """Generate the tiny dataset and its TFRecords under `output_dir`.

    Returns:
        A dict with `train_tfrecords`, `val_tfrecords` (file patterns) and
        `val_json` (the COCO annotation file the evaluator reads).
    """
    paths = {}
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        json_path = make_split(output_dir, split, count, image_size, seed=split_seed)
        paths[f"{split}_json"] = json_path
        paths[f"{split}_tfrecords"] = write_tfrecords(
            json_path, os.path.join(output_dir, split), os.path.join(output_dir, f"{split}.tfrecord")
        )
    return paths
