"""Detection records whose image does not decode are skipped, logged and counted
(`applications/mask_rcnn/undecodable_images.py`); data with no decodable image
is one line, not a run that spins or evaluates nothing with exit 0."""

import glob
import io
import json
import logging
import subprocess
import sys
import types

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("official")

import smaller_detection  # noqa: E402
from nonlocal_keras.applications.mask_rcnn import trainer  # noqa: E402
from nonlocal_keras.applications.mask_rcnn.undecodable_images import (  # noqa: E402
    UndecodableImages,
)

TINY_YAML = trainer.__file__.rsplit("/applications/", 1)[0] + \
    "/training/configs/maskrcnn_nonlocal_tiny.yaml"


def _example(encoded, tag):
    feature = {"tag": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tag]))}
    if encoded is not None:
        feature["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[encoded]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _images():
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
    png = tf.io.encode_png(pixels).numpy()
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    gif, webp = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(gif, format="GIF")
    Image.fromarray(pixels).save(webp, format="WEBP")
    return {"png": png, "jpeg": jpeg, "truncated jpeg": jpeg[:len(jpeg) // 2],
            "garbage": b"<html>not found</html>", "gif": gif.getvalue(),
            "webp": webp.getvalue()}


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _params(is_training=True, file_type="tfrecord"):
    return types.SimpleNamespace(file_type=file_type, enable_tf_data_service=False,
                                 is_training=is_training)


def _tags(dataset):
    tags = []
    for record in dataset:
        try:
            example = tf.train.Example.FromString(record.numpy())
        except Exception:
            tags.append(record.numpy().decode())
            continue
        tags.append(example.features.feature["tag"].bytes_list.value[0].decode())
    return tags


def test_only_records_whose_image_decodes_as_model_gardens_decoder_does_pass(tmp_path, caplog):
    images = _images()
    names = ["png", "truncated jpeg", "jpeg", "garbage", "gif", "webp"]
    path = _write(tmp_path / "a.tfrecord",
                  [_example(images[name], name.encode()) for name in names]
                  + [_example(None, b"no image"), b"not a tf.Example"])
    skipped = UndecodableImages()
    read = skipped.reader(_params())
    with caplog.at_level(logging.WARNING):
        kept = _tags(read([path]))
    # Model Garden's own error names data without images or not tf.Examples.
    assert kept == ["png", "jpeg", "no image", "not a tf.Example"]
    assert sorted(key[2] for key in skipped.records) == [1, 3, 4, 5]
    assert skipped.count == 4
    for index in (1, 3, 4, 5):
        assert f"Skipping record {index} of {path} (training data)" in caplog.text
    assert "Invalid JPEG data" in skipped.records[("training", path, 1)]
    assert "Unknown image file format" in skipped.records[("training", path, 3)]
    for index, kind in ((4, "gif"), (5, "webp")):
        assert skipped.records[("training", path, index)].startswith("a GIF or WebP")
        # Decoded the way Model Garden's decoder does, it is 4-D: its parser fails on it.
        assert tf.io.decode_image(images[kind], channels=3).shape.rank == 4

    # Read again (the next epoch): counted again, logged once.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(_tags(read(tf.constant(path)))) == 4
    assert skipped.count == 8 and len(skipped.records) == 4
    assert "Skipping record" not in caplog.text
    assert skipped.summary().startswith(
        f"4 record(s) whose image cannot be decoded were skipped ({path} record 1: ")


def test_compressed_records_are_read_and_other_file_types_are_left_to_model_garden(tmp_path):
    images = _images()
    path = str(tmp_path / "a.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        writer.write(_example(images["garbage"], b"bad"))
        writer.write(_example(images["png"], b"good"))
    skipped = UndecodableImages()
    assert _tags(skipped.reader(_params(file_type="tfrecord_compressed"))([path])) == ["good"]
    assert skipped.reader(_params(file_type="sstable")) is None
    service = _params()
    service.enable_tf_data_service = True
    assert skipped.reader(service) is None


def test_repeated_training_files_with_no_decodable_image_stop_instead_of_spinning(tmp_path):
    """Model Garden repeats the list of files and interleaves them: with every
    record filtered out, the iterator looked for an element for ever."""
    garbage = _images()["garbage"]
    files = [_write(tmp_path / f"{n}.tfrecord", [_example(garbage, b"x")] * 3) for n in (1, 2)]
    skipped = UndecodableImages()
    dataset = tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
        skipped.reader(_params()), num_parallel_calls=tf.data.AUTOTUNE)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"NoDecodableImage: No image of the training data decoded: 6 "
                             r"record\(s\)"):
        next(iter(dataset))

    empty = [_write(tmp_path / f"empty{n}.tfrecord", []) for n in (1, 2)]
    dataset = tf.data.Dataset.from_tensor_slices(empty).repeat().interleave(
        UndecodableImages().reader(_params()), num_parallel_calls=tf.data.AUTOTUNE)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"The training data hold no record: 2 file\(s\)"):
        next(iter(dataset))


def test_a_good_file_beside_a_damaged_one_trains_on(tmp_path):
    images = _images()
    bad = _write(tmp_path / "bad.tfrecord", [_example(images["garbage"], b"x")] * 4)
    good = _write(tmp_path / "good.tfrecord", [_example(images["png"], b"ok")] * 4)
    skipped = UndecodableImages()
    dataset = tf.data.Dataset.from_tensor_slices([bad, good]).repeat().interleave(
        skipped.reader(_params()), num_parallel_calls=tf.data.AUTOTUNE)
    assert _tags(dataset.take(20)) == ["ok"] * 20
    skipped.check_some_decoded("training")  # does not raise


def test_validation_data_with_no_decodable_image_is_an_error_after_the_read(tmp_path):
    path = _write(tmp_path / "val.tfrecord", [_example(_images()["garbage"], b"x")] * 2)
    skipped = UndecodableImages()
    assert _tags(skipped.reader(_params(is_training=False))([path])) == []
    skipped.check_some_decoded("training")  # other data: nothing to say
    with pytest.raises(ValueError, match=r"^No image of the validation data decoded: 2 record"):
        skipped.check_some_decoded("validation")


def _damaged_copy(pattern, output, indices):
    """The records of `pattern` with the images at `indices` (or all) cut short."""
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern)))]
    for index in range(len(records)) if indices == "all" else indices:
        example = tf.train.Example.FromString(records[index])
        encoded = example.features.feature["image/encoded"].bytes_list.value
        encoded[0] = encoded[0][:len(encoded[0]) // 3]
        records[index] = example.SerializeToString()
    return _write(output, records)


@pytest.mark.slow
def test_a_run_on_damaged_images_trains_evaluates_and_says_what_it_skipped(tmp_path):
    """One truncated image in the training data, one in the validation data:
    the run stopped at the step that drew it. Now both are skipped, each named
    once, counted at the end, exit 0. Validation data of no decodable image
    evaluated nothing, exit 0: now one line, exit 2."""
    data = tmp_path / "data"
    with open(trainer.synthetic_data_config(str(data))) as f:
        task = json.load(f)["task"]
    train = _damaged_copy(task["train_data"]["input_path"], tmp_path / "train.tfrecord", [3])
    val = _damaged_copy(task["validation_data"]["input_path"], tmp_path / "val.tfrecord", [1])
    model_dir = tmp_path / "run"

    def command(mode, validation):
        return subprocess.run(
            [sys.executable, "-m", "nonlocal_keras.training.train_detection",
             "--experiment", "maskrcnn_resnetfpn_nonlocal_coco", "--config_file", TINY_YAML,
             "--synthetic_coco_dir", str(data), "--params_override",
             smaller_detection.OVERRIDES + "trainer.train_steps=20,trainer.steps_per_loop=10,"
             f"task.train_data.global_batch_size=2,task.train_data.input_path={train},"
             f"task.validation_data.input_path={validation}",
             "--mode", mode, "--model_dir", str(model_dir)],
            capture_output=True, text=True, timeout=600)

    result = command("train_and_eval", val)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(f"Skipping record 3 of {train} (training data)") == 1
    assert result.stderr.count(f"Skipping record 1 of {val} (validation data)") == 1
    assert (f"2 record(s) whose image cannot be decoded were skipped ({train} record 3: "
            "Invalid PNG data") in result.stderr
    assert "Average Precision" in result.stdout

    none = _damaged_copy(task["validation_data"]["input_path"], tmp_path / "none.tfrecord",
                         "all")
    result = command("eval", none)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "nonlocal-train-detection: error: No image of the validation data decoded: 16 "
        f"record(s) whose image cannot be decoded were skipped ({none} record 0: ")
    assert "Traceback" not in result.stderr
