"""The demo's data set: written once, reused, and made again when it is not whole."""

import csv
import json
import os

import pytest

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


def test_other_sizes_or_seeds_get_a_folder_of_their_own(tmp_path, monkeypatch):
    """`nonlocal-demo --seed 1` rewrote the default folder in place: the runs trained
    on it (their config.yaml names its CSVs) then read other videos and labels."""
    from nonlocal_keras import synthetic_digits_cache as cache

    monkeypatch.setenv("NONLOCAL_KERAS_CACHE", str(tmp_path))
    folders = {cache.default_cache_dir(), cache.default_cache_dir(seed=1),
               cache.default_cache_dir(num_train=10), cache.default_cache_dir(num_test=10)}
    assert len(folders) == 4 and cache.default_cache_dir() == str(tmp_path / "synthetic_digits")
    assert synthetic_digits.generate(num_train=3, num_test=2, seed=1) == str(
        tmp_path / "synthetic_digits-3-2-seed1")


def test_a_rewrite_cut_short_leaves_no_stamp_of_the_dataset_before(tmp_path, monkeypatch):
    """The old stamp stayed while other videos were written over the old ones: a kill
    then left a mix that the old parameters took for complete."""
    from nonlocal_keras import synthetic_digits_cache as cache

    root = synthetic_digits.generate(str(tmp_path / "digits"), num_train=4, num_test=2)
    written = []

    def killed_after_one(path, frames):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real(path, frames)

    real = synthetic_digits.video_io.write_video
    monkeypatch.setattr(synthetic_digits.video_io, "write_video", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        synthetic_digits.generate(root, num_train=4, num_test=2, seed=7)
    assert not cache.is_complete(root, 4, 2, 0) and not cache.is_complete(root, 4, 2, 7)
    monkeypatch.setattr(synthetic_digits.video_io, "write_video", real)
    assert synthetic_digits.generate(root, num_train=4, num_test=2) == root
    assert cache.is_complete(root, 4, 2, 0)


def test_a_full_disk_is_one_error_naming_the_video_and_a_rerun_completes_it(tmp_path, monkeypatch):
    """`nonlocal-demo --print-data-dir` on a full disk: an av.error.OSError traceback
    (exit 1), and a 0-byte video under its final name."""
    import errno

    from nonlocal_keras import synthetic_digits_cache as cache
    from nonlocal_keras.training.errors import FolderError

    real = synthetic_digits.video_io.write_video
    written = []

    def disk_fills_at_the_third(path, frames):
        written.append(path)
        if len(written) == 3:
            open(path, "wb").close()  # what PyAV had made when the disk refused
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(path, frames)

    monkeypatch.setattr(synthetic_digits.video_io, "write_video", disk_fills_at_the_third)
    root = str(tmp_path / "digits")
    third = os.path.join(root, "videos", "train", "000002.mp4")
    with pytest.raises(FolderError, match=rf"^Cannot write '{third}' \(No space left on device\)"):
        synthetic_digits.generate(root, num_train=4, num_test=2)
    assert sorted(os.listdir(os.path.dirname(third))) == ["000000.mp4", "000001.mp4"]
    monkeypatch.setattr(synthetic_digits.video_io, "write_video", real)
    assert synthetic_digits.generate(root, num_train=4, num_test=2) == root
    assert cache.is_complete(root, 4, 2, 0)
    assert all(os.path.getsize(os.path.join(root, row["path"])) > 0
               for row in _rows(root, "train") + _rows(root, "test"))


def test_what_a_killed_generation_left_half_written_is_removed(tmp_path):
    root = str(tmp_path / "digits")
    os.makedirs(os.path.join(root, "videos", "train"))
    left = os.path.join(root, "videos", "train", ".tmp-0123abcd-000005.mp4")
    open(left, "wb").close()
    synthetic_digits.generate(root, num_train=2, num_test=1)
    assert sorted(os.listdir(os.path.dirname(left))) == ["000000.mp4", "000001.mp4"]
