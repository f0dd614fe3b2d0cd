"""Dataset indexes: every bad row is reported before training, with its row number."""

import numpy as np
import pytest

from nonlocal_keras.training import data


@pytest.fixture
def videos(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def _csv(folder, text, name="index.csv"):
    path = folder / name
    path.write_text(text)
    return str(path)


def test_single_label_ids_and_relative_paths(videos):
    records, multi = data.read_csv_records(_csv(videos, "path,label\na.mp4,2\nb.mp4,0\n"), 3)
    assert not multi
    assert [r.labels for r in records] == [(2,), (0,)]
    assert records[0].path == str(videos / "a.mp4")


def test_every_bad_row_is_listed(videos):
    text = ("path,label\n"
            "a.mp4,1\n"          # row 2: fine
            "missing.mp4,0\n"    # row 3: no such file
            "b.mp4,3\n"          # row 4: id >= classes
            "c.mp4,walking\n"    # row 5: unknown label
            "a.mp4,\n")          # row 6: missing label
    with pytest.raises(data.DatasetError) as info:
        data.read_csv_records(_csv(videos, text), 3, argument="data.train_csv")
    message = str(info.value)
    assert "4 invalid row(s)" in message and "data.train_csv" in message
    assert "row 3: 'missing.mp4': no such file" in message
    assert "row 4: 'b.mp4': class id 3 not in [0, 3)" in message
    assert "row 5: 'c.mp4': unknown label 'walking'" in message
    assert "row 6: 'a.mp4': missing label" in message
    assert "row 2" not in message


def test_label_names_need_the_class_list(videos):
    path = _csv(videos, "path,label\na.mp4,run\nb.mp4,jump\n")
    assert data.infer_class_names(path) == ["jump", "run"]
    records, _ = data.read_csv_records(path, 2, class_names=["jump", "run"])
    assert [r.labels for r in records] == [(1,), (0,)]
    with pytest.raises(data.DatasetError, match="unknown label 'run'"):
        data.read_csv_records(path, 2, class_names=["jump", "swim"])


def test_multi_label_rows(videos):
    path = _csv(videos, "path,labels\na.mp4,3 1\nb.mp4,\nc.mp4,0 0\n")
    records, multi = data.read_csv_records(path, 4)
    assert multi
    assert [r.labels for r in records] == [(1, 3), (), (0,)]
    with pytest.raises(data.DatasetError, match="class id 9 not in"):
        data.read_csv_records(_csv(videos, "path,labels\na.mp4,1 9\n", "bad.csv"), 4)


def test_bad_header_and_missing_csv_name_the_argument(videos):
    with pytest.raises(data.DatasetError, match="path,label"):
        data.read_csv_records(_csv(videos, "path,class\na.mp4,1\n"), 3)
    with pytest.raises(FileNotFoundError, match="data.val_csv="):
        data.read_csv_records(str(videos / "nope.csv"), 3, argument="data.val_csv")


def test_folder_per_class(tmp_path):
    for label in ("swim", "run"):
        (tmp_path / label).mkdir()
        (tmp_path / label / f"{label}1.mp4").write_bytes(b"x")
    (tmp_path / "run" / "notes.txt").write_text("not a video")
    records, names = data.read_folder_records(str(tmp_path))
    assert names == ["run", "swim"]
    assert [(r.path.split("/")[-1], r.labels) for r in records] == [("run1.mp4", (0,)), ("swim1.mp4", (1,))]
    with pytest.raises(data.DatasetError, match="folder 'swim': unknown label"):
        data.read_folder_records(str(tmp_path), class_names=["run"])
    with pytest.raises(data.DatasetError, match="class id 1 not in"):
        data.load_records(str(tmp_path), 1)
