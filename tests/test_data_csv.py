"""Dataset indexes: every bad row is reported before training, with its row number."""

import os
import re

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
            "c.mp4,-1\n"         # row 5: negative id
            "a.mp4,\n")          # row 6: missing label
    with pytest.raises(data.DatasetError) as info:
        data.read_csv_records(_csv(videos, text), 3, argument="data.train_csv")
    message = str(info.value)
    assert "4 invalid row(s)" in message and "data.train_csv" in message
    assert "row 3: 'missing.mp4': no such file" in message
    assert "row 4: 'b.mp4': class id 3 not in [0, 3)" in message
    assert "row 5: 'c.mp4': class id -1 not in [0, 3)" in message
    assert "row 6: 'a.mp4': missing label" in message
    assert "row 2" not in message


def test_a_name_with_spaces_of_its_own_is_found_and_a_missing_one_says_they_were_trimmed(
        videos):
    """Spaces around a CSV's path were always trimmed: a video whose name ends
    in a space could not be listed, even quoted, and the error named it, space
    and all, as 'no such file'."""
    (videos / "trail.mp4 ").write_bytes(b"x")
    (videos / " lead.mp4").write_bytes(b"x")
    text = 'path,label\n"trail.mp4 ",0\n" lead.mp4",1\n a.mp4 ,2\n"gone.mp4 ",0\n'
    with pytest.raises(data.DatasetError) as info:
        data.read_csv_records(_csv(videos, text), 3)
    message = str(info.value)
    assert "1 invalid row(s)" in message, message
    assert "row 5: 'gone.mp4 ': no such file (with the spaces around it trimmed)" in message
    records, _ = data.read_csv_records(_csv(videos, text.rsplit('"gone', 1)[0]), 3)
    assert [r.path for r in records] == [str(videos / "trail.mp4 "), str(videos / " lead.mp4"),
                                         str(videos / "a.mp4")]


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
    # Without data.num_classes (the default) it was "the labels are class ids, set
    # data.num_classes": the classes were settled before the file was looked for.
    missing = str(videos / "nope.csv")
    with pytest.raises(FileNotFoundError, match=f"CSV file not found. Received: "
                                                f"data.train_csv='{missing}'"):
        data.load_training_data({"train_csv": missing, "val_csv": None, "num_classes": None,
                                 "class_names": None})
    # A folder said "CSV file not found", of a folder that is there.
    with pytest.raises(FileNotFoundError, match="is a folder, not a CSV file. Received: "
                                                "data.val_csv="):
        data.read_csv_records(str(videos), 3, argument="data.val_csv")


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
    with pytest.raises(data.DatasetError, match="must name its class by id"):
        data.load_records(str(tmp_path), 1)


def test_ids_mixed_with_names_are_an_error_listing_the_rows(videos):
    # The README's old example: `12` and `playing guitar` would become ids 12 and 1.
    path = _csv(videos, "path,label\na.mp4,12\nb.mp4,playing guitar\nc.mp4,3\n")
    for read in (lambda: data.read_csv_records(path, 20, ["playing guitar"], "data.train_csv"),
                 lambda: data.infer_class_names(path, "data.train_csv")):
        with pytest.raises(data.DatasetError, match="mix class ids and class names") as info:
            read()
        assert "row 2: class id '12'" in str(info.value)
        assert "row 3: class name 'playing guitar'" in str(info.value)


def test_a_utf8_bom_is_read_as_excel_writes_it(videos):
    path = videos / "excel.csv"
    path.write_bytes("\ufeffpath,label\na.mp4,run\nb.mp4,jump\n".encode("utf-8"))
    assert data.infer_class_names(str(path)) == ["jump", "run"]
    records, _ = data.read_csv_records(str(path), 2, ["jump", "run"])
    assert [r.labels for r in records] == [(1,), (0,)]


def test_semicolons_and_other_encodings_name_the_file(videos):
    semicolons = _csv(videos, "path;label\na.mp4;0\n", "semi.csv")
    with pytest.raises(data.DatasetError, match="separates its columns with ';'.*semi.csv"):
        data.read_csv_records(semicolons, 2, argument="data.train_csv")
    headless = _csv(videos, "a.mp4;0\nb.mp4;1\n", "semi2.csv")
    with pytest.raises(data.DatasetError, match="';'"):
        data.read_csv_records(headless, 2)
    latin = videos / "latin.csv"
    latin.write_bytes("path,label\na.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(data.DatasetError, match=r"not UTF-8 text \(byte 0xe9.*latin.csv"):
        data.read_csv_records(str(latin), 2, ["café"], argument="data.val_csv")


def _data_config(**fields):
    from nonlocal_keras.training import config as config_lib

    return dict(config_lib.DEFAULTS["data"], **fields)


def test_the_class_count_comes_from_the_names_or_must_agree_with_them(videos):
    from nonlocal_keras.training.errors import ConfigError

    train = _csv(videos, "path,label\na.mp4,run\nb.mp4,jump\n", "train.csv")
    resolved = data.resolve_classes(_data_config(train_csv=train))
    assert resolved["class_names"] == ["jump", "run"] and resolved["num_classes"] == 2
    with pytest.raises(ConfigError, match="2 names from.*data.num_classes=400"):
        data.resolve_classes(_data_config(train_csv=train, num_classes=400))
    with pytest.raises(ConfigError, match="2 names from data.class_names"):
        data.resolve_classes(_data_config(train_csv=train, class_names=["jump", "run"],
                                          num_classes=4))
    ids = _csv(videos, "path,label\na.mp4,0\nb.mp4,1\n", "ids.csv")
    with pytest.raises(ConfigError, match="set data.num_classes"):
        data.resolve_classes(_data_config(train_csv=ids))
    assert data.resolve_classes(_data_config(train_csv=ids, num_classes=5))["num_classes"] == 5


def test_val_names_the_training_set_lacks_stop_before_training(videos):
    train = _csv(videos, "path,label\na.mp4,run\nb.mp4,jump\n", "train.csv")
    val = _csv(videos, "path,label\na.mp4,run\nb.mp4,purple blob\nc.mp4,swim\n", "val.csv")
    with pytest.raises(data.DatasetError) as info:
        data.load_training_data(_data_config(train_csv=train, val_csv=val))
    message = str(info.value)
    assert "2 invalid row(s)" in message and "data.val_csv" in message
    assert "row 3: 'b.mp4': unknown label 'purple blob'" in message
    assert "row 4: 'c.mp4': unknown label 'swim'" in message


def test_numbers_in_the_validation_set_of_named_training_classes_are_warned_about(
        videos, caplog):
    """They are places among the sorted names: right only if the user
    numbered the classes that way; they were read so without a word."""
    train = _csv(videos, "path,label\na.mp4,run\nb.mp4,jump\n", "train.csv")
    val = _csv(videos, "path,label\nb.mp4,0\nc.mp4,1\n", "val.csv")
    with caplog.at_level("WARNING"):
        _, _, records, _ = data.load_training_data(_data_config(train_csv=train, val_csv=val))
    assert [r.labels for r in records] == [(0,), (1,)]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "2 label(s)" in warned[0], warned
    assert "0 = 'jump', 1 = 'run'" in warned[0] and "row 2's '0'" in warned[0]
    caplog.clear()
    # Names given, or names throughout: the numbers are what the user chose.
    for config in (_data_config(train_csv=train, val_csv=val, class_names=["jump", "run"]),
                   _data_config(train_csv=train, val_csv=train)):
        with caplog.at_level("WARNING"):
            data.load_training_data(config)
        assert not [r for r in caplog.records if r.levelname == "WARNING"], config


def test_nonlocal_evaluate_warns_of_numbers_beside_names_as_training_does(
        videos, caplog, monkeypatch):
    """`nonlocal-evaluate --set data.val_csv=...` read them as ids without a word. A
    run's config.yaml keeps the names it sorted from its labels; names given in
    another order are the user's."""
    from nonlocal_keras.training import evaluate, models

    train = _csv(videos, "path,label\na.mp4,run\nb.mp4,jump\n", "train.csv")
    val = _csv(videos, "path,label\nb.mp4,0\nc.mp4,1\n", "val.csv")

    def scored(model_config, data_config, multi_label, argument):
        raise KeyboardInterrupt  # the records are read: no model is needed here

    monkeypatch.setattr(models, "evaluation_model", scored)
    for names, given, warned in (("null", [], True), ("[jump, run]", [], True),
                                 ("[run, jump]", [], False),
                                 ("null", ["--set", "data.class_names=[jump, run]"], False)):
        (videos / "config.yaml").write_text(
            f"data: {{train_csv: {train}, val_csv: {val}, class_names: {names}}}\n")
        caplog.clear()
        with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
            evaluate.main(["--config", str(videos / "config.yaml"), "--weights", train, *given])
        assert ("2 label(s) of " in caplog.text and "0 = 'jump', 1 = 'run'" in caplog.text
                and "Received: data.val_csv=" in caplog.text) == warned, caplog.text
    for name in ("jump", "run"):
        (videos / "classes" / name).mkdir(parents=True)
    folders = str(videos / "classes")
    assert data.names_sorted_from_labels({"train_csv": folders, "class_names": ["jump", "run"]})
    assert not data.names_sorted_from_labels({"train_csv": folders, "class_names": ["a", "b"]})
    assert not data.names_sorted_from_labels({"train_csv": str(videos / "gone.csv"),
                                              "class_names": ["jump", "run"]})


def test_a_multi_label_header_over_one_label_a_row_is_warned_about(videos, caplog):
    """'path,labels' for 'path,label': one letter makes a softmax run a sigmoid one."""
    one_each = _csv(videos, "path,labels\na.mp4,run\nb.mp4,jump\nc.mp4,run\n", "one.csv")
    with caplog.at_level("WARNING"):
        _, _, _, multi = data.load_training_data(_data_config(train_csv=one_each))
    assert multi
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "name the column 'label'" in warned[0], warned
    assert repr(one_each) in warned[0]
    caplog.clear()
    for text in ("path,labels\na.mp4,run;jump\nb.mp4,jump\n", "path,label\na.mp4,run\nb.mp4,jump\n"):
        with caplog.at_level("WARNING"):
            data.load_training_data(_data_config(train_csv=_csv(videos, text, "other.csv")))
        assert not [r for r in caplog.records if r.levelname == "WARNING"], text


def test_multi_label_names_with_spaces_are_kept_whole_by_semicolons(videos):
    text = "path,labels\na.mp4,playing guitar; juggling\nb.mp4,juggling\nc.mp4,\n"
    path = _csv(videos, text, "phrases.csv")
    assert data.infer_class_names(path) == ["juggling", "playing guitar"]
    records, multi = data.read_csv_records(path, 2, ["juggling", "playing guitar"])
    assert multi and [r.labels for r in records] == [(0, 1), (0,), ()]
    ids = _csv(videos, "path,labels\na.mp4,3;1\nb.mp4,2\n", "ids.csv")
    assert [r.labels for r in data.read_csv_records(ids, 4)[0]] == [(1, 3), (2,)]


def test_names_read_from_labels_split_at_spaces_are_warned_about_once(videos, caplog):
    """Kinetics names under 'path,labels' would silently become a class per word."""
    split = _csv(videos, "path,labels\na.mp4,run\nb.mp4,playing guitar\nc.mp4,run jump\n",
                 "split.csv")
    with caplog.at_level("WARNING"):
        resolved, records, _, _ = data.load_training_data(_data_config(train_csv=split))
    assert resolved["class_names"] == ["guitar", "jump", "playing", "run"] and len(records) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    assert "row 3's 'playing guitar' is read as 2 labels ('playing', 'guitar')" in warned[0]
    assert "';'" in warned[0] and repr(split) in warned[0]
    caplog.clear()
    given = _data_config(train_csv=split, class_names=["guitar", "jump", "playing", "run"])
    for config in [given] + [_data_config(train_csv=_csv(videos, text, "quiet.csv")) for text in (
            "path,labels\na.mp4,run;jump\n", "path,label\na.mp4,playing guitar\n",
            # Codes, Charades' way: labels with digits are not words of a name.
            "path,labels\na.mp4,c092 c147\nb.mp4,c092\n")]:
        with caplog.at_level("WARNING"):
            data.load_training_data(config)
        assert not [r for r in caplog.records if r.levelname == "WARNING"], config
    with caplog.at_level("WARNING"):  # ids: nothing to read as names
        data.load_training_data(_data_config(train_csv=_csv(videos, "path,labels\na.mp4,3 1\n",
                                                            "ids.csv"), num_classes=4))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # A word among codes is one: `n2 x` made `x` a class without a word.
    mixed = _csv(videos, "path,labels\na.mp4,n2\nb.mp4,n2 x n3\n", "mixed.csv")
    with caplog.at_level("WARNING"):
        data.load_training_data(_data_config(train_csv=mixed))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "row 3's 'n2 x n3' is read as 3 labels" in warned[0], warned


def test_a_row_without_semicolon_whose_words_are_classes_is_warned_about(videos, caplog):
    """One ';' in the file kept `red green` whole: a class of its own beside 'red' and
    'green', the only sign a 'single training video' warning."""
    joined = _csv(videos, "path,labels\na.mp4,red;blue\nb.mp4,red green\nc.mp4,green\n",
                  "joined.csv")
    with caplog.at_level("WARNING"):
        assert data.infer_class_names(joined) == ["blue", "green", "red", "red green"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "Row 3's label 'red green'" in warned[0], warned
    assert "its words 'red', 'green' are labels of other rows" in warned[0] and "'red;green'" in warned[0]
    caplog.clear()
    # A name with spaces that is not words of other classes is what ';' keeps whole.
    kept = _csv(videos, "path,labels\na.mp4,playing guitar;juggling\nb.mp4,playing guitar\n",
                "kept.csv")
    with caplog.at_level("WARNING"):
        data.infer_class_names(kept)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_class_names_with_spaces_against_space_split_labels_say_how_to_fix(videos):
    path = _csv(videos, "path,labels\na.mp4,playing guitar\n", "phrases.csv")
    with pytest.raises(data.DatasetError) as info:
        data.read_csv_records(path, 2, ["juggling", "playing guitar"], argument="data.val_csv")
    message = str(info.value)
    assert "split at spaces; separate them with ';'" in message
    assert "row 2: 'a.mp4': unknown label 'playing'; unknown label 'guitar'" in message


def test_numbers_that_are_class_names_are_those_classes(tmp_path):
    """Class folders `0` .. `10` sort as text (`10` is class 2); a validation CSV
    labelled `10` was read as class id 10 (folder `9`) without a word."""
    for name in map(str, range(11)):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / f"v{name}.mp4").write_bytes(b"x")
    _, names = data.read_folder_records(str(tmp_path / "train"))
    assert names[:4] == ["0", "1", "10", "2"]
    path = _csv(tmp_path, "path,label\ntrain/10/v10.mp4,10\ntrain/2/v2.mp4,2\n", "val.csv")
    records, _ = data.read_csv_records(path, 11, names)
    assert [names[r.labels[0]] for r in records] == ["10", "2"]
    # Without class names a number is a class id, as before.
    assert [r.labels for r in data.read_csv_records(path, 11)[0]] == [(10,), (2,)]


def test_more_cells_than_columns_and_a_stray_quote_are_errors_naming_the_rows(videos):
    """`a.mp4,3,17,41` was read as label 3, dropping 17 and 41 without a word; a
    quote left open made csv's field-size error a traceback."""
    path = _csv(videos, "path,labels\na.mp4,3,17,41\nb.mp4,2 5\nc.mp4,1,\n")
    with pytest.raises(data.DatasetError, match=r"1 row\(s\) with more cells than the 2 columns "
                       r"of its header.*\n  row 2: 4 cells \('a.mp4,3,17,41'\)$"):
        data.read_csv_records(path, 50, argument="data.train_csv")
    headless = _csv(videos, "a.mp4,guitar, playing\n", "headless.csv")
    with pytest.raises(data.DatasetError, match="more cells than the 2 columns of path,label"):
        data.infer_class_names(headless)
    # More columns in the header: theirs (a trailing empty cell is no label either).
    wide = _csv(videos, "path,label,start\na.mp4,1,0.5\nb.mp4,2,\n", "wide.csv")
    assert [r.labels for r in data.read_csv_records(wide, 3)[0]] == [(1,), (2,)]
    short = _csv(videos, 'path,label\n"a.mp4,1\nb.mp4,2\nc.mp4,0\n', "short.csv")
    with pytest.raises(data.DatasetError, match=r"1 row\(s\) with a cell over several lines: "
                       r"a '\"' left open .*\n  row 2: a cell over several lines "
                       r"\('a.mp4,1'\.\.\.\)"):
        data.read_csv_records(short, 3)  # was "row 2: ...: no such file", rows 3-4 gone
    # A line break quoted on purpose: no "quote left open", the same refusal.
    broken = _csv(videos, 'path,label\n"a\nb.mp4",1\nc.mp4,0\n', "broken.csv")
    with pytest.raises(data.DatasetError, match=r"1 row\(s\) with a cell over several lines: "
                       r".*\n  row 2: a cell over several lines \('a'\.\.\.\)$"):
        data.read_csv_records(broken, 3)
    quote = _csv(videos, 'path,label\na.mp4,"7\n' + "b.mp4,1\n" * 20000, "quote.csv")
    with pytest.raises(data.DatasetError, match=r"quote.csv' is not a readable CSV \(line "
                       r"\d+: field larger than field limit"):
        data.read_csv_records(quote, 10, argument="data.val_csv")


def test_a_video_listed_twice_for_evaluation_is_warned_about(videos, caplog):
    path = _csv(videos, "path,label\na.mp4,1\nb.mp4,0\na.mp4,2\n")
    config = {"val_csv": path, "num_classes": 3, "class_names": None}
    records, _ = data.load_val_records(config)
    assert len(records) == 3  # each listing is evaluated, as written
    assert "1 video(s) of" in caplog.text and "listed more than once (rows 2, 4)" in caplog.text


def test_a_label_of_non_ascii_digits_is_a_name_not_a_traceback(videos):
    """'²'.isdigit() is True and int('²') a ValueError: a traceback, exit 1."""
    path = _csv(videos, "path,label\na.mp4,\u00b2\nb.mp4,1\n")
    with pytest.raises(data.DatasetError, match="(?s)mix class ids and class names.*"
                       "row 2: class name '\u00b2'"):
        data.read_csv_records(path, 2, argument="data.train_csv")


def test_labels_written_as_decimals_are_refused(videos):
    """`1.0` (a spreadsheet's or pandas' integers) became a class name, sorted as
    text ('10.0' was class 2), without a word against ids elsewhere."""
    path = _csv(videos, "path,label\na.mp4,1.0\nb.mp4,10.0\nc.mp4,2.0\n")
    with pytest.raises(data.DatasetError, match=r"numbers but not all integers \('1\.0', "
                       r"'10\.0', '2\.0'\): .*Received: data.train_csv="):
        data.infer_class_names(path, "data.train_csv")
    # Beside integers too (it said that the labels mix class ids and class names).
    path = _csv(videos, "path,label\na.mp4,1.0\nb.mp4,2\n", "beside.csv")
    with pytest.raises(data.DatasetError, match=r"numbers but not all integers \('1\.0'\): "):
        data.infer_class_names(path, "data.train_csv")
    # Words with digits are names still.
    assert data.infer_class_names(_csv(videos, "path,label\na.mp4,c092\nb.mp4,1.5x\n",
                                       "codes.csv")) == ["1.5x", "c092"]


def test_a_double_minus_is_a_name_not_a_traceback(videos):
    # `int('--1')` raised from the row check: a traceback, exit 1.
    with pytest.raises(data.DatasetError, match="mix class ids and class names"):
        data.read_csv_records(_csv(videos, "path,label\na.mp4,--1\nb.mp4,0\n"), 2)


@pytest.mark.parametrize("text, message", [
    ("", "No video listed"), ("path,label\n", "No video listed"),
    ("path,label\na.mp4\nb.mp4\n", "No row of .* has a label"),
    ("path\tlabel\na.mp4\tcat\n", "separates its columns with tabs")])
def test_a_csv_without_labels_says_so(videos, text, message):
    """Each said "the labels are class ids ... set data.num_classes", naming no file
    (and with it set, the tab-separated file had no such file on every row)."""
    path = _csv(videos, text)
    with pytest.raises(data.DatasetError, match=f"{message}.*Received: data.train_csv="):
        data.load_training_data({"train_csv": path, "val_csv": None, "num_classes": None,
                                 "class_names": None})


def test_a_single_label_set_of_one_class_is_refused(tmp_path):
    """A dataset folder given for its CSV (`ds` holding `videos/` and `train.csv`)
    trained one class with loss 0 and top-1 100%, exit 0."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    (tmp_path / "train.csv").write_text("path,label\nvideos/a.mp4,0\n")
    with pytest.raises(data.DatasetError, match=r"at least 2 classes.*one sub-folder, 'videos'"):
        data.load_training_data({"train_csv": str(tmp_path), "val_csv": None,
                                 "num_classes": None, "class_names": None})
    # Multi-label, one class is a detector of it: fine.
    (tmp_path / "multi.csv").write_text("path,labels\nvideos/a.mp4,0\n")
    config, records, _, multi = data.load_training_data(
        {"train_csv": str(tmp_path / "multi.csv"), "val_csv": None, "num_classes": 1,
         "class_names": None})
    assert multi and config["num_classes"] == 1 and len(records) == 1


def test_a_class_folder_layout_passes_over_hidden_entries_and_names_what_it_leaves(
        tmp_path, caplog):
    """`.ipynb_checkpoints` was a class, and a video one level deeper, an `.flv`
    and a video beside the class folders were left out without a word."""
    for folder in ("cat", "dog/nested", ".ipynb_checkpoints", "empty"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("cat/a.mp4", "dog/b.FLV", "dog/nested/c.mp4", ".ipynb_checkpoints/a.mp4",
                 "root.mp4", "cat/.DS_Store", "cat/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="nonlocal_keras.training.data"):
        records, names = data.read_folder_records(str(tmp_path))
    assert names == ["cat", "dog", "empty"]
    assert [(r.path[len(str(tmp_path)) + 1:], r.labels) for r in records] == [
        ("cat/a.mp4", (0,)), ("dog/b.FLV", (1,))]
    warned = caplog.text
    assert "3 entries" in warned and "cat/notes.txt" in warned and "dog/nested" in warned
    assert "root.mp4" in warned and "without a video: empty" in warned
    assert ".DS_Store" not in warned and "ipynb" not in warned
    assert data.class_names_from_config({"train_csv": str(tmp_path)}) == names


def test_class_names_written_two_ways_are_refused(videos):
    """`Juggling` and `juggling`, two spaces or a decomposed `café` were classes
    of their own, exit 0; kept apart only when data.class_names lists them."""
    for labels in (("Juggling", "juggling", "run"), ("playing guitar", "playing  guitar", "run"),
                   ("caf\u00e9", "cafe\u0301", "run")):
        rows = "".join(f"{name}.mp4,{label}\n" for name, label in zip("abc", labels))
        path = _csv(videos, "path,label\n" + rows)
        with pytest.raises(data.DatasetError, match=r"write 1 class name\(s\) in several ways "
                           r".*data.class_names.*Received: data.train_csv=") as info:
            data.infer_class_names(path, "data.train_csv")
        assert repr(labels[0]) in str(info.value) and repr(labels[1]) in str(info.value)
    config = _data_config(train_csv=path, class_names=list(labels))
    assert data.load_training_data(config)[0]["num_classes"] == 3


def test_class_folders_written_two_ways_are_refused(tmp_path):
    """`Juggling/` and `juggling/`, or a composed and a decomposed `café/`,
    trained as two classes without a word, where the same CSV labels are refused."""
    for folders in (("Juggling", "juggling", "run"), ("caf\u00e9", "cafe\u0301", "run")):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for folder in folders:
            (root / folder).mkdir(parents=True)
            (root / folder / "a.mp4").write_bytes(b"x")
        with pytest.raises(data.DatasetError, match=r"^The class folders of .* write 1 class "
                           r"name\(s\) in several ways .*Received: data.train_csv=") as info:
            data.resolve_classes(_data_config(train_csv=str(root)))
        assert repr(folders[0]) in str(info.value) and repr(folders[1]) in str(info.value)
    config = _data_config(train_csv=str(root), class_names=sorted(folders))
    assert data.load_training_data(config)[0]["num_classes"] == 3


@pytest.mark.parametrize("cells, shown", [
    # Charades' actions column, each action with its start and end.
    (('"c092 11.90 21.20;c147 0.00 12.60"', '"c098 8.60 14.20"'), "'c092 11.90 21.20'"),
    (("c092 11.90 21.20 c147 0.00 12.60", "c098 8.60 14.20"), "'0.00'"),
])
def test_labels_holding_times_or_scores_are_refused(videos, cells, shown):
    """Each action with its times, or each time, was a class of its own, exit 0
    (`1.0` alone was refused; beside words it was a class name)."""
    path = _csv(videos, "path,labels\n" + "".join(
        f"{name}.mp4,{cell}\n" for name, cell in zip("ab", cells)))
    with pytest.raises(data.DatasetError, match=r"hold numbers with a fraction \(.*"
                       r"Received: data.train_csv=") as info:
        data.infer_class_names(path, "data.train_csv")
    assert shown in str(info.value)
    names = _csv(videos, 'path,labels\na.mp4,"playing guitar;c092"\nb.mp4,v2 run\n', "names.csv")
    assert data.infer_class_names(names) == ["c092", "playing guitar", "v2 run"]


def test_a_row_too_long_to_read_is_shown_by_its_start(videos):
    """A JSON file of 100,000 entries on one line, given as the CSV, printed
    18 MB to the terminal: its one row, whole. (Whole JSON is now named as
    such; one cut short is read as CSV.)"""
    entries = ",".join(f'{{"id": "{i}", "label": "Holding something"}}' for i in range(3000))
    with pytest.raises(data.DatasetError, match=r"more cells than the 2 columns") as info:
        data.read_csv_records(_csv(videos, f"[{entries}\n", "train.json"), 3)
    assert len(str(info.value)) < 1000


def test_other_datasets_index_files_say_what_to_write(videos):
    """Each stopped, but as "more cells than the 2 columns" (listing the header as
    row 1 and JSON as one huge row) or "no row has a label": nothing said the
    file was another dataset's own index, nor what to write instead."""
    kinetics = _csv(videos, "label,youtube_id,time_start,time_end,split\n"
                    "abseiling,--33Lscn6sk,4,14,train\n", "kinetics.csv")
    charades = _csv(videos, "id,subject,scene,quality,relevance,verified,script,objects,"
                    "descriptions,actions,length\n46GP8,HR43,Kitchen,6,7,Yes,x,food,x,"
                    "c092 11.90 21.20;c147 0.00 12.60,24.83\n", "charades.csv")
    ssv2 = _csv(videos, '[{"id": "78687", "label": "holding potato next to vicks",'
                ' "template": "Holding [something] next to [something]",'
                ' "placeholders": ["potato", "vicks"]}]', "ssv2.json")
    ucf = _csv(videos, "a.mp4 1\nb.mp4 2\n", "trainlist01.txt")
    ucf_header = _csv(videos, "path label\na.mp4 1\n", "spaced.csv")
    kinetics_test = _csv(videos, "youtube_id,time_start,time_end,split\n"
                         "--33Lscn6sk,4,14,test\n", "kinetics_test.csv")
    for path, said in [(kinetics, r"Kinetics' official index, which names YouTube clips"),
                       (kinetics_test, r"Kinetics' official index"),
                       (charades, r"Charades' official index: .*'path,labels'"),
                       (ssv2, r"is JSON, not CSV: .*Something-Something: the file <id>.webm"),
                       (ucf, r"separates its columns with spaces, as UCF101's .* from 1"),
                       (ucf_header, "separates its columns with spaces")]:
        for read in (data.infer_class_names, lambda p, a: data.read_csv_records(p, 3, None, a)):
            with pytest.raises(data.DatasetError, match=said + ".*Received: data.train_csv="):
                read(path, "data.train_csv")
    # UCF101's test lists hold paths only: its folder per class is the way in.
    with pytest.raises(data.DatasetError, match="has a label .*a folder per class"):
        data.infer_class_names(_csv(videos, "a.mp4\nb.mp4\n", "testlist01.txt"))
    # One column of names with spaces of their own is still a missing label.
    for text in ("my clip.mp4\nyour clip.mp4\n", "clip.mp4 3.mp4\n"):
        with pytest.raises(data.DatasetError, match="has a label"):
            data.infer_class_names(_csv(videos, text, "names.csv"))


def test_class_ids_without_a_training_video_are_warned_about(videos, caplog):
    """UCF101's ids from 1 with num_classes one more trained an empty class 0 and
    every video as its id, exit 0, with an INFO line only."""
    path = _csv(videos, "path,label\na.mp4,1\nb.mp4,2\nc.mp4,3\n")
    with caplog.at_level("WARNING"):
        data.load_training_data(_data_config(train_csv=path, num_classes=4))
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("1 class id(s) without a training video (never learnt): 0; "
                              "class ids start at 0"), warning
    caplog.clear()
    path = _csv(videos, "path,label\na.mp4,0\nb.mp4,2\nc.mp4,0\n", "gap.csv")
    with caplog.at_level("WARNING"):
        data.load_training_data(_data_config(train_csv=path, num_classes=3))
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "1 class id(s) without a training video (never learnt): 1"]


def test_excels_separator_line_is_no_video(videos):
    """Excel's `sep=,` first line was 'row 1: 'sep=': no such file' and the
    header below it 'row 2: 'path': no such file'."""
    path = videos / "excel.csv"
    path.write_bytes("\ufeffsep=,\r\npath,label\r\na.mp4,run\r\nb.mp4,jump\r\n".encode())
    assert data.infer_class_names(str(path)) == ["jump", "run"]
    records, _ = data.read_csv_records(str(path), 2, ["jump", "run"])
    assert [(os.path.basename(r.path), r.labels) for r in records] == [("a.mp4", (1,)),
                                                                         ("b.mp4", (0,))]


def test_a_pipe_as_the_data_is_refused_as_such(videos):
    """A FIFO or `<(cat train.csv)` reads once: its second reading was empty, and
    the run said its labels were class ids, or 'CSV file not found'."""
    from nonlocal_keras.training.errors import MissingFileError

    pipe = str(videos / "pipe.csv")
    os.mkfifo(pipe)
    message = r"'.*pipe.csv' is neither a file nor a folder \(a pipe .*Received: data.{}_csv="
    with pytest.raises(MissingFileError, match=message.format("train")):
        data.load_training_data(_data_config(train_csv=pipe))
    with pytest.raises(MissingFileError, match=message.format("val")):
        data.read_csv_records(pipe, 3, argument="data.val_csv")


@pytest.mark.parametrize("cell", ["0 3", "juggling;run", "run; jump"])
def test_several_labels_in_a_single_label_cell_are_refused(videos, cell):
    """They were one class named by the whole cell ('0 3'), exit 0."""
    for header in ("path,label\n", ""):
        path = _csv(videos, f"{header}a.mp4,{cell}\nb.mp4,1\n")
        with pytest.raises(data.DatasetError, match=rf"(?s)several labels in a single-label file.*"
                           rf"row {2 if header else 1}: {cell!r}"):
            data.read_csv_records(path, 5, class_names=None, argument="data.train_csv")
    assert [r.labels for r in data.read_csv_records(
        _csv(videos, "path,label\na.mp4,playing guitar\n"), 1, ["playing guitar"])[0]] == [(0,)]
    # Class names that have it so are no several labels.
    given = data.read_csv_records(_csv(videos, f"path,label\na.mp4,{cell}\nb.mp4,x\n"), 2,
                                  [cell, "x"])[0]
    assert [r.labels for r in given] == [(0,), (1,)]


def test_a_validation_folder_of_a_run_of_class_ids_is_read_by_id(tmp_path):
    """Its folders `5/` and `7/` were classes 0 and 1 (their places), top-1 0%."""
    for name in ("5/a.mp4", "7/b.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    records, _ = data.load_records(str(tmp_path), 10, None, "data.val_csv")
    assert sorted((r.path.split("/")[-2], r.labels) for r in records) == [
        ("5", (5,)), ("7", (7,))]
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "c.mp4").write_bytes(b"x")
    with pytest.raises(data.DatasetError, match=r"class ids, so a folder per class must name "
                       r"its class by id \(0 \.\. 9\): .* has 'cat'"):
        data.load_records(str(tmp_path), 10, None, "data.val_csv")


def test_training_videos_of_one_class_or_one_video_of_two_classes_are_refused(videos):
    """Other classes without a video (an empty class folder, data.class_names)
    trained a one-class softmax, exit 0; `./a.mp4,1` beside `a.mp4,0` gave
    one video two classes without a word."""
    path = _csv(videos, "path,label\na.mp4,cat\nb.mp4,cat\n")
    with pytest.raises(data.DatasetError, match=r"every training video is of class 'cat' "
                       r"\(the other 1 have none\)"):
        data.load_training_data(_data_config(train_csv=path, class_names=["cat", "dog"]))
    path = _csv(videos, "path,label\na.mp4,0\n./a.mp4,1\nb.mp4,1\n")
    with pytest.raises(data.DatasetError, match=r"1 training video\(s\) listed with different "
                       r"classes .*a.mp4', classes \[0, 1\]"):
        data.load_training_data(_data_config(train_csv=path, num_classes=2))


def test_a_class_folder_linked_to_another_is_one_video_two_classes(tmp_path):
    """`dog -> cat` (a symbolic link) trained every cat video as a dog too."""
    (tmp_path / "cat").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "cat" / name).write_bytes(b"x")
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / "c.mp4").write_bytes(b"x")
    config = _data_config(train_csv=str(tmp_path))
    assert len(data.load_training_data(config)[1]) == 3
    (tmp_path / "dog").symlink_to(tmp_path / "cat")
    with pytest.raises(data.DatasetError, match=(
            r"2 training video\(s\) listed with different classes .*first: '.*cat/a.mp4' and "
            r"'.*dog/a.mp4', the same file, classes \[1, 2\]")):
        data.load_training_data(config)
    # A video of a CSV linked under another name, with another class.
    (tmp_path / "dog").unlink()
    (tmp_path / "bird" / "d.mp4").symlink_to(tmp_path / "cat" / "b.mp4")
    with pytest.raises(data.DatasetError, match=r"1 training video\(s\) listed with different"):
        data.load_training_data(config)
    # A hard link (found by a walk: it trained as both classes, exit 0).
    (tmp_path / "bird" / "d.mp4").unlink()
    os.link(tmp_path / "cat" / "b.mp4", tmp_path / "bird" / "d.mp4")
    with pytest.raises(data.DatasetError, match=r"1 training video\(s\) listed with different "
                       r"classes .*first: '.*bird/d.mp4' and '.*cat/b.mp4', the same file"):
        data.load_training_data(config)


def test_one_video_however_its_path_is_written_is_one_video(videos, caplog):
    path = _csv(videos, "path,label\na.mp4,1\n./a.mp4,1\nb.mp4,0\n.//c.mp4,2\n")
    records, _ = data.load_val_records({"val_csv": path, "num_classes": 3, "class_names": None})
    assert records[0].path == records[1].path == str(videos / "a.mp4")
    assert records[3].path == str(videos / "c.mp4")
    assert "listed more than once (rows 2, 3)" in caplog.text
    # `..` after a symbolic link is the link target's parent, as the file system has it.
    (videos / "real" / "lists").mkdir(parents=True)
    (videos / "real" / "clips").mkdir()
    (videos / "real" / "clips" / "d.mp4").write_bytes(b"x")
    (videos / "lists").symlink_to(videos / "real" / "lists")
    linked = _csv(videos / "lists", "path,label\n../clips/d.mp4,0\n")
    records, _ = data.read_csv_records(linked, 3)
    assert os.path.realpath(records[0].path) == str(videos / "real" / "clips" / "d.mp4")


def test_multi_label_training_videos_of_no_class_are_warned_about(videos, caplog):
    """Found by a walk: empty `labels` cells trained as videos of no class
    without a word (Charades-style data may mean it; a label left out too)."""
    path = _csv(videos, "path,labels\na.mp4,0 1\nb.mp4,\nc.mp4,2\n", "some.csv")
    with caplog.at_level("WARNING"):
        _, records, _, multi = data.load_training_data(_data_config(train_csv=path,
                                                                    num_classes=3))
    assert multi and [list(r.labels) for r in records] == [[0, 1], [], [2]]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"1 training video(s) of {path!r} have no label (rows 3): each trains "
                      "every class as absent."], warned


def test_multi_label_evaluation_videos_of_no_class_are_warned_about(videos, caplog):
    """Found by a walk: a `;` alone (or an empty cell) in a validation `labels`
    cell was a video of no class without a word; training warned."""
    path = _csv(videos, "path,labels\na.mp4,0;1\nb.mp4,;\nc.mp4,2\n", "val.csv")
    with caplog.at_level("WARNING"):
        records, multi = data.load_val_records({"val_csv": path, "num_classes": 3,
                                                "class_names": None})
    assert multi and [list(r.labels) for r in records] == [[0, 1], [], [2]]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"1 evaluation video(s) of {path!r} have no label (rows 3): each is "
                      "scored as absent from every class."], warned


def test_a_multi_label_evaluation_set_without_a_label_is_refused(videos):
    """Its mAP was NaN: a traceback writing results.json, exit 1."""
    path = _csv(videos, "path,labels\na.mp4,\nb.mp4,\n")
    with pytest.raises(data.DatasetError, match=r"No video of .* has a label: its mAP is not a "
                       r"number. Received: data.val_csv="):
        data.load_val_records({"val_csv": path, "num_classes": 3, "class_names": None})


@pytest.mark.parametrize("header", ["video,class", "file,label", "filename,labels",
                                    "label,path", "Class,Video"])
def test_a_header_of_other_words_is_named_as_such(videos, header):
    """`video,class` was a row: a video named `video` of the class `class`, and the
    error said the labels mix class ids and class names; `label,path` (the columns
    swapped) said `data.num_classes` and 41 class names disagree."""
    path = _csv(videos, f"{header}\na.mp4,0\n")
    with pytest.raises(data.DatasetError, match=rf"The first row .*\({header!r}\) reads as a "
                       r"header: the header must be 'path,label' or 'path,labels'"):
        data.read_csv_records(path, 2, argument="data.train_csv")


def test_a_quoted_comma_in_a_label_is_refused_unless_a_class_name_has_it(videos):
    """`"red,blue"` became the class 'red,blue', exit 0 (single- and multi-label)."""
    rows = 'a.mp4,"red,blue"\nb.mp4,red\nc.mp4,blue\n'
    single = _csv(videos, "path,label\n" + rows, "single.csv")
    with pytest.raises(data.DatasetError, match=r"(?s)1 row\(s\) with several labels in a single-"
                       r"label file.*row 2: 'red,blue'"):
        data.load_training_data(_data_config(train_csv=single))
    multi = _csv(videos, "path,labels\n" + rows.replace("b.mp4,red", "b.mp4,red;blue"),
                 "multi.csv")
    with pytest.raises(data.DatasetError, match=r"(?s)1 label\(s\) with a comma \(several labels "
                       r"are separated by ';' or spaces\).*row 2: 'red,blue'"):
        data.load_training_data(_data_config(train_csv=multi))
    given = data.load_training_data(_data_config(train_csv=single,
                                                 class_names=["blue", "red", "red,blue"]))
    assert [r.labels for r in given[1]] == [(2,), (1,), (0,)]


def test_a_given_class_without_a_training_video_is_warned_about(videos, caplog):
    """A class-name file's `# comment` line became a class, without a word."""
    train = _csv(videos, "path,label\na.mp4,red\nb.mp4,blue\n", "train.csv")
    names = videos / "names.txt"
    names.write_text("red\nblue\n# colours\n")
    with caplog.at_level("WARNING"):
        resolved, _, _, _ = data.load_training_data(_data_config(train_csv=train,
                                                                 class_names=str(names)))
    assert resolved["num_classes"] == 3
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["1 class(es) of data.class_names without a training video (never learnt; "
                      "a line that is no class?): '# colours'"], warned
    caplog.clear()
    names.write_text("red\nblue\n")
    with caplog.at_level("WARNING"):
        data.load_training_data(_data_config(train_csv=train, class_names=str(names)))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_an_unknown_label_of_known_words_says_how_to_separate_them(videos):
    """A ';' file's `red green` was "unknown label 'red green'" alone."""
    val = _csv(videos, "path,labels\na.mp4,red;blue\nb.mp4,red green\n", "val.csv")
    with pytest.raises(data.DatasetError, match=r"row 3: 'b.mp4': unknown label 'red green' "
                       r"\(several labels\? write them as 'red;green'\)"):
        data.read_csv_records(val, 3, ["blue", "green", "red"], argument="data.val_csv")


def test_no_names_and_no_training_csv_says_so(videos):
    """It said "The labels of None are class ids" (evaluating a config without
    a training CSV), or of a training CSV that is gone."""
    from nonlocal_keras.training.errors import ConfigError

    for train in (None, str(videos / "gone.csv")):
        with pytest.raises(ConfigError, match=rf"^No class names are given and no training CSV is "
                           rf"there to read them from \(data.train_csv={re.escape(repr(train))}\)"):
            data.resolve_classes(_data_config(train_csv=train))
    ids = _csv(videos, "path,label\na.mp4,1\n", "ids.csv")
    with pytest.raises(ConfigError, match=f"^The labels of {re.escape(repr(ids))} are class ids"):
        data.resolve_classes(_data_config(train_csv=ids))


def test_the_ids_beside_names_warning_speaks_of_fine_tuning_only_there(caplog):
    from nonlocal_keras.training import models

    theirs = {"class_names": ["jump", "run"], "num_classes": 2}
    for fine_tune in (True, False):
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert not models._other_classes("w.weights.h5", theirs, {"class_names": None,
                                                                      "num_classes": 2}, fine_tune)
        assert "0 = 'jump', 1 = 'run'" in caplog.text
        assert ("leave the classifier new" in caplog.text) == fine_tune


def test_a_missing_or_unknown_row_says_where_it_looked_and_what_it_knows(videos, monkeypatch):
    """"no such file" never showed where a relative path was looked for, nor
    "unknown label" the classes; a known class written another way was only
    "unknown"; `~/` in a row was a folder named '~' beside the CSV."""
    monkeypatch.setenv("HOME", str(videos))
    text = "path,label\n~/a.mp4,run\nclips/b.mp4,run\nb.mp4,Run\nc.mp4,cafe\u0301\n"
    with pytest.raises(data.DatasetError) as info:
        data.read_csv_records(_csv(videos, text, "index.csv"), 2, ["café", "run"])
    message = str(info.value)
    assert f"a relative path is read from the CSV's folder, {str(videos)!r}" in message
    assert "row 3: 'clips/b.mp4': no such file" in message
    assert ("row 4: 'b.mp4': unknown label 'Run' (the class 'run' differs from it only in "
            "case, spaces or Unicode form)") in message
    # Printed alike, so shown by their code points.
    assert ("row 5: 'c.mp4': unknown label 'cafe\u0301' (the class 'caf\\xe9' is the same text in "
            "another Unicode form, 'cafe\\u0301')") in message
    assert "the 2 classes: 0 = 'café', 1 = 'run'" in message
    assert "row 2" not in message  # ~/a.mp4 is the video in HOME
    # A folder '~' beside the CSV is read first, as it was; a missing one shows HOME's.
    (videos / "~").mkdir()
    (videos / "~" / "d.mp4").write_bytes(b"x")
    records, _ = data.read_csv_records(_csv(videos, "path,label\n~/d.mp4,0\n"), 2)
    assert records[0].path == str(videos / "~" / "d.mp4")
    with pytest.raises(data.DatasetError, match=r"row 2: '~/e.mp4': no such file \('"
                       + re.escape(str(videos / "e.mp4")) + r"'\)"):
        data.read_csv_records(_csv(videos, "path,label\n~/e.mp4,0\n"), 2)
    with pytest.raises(data.DatasetError) as info:
        data.read_csv_records(_csv(videos, "path,label\na.mp4,run\n/gone.mp4,jump\n"), 2)
    message = str(info.value)
    assert "without class names, a label is a class id in [0, 2)" in message
    assert "relative path" not in message  # the missing one was absolute


@pytest.mark.parametrize("text, names", [
    ("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n", ["ApplyEyeMakeup", "ApplyLipstick",
                                                       "Archery"]),
    ("1,b c\n0,a\n", ["a", "b c"]),
    ('{"Approaching something": "1", "Attaching something": "0"}',
     ["Attaching something", "Approaching something"]),
    ('{"0": "abseiling", "1": "air drumming"}', ["abseiling", "air drumming"]),
    ('[" run", "jump"]', ["run", "jump"]),
    # Names starting with numbers of their own, not numbered 0, 1, ...: whole.
    ("10 push-ups\n20 sit-ups\n", ["10 push-ups", "20 sit-ups"]),
    ("run\njump\n", ["run", "jump"]),
    ("[background]\nrun\n", ["[background]", "run"]),  # not JSON
    ('id,name\n0,"abseiling, rope"\n1,run\n', ["abseiling, rope", "run"]),
    # Numbers that would leave two names alike, or a class out: lines whole.
    ("1 person\n2 people\n3 people\n", ["1 person", "2 people", "3 people"]),
    ("1 zero\n2 one\n2 two\n", ["1 zero", "2 one", "2 two"]),
    ("playing guitar\n1 x\n", ["playing guitar", "1 x"])])
def test_class_name_files_of_other_datasets_are_read_in_id_order(tmp_path, text, names, caplog):
    """UCF101's classInd.txt gave the names '1 ApplyEyeMakeup', ..., so every class
    folder and name label was unknown; Something-Something's labels.json was
    read a line a name."""
    path = tmp_path / "classes.txt"
    path.write_text(text)
    assert data.class_names_from_config({"class_names": str(path)}) == names
    # Lines mostly numbered but read whole are warned about.
    warned = [r for r in caplog.records if "are not read as numbered class names" in r.message]
    assert bool(warned) == (names[0][:1] in "123" and not text.startswith("playing")), warned


@pytest.mark.parametrize("text", ["", "\n\n", "[]", "{}"])
def test_a_class_name_file_of_no_name_is_refused(tmp_path, text):
    """An empty file was the classes [] (with numbered files, an IndexError)."""
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(data.DatasetError, match="names no class. Received: data.class_names="):
        data.class_names_from_config({"class_names": str(path)})


def test_a_class_folder_written_otherwise_is_named_with_the_classes(tmp_path):
    for name in ("Zero", "one"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.mp4").write_bytes(b"x")
    with pytest.raises(data.DatasetError) as info:
        data.read_folder_records(str(tmp_path), ["zero", "one"], "data.val_csv")
    message = str(info.value)
    assert ("1 unknown class folder(s) (the 2 classes: 0 = 'zero', 1 = 'one')" in message
            and "folder 'Zero': unknown label (the class 'zero' differs from it only in case"
            in message), message


@pytest.mark.parametrize("name, shown", [(b"to\np", r"'to\\np'"), (b"to\rp", r"'to\\rp'"),
                                         (b"t\xf6p", r"'t\\udcf6p'")],
                         ids=["line break", "carriage return", "not UTF-8"])
def test_a_class_folder_name_that_is_not_one_line_of_utf8_is_refused(tmp_path, name, shown):
    """Class names are written one a line as UTF-8 (the export, the predictions):
    such a folder trained, then the export refused it (a line break) or was a
    traceback (a Windows zip's Latin-1 name; found by a walk)."""
    for folder in (os.fsencode(tmp_path / "left"), os.fsencode(tmp_path) + b"/" + name):
        os.mkdir(folder)
        with open(folder + b"/a.mp4", "wb") as handle:
            handle.write(b"x")
    with pytest.raises(data.DatasetError, match=rf"The class name {shown} is not one line of "
                       r"UTF-8 text.*rename it\. Received: data\.train_csv="):
        data.class_names_from_config({"train_csv": str(tmp_path)})
    with pytest.raises(data.DatasetError, match=r"The class name 'a\\nb' .*Received: "
                       r"data\.class_names=\['a\\nb', 'c'\]"):
        data.class_names_from_config({"class_names": ["a\nb", "c"]})
    # From a CSV's labels and a JSON class-name file too (a re-walk: they trained).
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nleft/a.mp4,a\u2028b\nleft/a.mp4,c\n", encoding="utf-8")
    with pytest.raises(data.DatasetError, match=r"The class name 'a\\u2028b' .*Received: "
                       r"data\.train_csv="):
        data.class_names_from_config({"train_csv": str(labels)})
    listed = tmp_path / "names.json"
    listed.write_text('["a\\u0085b", "c"]')
    with pytest.raises(data.DatasetError, match=r"The class name 'a\\x85b' .*Received: "
                       r"data\.class_names="):
        data.class_names_from_config({"class_names": str(listed)})


@pytest.mark.parametrize("text", ['{"run": "0", "jump": "2"}', '{"run": [0]}', "[1, 2]"])
def test_a_json_class_name_file_of_another_shape_is_refused(tmp_path, text):
    path = tmp_path / "classes.json"
    path.write_text(text)
    with pytest.raises(data.DatasetError, match="is JSON but not a list of class names.*"
                       "Received: data.class_names="):
        data.class_names_from_config({"class_names": str(path)})


def test_a_multi_label_training_video_listed_with_different_labels_is_refused(videos):
    """A row an action (`a.mp4,0` then `a.mp4,2`, as per-action lists are written)
    trained each listing's classes as absent in the other, exit 0 without a word;
    a single-label set already refused it."""
    path = _csv(videos, "path,labels\na.mp4,0\nb.mp4,1\n./a.mp4,2\n", "actions.csv")
    with pytest.raises(data.DatasetError, match=r"1 training video\(s\) listed more than once "
                       r"with different labels \(first: '.*a.mp4', labels \(0,\) and \(2,\)\)"
                       ".*all its labels in one cell. Received: data.train_csv="):
        data.load_training_data(_data_config(train_csv=path, num_classes=3))
    # The same labels again is oversampling.
    again = _csv(videos, "path,labels\na.mp4,0 2\nb.mp4,1\na.mp4,2 0\n", "again.csv")
    _, records, _, _ = data.load_training_data(_data_config(train_csv=again, num_classes=3))
    assert len(records) == 3


def test_a_folder_as_the_class_name_file_is_named_a_folder(tmp_path):
    """It said "Class-name file not found" of a folder that is there."""
    with pytest.raises(FileNotFoundError, match="is a folder, not a class-name file. Received: "
                       "data.class_names="):
        data.class_names_from_config({"class_names": str(tmp_path)})
