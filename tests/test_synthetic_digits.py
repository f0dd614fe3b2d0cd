"""The demo's data set: written once, reused, and made again when it is not whole."""

import csv
import json
import os

from nonlocal_keras.training import synthetic_digits


def _rows(root, split):
    with open(os.path.join(root, f"{split}.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_written_once_then_reused(tmp_path):
    root = synthetic_digits.generate(str(tmp_path / "digits"), num_train=6, num_test=3)
    train, test = _rows(root, "train"), _rows(root, "test")
    assert (len(train), len(test)) == (6, 3)
    assert all(os.path.isfile(os.path.join(root, row["path"])) for row in train + test)
    assert {row["label"] for row in train} <= {str(d) for d in range(10)}
    first = os.path.join(root, train[0]["path"])
    stamp = os.stat(first).st_mtime_ns
    assert synthetic_digits.generate(root, num_train=6, num_test=3) == root
    assert os.stat(first).st_mtime_ns == stamp  # reused, not written again
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]


def test_a_stamp_cut_short_or_for_other_sizes_makes_it_again(tmp_path):
    """A kill while the stamp was written left half a JSON file, on which the demo
    stopped with a JSONDecodeError traceback at every later start."""
    root = synthetic_digits.generate(str(tmp_path / "digits"), num_train=4, num_test=2)
    with open(os.path.join(root, "done.json"), "w") as handle:
        handle.write('{"version": 2, "num_tr')
    synthetic_digits.generate(root, num_train=4, num_test=2)
    with open(os.path.join(root, "done.json")) as handle:
        assert json.load(handle)["num_train"] == 4
    synthetic_digits.generate(root, num_train=5, num_test=2)
    assert len(_rows(root, "train")) == 5
