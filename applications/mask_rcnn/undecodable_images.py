"""Records whose image TensorFlow cannot decode, skipped from the detection data.

Model Garden decodes `image/encoded` inside its input pipeline, where an error
cannot be caught: one truncated JPEG among a data set's images stopped the
whole run at the step that drew it (`trainer.damaged_files_named` made that a
line, not a traceback). The records are checked first, as the video data are:
a record whose image does not decode the way Model Garden's decoder decodes it
(`tf.io.decode_image(..., channels=3)`, one image) is left out, logged once by
file and position, and counted. It costs a second decode of every image, on the
input pipeline's threads.

A record that is no tf.Example, or one without `image/encoded`, passes: Model
Garden's own error for such data says what is wrong with all of it. A TFRecord
whose bytes fail their checksum still stops the run (TensorFlow's reader gives
up on the rest of that file, so it cannot skip a record).
"""

import re
import threading

import tensorflow as tf
from absl import logging

READERS = {"tfrecord": None, "tfrecord_compressed": "GZIP"}
# TensorFlow's message without its "{{function_node ...}}" prefix and " [Op:...]" suffix.
_OP_WORDS = re.compile(r"^(?:\{\{[^}]*\}\}\s*)?(.*?)(?:\s*\[Op:\w+\])?$", re.S)


class NoDecodableImage(ValueError):
    """A pass over data where no record's image decodes: there is nothing to train on."""


class UndecodableImages:
    """The records skipped from one task's data, and the `dataset_fn` that skips them.

    `count` is the number of times a record was skipped (a record skipped in
    every epoch counts each time), `records` the distinct ones, by
    `(data, file, position)`. Thread-safe: tf.data calls the check from its threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0
        self.records = {}
        self._decoded = set()
        self._passes = {}  # data -> file -> times its read started and ended

    def reader(self, params):
        """A `dataset_fn` for Model Garden's input reader that leaves out records
        whose image does not decode, or None where it cannot run: a file type it
        does not read, or the tf.data service (whose workers cannot call Python)."""
        if params.file_type not in READERS or params.enable_tf_data_service:
            return None
        data = "training" if params.is_training else "validation"
        compression = READERS[params.file_type]

        def one_file(path):
            records = tf.data.TFRecordDataset(path, compression_type=compression).enumerate()
            kept = records.filter(lambda index, record: tf.numpy_function(
                lambda *args: self._check(data, *args), [path, index, record], tf.bool,
                stateful=False)).map(lambda index, record: record)
            return self._passing(data, "start", path).concatenate(kept).concatenate(
                self._passing(data, "end", path))

        def read(files):
            # Model Garden hands one file's name (a scalar, from its interleave)
            # or the list of them; each record is named by its own file.
            files = tf.convert_to_tensor(files, tf.string)
            if files.shape.rank == 0:
                return one_file(files)
            return tf.data.Dataset.from_tensor_slices(files).flat_map(one_file)

        return read

    def _passing(self, data, event, path):
        """A dataset of no element that records the start or end of a file's read."""
        return tf.data.Dataset.from_tensors(path).filter(lambda name: tf.numpy_function(
            lambda name: self._passed(data, event, name.decode(errors="replace")), [name],
            tf.bool, stateful=False))

    def _passed(self, data, event, path):
        with self._lock:
            counts = self._passes.setdefault(data, {}).setdefault(path, {"start": 0, "end": 0})
            counts[event] += 1
            files = self._passes[data].values()
            # Training files are read again and again (Model Garden repeats the
            # list of files): once one is started a second time, every file
            # (of this worker's share) was started, and when each was read to
            # its end without one image decoded, the filter would read for ever.
            whole_pass = (any(c["start"] > 1 for c in files)
                          and all(c["end"] > 0 for c in files))
        if whole_pass:
            self.check_some_decoded(data, files_read=len(files))
        return False

    def _check(self, data, path, index, record):
        try:
            example = tf.train.Example.FromString(record)
        except Exception:  # not a tf.Example: Model Garden's parse error names the data
            return True
        encoded = example.features.feature.get("image/encoded")
        if encoded is None or not encoded.bytes_list.value:
            return True
        try:
            image = tf.io.decode_image(encoded.bytes_list.value[0], channels=3)
            # TensorFlow decodes a GIF or a WebP, even a still one, to frames.
            reason = None if image.shape.rank == 3 else (
                "a GIF or WebP: it decodes to frames, and Model Garden's decoder needs one image")
        except tf.errors.OpError as error:
            reason = _OP_WORDS.match(error.message.strip()).group(1).rstrip(".")
        key = (data, path.decode(errors="replace"), int(index))
        with self._lock:
            if reason is None:
                self._decoded.add(data)
                return True
            self.count += 1
            again = key in self.records
            self.records.setdefault(key, reason)
        if not again:
            logging.warning("Skipping record %d of %s (%s data): its image cannot be decoded "
                            "(%s); it is left out of the %s.", key[2], key[1], data, reason,
                            "training" if data == "training" else "evaluation")
        return False

    def check_some_decoded(self, data, files_read=None):
        """Raise NoDecodableImage if records of `data` were skipped and none decoded:
        a training file whose every record was skipped ends its data (Model
        Garden's "End of sequence"), an evaluation of no image gave no metric, exit 0.
        With `files_read`, every file was read to its end: no record at all is
        the same dead end."""
        with self._lock:
            decoded = data in self._decoded
            skipped = any(key[0] == data for key in self.records)
        if not decoded and skipped:
            raise NoDecodableImage(f"No image of the {data} data decoded: "
                                   f"{self.summary(data)}. Write the records again.")
        if not decoded and files_read:
            raise NoDecodableImage(f"The {data} data hold no record: {files_read} file(s) "
                                   "read to their end (empty TFRecord files?).")

    def summary(self, data=None):
        """`N record(s) skipped (...)` for `data` ("training", "validation") or all."""
        with self._lock:
            named = [(key, reason) for key, reason in self.records.items()
                     if data in (None, key[0])]
        shown = "; ".join(f"{path} record {index}: {reason}"
                          for (_, path, index), reason in named[:3])
        more = f"; and {len(named) - 3} more" if len(named) > 3 else ""
        return (f"{len(named)} record(s) whose image cannot be decoded were skipped "
                f"({shown}{more})")
