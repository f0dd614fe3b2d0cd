"""Video datasets: CSV / folder indexes, checked up front, decoded in `tf.data`.

A dataset is described by

- a CSV with a `path,label` header (single-label, Kinetics style; the label is
  a class id or a class name) or `path,labels` (multi-label, Charades style:
  ids or names separated by spaces, or by `;` wherever the file uses one,
  possibly none). Relative paths are resolved
  against the CSV's folder; or
- a folder with one sub-folder of videos per class (classes sorted by name).

Every row is checked before training starts (`DatasetError` lists the rows
that point nowhere, have an unknown label or a class id >= `num_classes`).
Only paths and labels are held in memory: `tf.data` decodes videos with PyAV
in parallel, augments them with `preprocessing` and prefetches batches. A file
that cannot be decoded mid-epoch is skipped, logged once by name and counted;
`SkippedVideoSummary` reports the count at the end of each epoch.
"""

import csv
import io
import json
import logging
import os
import re
import threading
import unicodedata
from collections import namedtuple

import numpy as np
import tensorflow as tf
import keras

from nonlocal_keras.applications import MEAN, STD
from nonlocal_keras.training import preprocessing, runtime, video_io
from nonlocal_keras.training.errors import ConfigError, DatasetError, MissingFileError
from nonlocal_keras.utils import is_decimal

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv", ".ts", ".mts", ".m2ts")
_MAX_LISTED_ROWS = 20
# The pipeline's functions are graph code (no Python control flow on tensors):
# AutoGraph's conversion of them (27 functions) was about 1.8 s of every
# command's start on 2 cores, for the same clips.
_graph_code = tf.autograph.experimental.do_not_convert

VideoRecord = namedtuple("VideoRecord", ["path", "labels", "row"])
VideoRecord.__doc__ = "One video: absolute `path`, tuple of class ids `labels`, source `row`."


def _raise_for_problems(problems, source, argument, summary=None):
    if not problems:
        return
    listed = "\n".join(f"  {p}" for p in problems[:_MAX_LISTED_ROWS])
    more = len(problems) - _MAX_LISTED_ROWS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    summary = summary or f"{len(problems)} invalid row(s)"
    raise DatasetError(
        f"{summary} in {source!r} ({argument}); fix or remove them:\n{listed}{tail}"
    )


def _check_source(path, argument):
    """A MissingFileError unless `path` is a file or a folder: a pipe or a
    process substitution (`<(...)`) reads once, and its second reading (the
    class names, then the rows) was empty."""
    if not os.path.exists(path):
        raise MissingFileError(f"CSV file not found. Received: {argument}={path!r}")
    if not (os.path.isfile(path) or os.path.isdir(path)):
        raise MissingFileError(
            f"{path!r} is neither a file nor a folder (a pipe or a process substitution can be "
            "read only once; the data are read more than once): give a CSV file or a folder "
            f"per class. Received: {argument}={path!r}")


def _read_text(csv_path, argument):
    """The CSV's text. A UTF-8 BOM (Excel's "CSV UTF-8") is dropped; other
    encodings are an error naming the file rather than a garbled label."""
    with open(csv_path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{csv_path!r} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start}); save it as UTF-8 CSV. Received: {argument}={csv_path!r}") from None


def _read_rows(csv_path, argument="csv_path"):
    text = _read_text(csv_path, argument)
    _refuse_json(text, csv_path, argument)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(n, row) for n, row in enumerate(reader, start=1)
                if row and any(cell.strip() for cell in row)]
    except csv.Error as error:  # a stray quote runs on to the field size limit
        raise DatasetError(f"{csv_path!r} is not a readable CSV (line {reader.line_num}: "
                           f"{error}); look for an unmatched '\"'. "
                           f"Received: {argument}={csv_path!r}") from None
    if rows and [cell.strip().lower() for cell in rows[0][1]] == ["sep=", ""]:
        rows = rows[1:]  # Excel's first line naming the separator: no video
    header = None
    if rows and rows[0][1][0].strip().lower() in ("path", "path;label", "path;labels",
                                                  "path\tlabel", "path\tlabels"):
        header = [cell.strip().lower() for cell in rows[0][1]]
        rows = rows[1:]
    elif rows and len(rows[0][1]) > 1 and _looks_like_a_header(rows[0][1]):
        # `video,class` was read as a video named `video` of the class `class`.
        raise DatasetError(f"The first row of {csv_path!r} ({_shortened(','.join(rows[0][1]))!r})"
                           f" reads as {_header_of(rows[0][1])}. "
                           f"Received: {argument}={csv_path!r}")
    for mark, name in ((";", "';'"), ("\t", "tabs")):
        if (header and mark in header[0]) or (rows and all(len(r) == 1 and mark in r[0]
                                                           for _, r in rows)):
            raise DatasetError(f"{csv_path!r} separates its columns with {name}; write "
                               f"'path,label' with commas. Received: {argument}={csv_path!r}")
    if _split_at_spaces(header, rows):
        # UCF101's and HMDB51's split lists: `ApplyEyeMakeup/v_..._c01.avi 1`. Read
        # as one cell, every row was "no label" or "no such file".
        raise DatasetError(
            f"{csv_path!r} separates its columns with spaces, as UCF101's and HMDB51's split "
            "lists do; write 'path,label' with commas (UCF101's class ids count from 1: "
            "subtract 1, or label by class name; HMDB51's number is the split, not the "
            f"class). Received: {argument}={csv_path!r}")
    # A quote left open runs its cell over the next lines: their rows vanish into
    # it. A line break quoted on purpose reads the same; no path or label holds one.
    open_quotes = [f"row {n}: a cell over several lines ({_shortened(cell.splitlines()[0])!r}...)"
                   for n, row in rows for cell in row if "\n" in cell]
    _raise_for_problems(open_quotes, csv_path, argument, summary=(
        f"{len(open_quotes)} row(s) with a cell over several lines: a '\"' left open runs "
        "its cell over the rows below it, and a path or label holds no line break"))
    # `a.mp4,3,17,41`: the labels 17 and 41 would be dropped without a word.
    columns = len(header) if header else 2
    extra = [f"row {n}: {len(row)} cells ({_shortened(','.join(row))!r})" for n, row in rows
             if any(cell.strip() for cell in row[columns:])]
    _raise_for_problems(extra, csv_path, argument, summary=(
        f"{len(extra)} row(s) with more cells than the {columns} columns of "
        f"{'its header' if header else 'path,label'} (several labels go in one cell, separated "
        "by spaces or ';'; a name with a comma in double quotes)"))
    return header, rows


def first_few(values, count, separator=", ", show=str):
    """The first `count` of `values` as `show` writes them, joined, and '...'
    after them where there are more."""
    more = f"{separator}..." if len(values) > count else ""
    return separator.join(map(show, values[:count])) + more


def _shortened(text, limit=120):
    """`text`, or its start and '...' (a row of a JSON file on one line is megabytes)."""
    return text if len(text) <= limit else text[:limit] + "..."


LABEL_WORDS = ("label", "labels", "class", "classes", "category", "target", "action",
               "actions", "y")
PATH_WORDS = ("path", "video", "videos", "file", "filename", "file_name", "video_path", "clip",
              "id", "youtube_id")


def _looks_like_a_header(row):
    cells = [cell.strip().lower() for cell in row]
    first, second = cells[:2]
    if any(cell.endswith(VIDEO_EXTENSIONS) for cell in cells):
        return False
    # `label,path` too: its rows are then the labels first, which no row check names.
    # A longer row with a label's word anywhere is another dataset's index
    # (Charades' `id,subject,...,actions,length`); it fails as too many cells.
    return (second in LABEL_WORDS or (first in LABEL_WORDS and second in PATH_WORDS)
            or len(cells) > 2 and any(cell in LABEL_WORDS for cell in cells)
            or "youtube_id" in cells)  # Kinetics' test index has no label


def _header_of(row):
    """What a header other than ours is, and what to write instead."""
    cells = {cell.strip().lower() for cell in row}
    if "youtube_id" in cells:
        return ("the header of Kinetics' official index, which names YouTube clips, not "
                "files: list the downloaded clips as 'path,label' rows (each file and its "
                "class name)")
    if {"id", "actions"} <= cells:
        return ("the header of Charades' official index: list the videos as 'path,labels' "
                "rows (each file, '<id>.mp4', and its action ids without their times, "
                "'c092;c147')")
    return ("a header: the header must be 'path,label' or 'path,labels' (the video first; "
            "one video a row)")


def _split_at_spaces(header, rows):
    """Whether every row is one cell `<video> <label>` (or the header `path label`)."""
    if header or not rows or any(len(row) != 1 for _, row in rows):
        return False
    cells = [row[0].strip() for _, row in rows]
    if cells[0].lower().split() in (["path", "label"], ["path", "labels"]):
        cells = cells[1:]
    return bool(cells) and all(
        len(parts) == 2 and parts[0].lower().endswith(VIDEO_EXTENSIONS)
        and not parts[1].lower().endswith(VIDEO_EXTENSIONS)
        for parts in (cell.rsplit(None, 1) for cell in cells))


def _json_list_or_mapping(text):
    """The JSON list or mapping `text` holds, else None (a CSV, or a list of
    names, whose first path or name starts with a bracket: `[background]`)."""
    if text.lstrip()[:1] not in ("[", "{"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _refuse_json(text, csv_path, argument):
    # Something-Something's index is a JSON list; its rows were "more cells than 2".
    index = _json_list_or_mapping(text)
    if index is None:
        return
    ssv2 = isinstance(index, list) and index and isinstance(index[0], dict) and (
        "template" in index[0])
    raise DatasetError(
        f"{csv_path!r} is JSON, not CSV: list the videos as 'path,label' rows"
        f"{' (Something-Something: the file <id>.webm and its template)' if ssv2 else ''}. "
        f"Received: {argument}={csv_path!r}")


def _label_separator(rows, multi_label):
    """None (the whole cell is one label), ';' or whitespace (`str.split()`'s
    default): a multi-label file that uses ';' anywhere keeps names with spaces
    whole ("playing guitar;juggling")."""
    if not multi_label:
        return None
    return ";" if any(len(row) > 1 and ";" in row[1] for _, row in rows) else " "


def _label_tokens(cell, separator):
    if separator is None:
        return [cell.strip()] if cell.strip() else []
    if separator == ";":
        return [t.strip() for t in cell.split(";") if t.strip()]
    return cell.split()


def _is_int(token):
    return is_decimal(token[1:] if token.startswith("-") else token)


def _is_number(token):
    """A number however written (`1.0`, `2e3`), not a word such as `nan`."""
    try:
        float(token)
    except ValueError:
        return False
    return any(c.isdigit() for c in token)


def _checked_tokens(header, rows, csv_path, argument, class_names=()):
    """`(multi_label, separator, {row: label tokens})`, once the labels are known
    to be all class ids or all class names (a mix maps `12` and `walking` to
    unrelated ids)."""
    multi_label = bool(header and len(header) > 1 and header[1] == "labels")
    separator = _label_separator(rows, multi_label)
    tokens = {n: _label_tokens(row[1], separator) if len(row) > 1 else [] for n, row in rows}
    if not multi_label:
        # `0 3`, `juggling;dancing` or a quoted `"red,blue"` in a `label` column
        # would be a class of its own, unless the given class names have it so.
        several = [f"row {n}: {ts[0]!r}" for n, ts in tokens.items()
                   if ts and ts[0] not in class_names and (
                       ";" in ts[0] or "," in ts[0] or len(ts[0].split()) > 1
                       and all(_is_int(t) for t in ts[0].split()))]
        _raise_for_problems(several, csv_path, argument, summary=(
            f"{len(several)} row(s) with several labels in a single-label file (one label a "
            "row; for several, the header 'path,labels')"))
    else:
        commas = [f"row {n}: {t!r}" for n, ts in tokens.items() for t in ts
                  if "," in t and t not in class_names]
        _raise_for_problems(commas, csv_path, argument, summary=(
            f"{len(commas)} label(s) with a comma (several labels are separated by ';' or "
            "spaces)"))
    ids = [(n, t) for n, ts in tokens.items() for t in ts if _is_int(t)]
    names = [(n, t) for n, ts in tokens.items() for t in ts if not _is_int(t)]
    if ids and names and all(_is_number(t) for _, t in names):
        _refuse_numbers_not_integers({t for _, t in names}, csv_path, argument)  # `1.0` beside `2`
    if ids and names:
        listed = ([f"row {n}: class id {t!r}" for n, t in ids[:5]]
                  + [f"row {n}: class name {t!r}" for n, t in names[:5]])
        _raise_for_problems(listed, csv_path, argument,
                            summary="The labels mix class ids and class names (use one kind)")
    return multi_label, separator, tokens


def labels_are_multi(source):
    """Whether a training set is multi-label (a `path,labels` CSV): True or
    False, None when `source` is no longer there or cannot be read."""
    if isinstance(source, str) and os.path.isdir(source):
        return False  # a folder per class
    if not isinstance(source, str) or not os.path.isfile(source):
        return None
    try:
        header, _ = _read_rows(source)
    except (DatasetError, OSError):
        return None
    return bool(header and len(header) > 1 and header[1] == "labels")


def _labels_of(csv_path, argument):
    """A CSV's rows, label separator, each row's labels, and the distinct labels."""
    header, rows = _read_rows(csv_path, argument)
    _, separator, tokens = _checked_tokens(header, rows, csv_path, argument)
    return rows, separator, tokens, {t for ts in tokens.values() for t in ts}


def infer_class_names(csv_path, argument="csv_path"):
    """Sorted distinct label names of a CSV whose labels are names, else None."""
    rows, separator, tokens, names = _labels_of(csv_path, argument)
    if separator == " ":
        _warn_if_names_were_split(rows, tokens, csv_path, argument)
    if separator == ";":
        _warn_if_names_were_joined(rows, tokens, names, csv_path, argument)
    if not rows:
        raise DatasetError(f"No video listed. Received: {argument}={csv_path!r}")
    if not names:
        raise DatasetError(f"No row of {csv_path!r} has a label (one video and its class per "
                           "row: 'path,label'; videos in a folder per class, as UCF101's are, "
                           f"can be given as that folder). Received: {argument}={csv_path!r}")
    if all(_is_int(t) for t in names):
        return None
    _refuse_name_variants(names, csv_path, argument)
    if all(_is_number(t) for t in names):
        _refuse_numbers_not_integers(names, csv_path, argument)
    _refuse_fractions_in_names(names, csv_path, argument)
    return sorted(names)


def _refuse_fractions_in_names(names, csv_path, argument):
    # Charades' actions column (`c092 11.90 21.20;c147 0.00 12.60`) pasted as
    # labels: each action with its times, or each time, became a class.
    timed = sorted(name for name in names
                   if any(_is_number(word) and not _is_int(word) for word in name.split()))
    if timed:
        shown = first_few(timed, 3, show=repr)
        raise DatasetError(
            f"The labels of {csv_path!r} hold numbers with a fraction ({shown}), each of which "
            "would name a class: times or scores are no labels (Charades' actions column "
            "holds each action's start and end: its class ids alone, 'c092;c147', are the "
            f"labels). Received: {argument}={csv_path!r}")


def _refuse_numbers_not_integers(numbers, csv_path, argument):
    # `1.0`, from a spreadsheet or pandas: as names, sorted as text ('10.0'
    # before '2.0'), against the ids 1, 2 of another CSV.
    numbers = sorted(t for t in numbers if not _is_int(t))
    shown = first_few(numbers, 3, show=repr)
    raise DatasetError(f"The labels of {csv_path!r} are numbers but not all integers "
                       f"({shown}): write class ids as integers (0, 1, ...), or give "
                       f"class names as words. Received: {argument}={csv_path!r}")


def _refuse_name_variants(names, csv_path, argument, what="labels"):
    """Names read from labels (or class folders) that differ only in case,
    spaces or Unicode form (`Juggling`, `juggling `, a decomposed `café`) are
    one class written two ways, each of which would be a class of its own."""
    spellings = {}
    for name in sorted(names):
        spellings.setdefault(_spelling(name), []).append(name)
    variants = ["; ".join(map(repr, found)) for found in spellings.values() if len(found) > 1]
    if variants:
        raise DatasetError(
            f"The {what} of {csv_path!r} write {len(variants)} class name(s) in several ways "
            f"(differing only in case, spaces or Unicode form): {first_few(variants, 3, ' / ')}"
            f". Write each class one way, or list the "
            f"classes in data.class_names to keep them apart. Received: {argument}={csv_path!r}")


def _spelling(name):
    """`name` as its class is known however it is written (case, spaces, Unicode form)."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def _near_class(name, spellings):
    """' (the class ... written otherwise)' where a class of `spellings`
    (`_spelling` to name) is `name` written otherwise, else ''."""
    near = spellings.get(_spelling(name))
    if near is None:
        return ""
    if unicodedata.normalize("NFC", near) == unicodedata.normalize("NFC", name):
        # Printed alike: their code points tell them apart.
        return f" (the class {ascii(near)} is the same text in another Unicode form, {ascii(name)})"
    return f" (the class {near!r} differs from it only in case, spaces or Unicode form)"


def read_csv_records(csv_path, num_classes, class_names=None, argument="csv_path",
                     names_from_labels=False):
    """Parse and check a `path,label` or `path,labels` CSV.

    Args:
        csv_path: the CSV file.
        num_classes: labels must be ids in [0, num_classes).
        class_names: optional list; a label that is one of them is that
            class (also a number: class folders `0` .. `10`), else an integer
            is a class id.
        argument: the config field named in error messages.
        names_from_labels: `class_names` were sorted from the training
            labels, not given: integers read as class ids beside them are
            warned about (the user may have numbered the classes otherwise).

    Returns:
        `(records, multi_label)`: a list of `VideoRecord`, and whether the
        header said `labels` (multi-label).

    Raises:
        DatasetError: listing every row with a missing file, a missing or
            unknown label, or a class id outside [0, num_classes).
    """
    _check_source(csv_path, argument)
    if os.path.isdir(csv_path):
        raise MissingFileError(f"{csv_path!r} is a folder, not a CSV file. "
                               f"Received: {argument}={csv_path!r}")
    header, rows = _read_rows(csv_path, argument)
    if header is not None and (len(header) < 2 or header[1] not in ("label", "labels")):
        raise DatasetError(
            f"The CSV header must be 'path,label' or 'path,labels'. "
            f"Received: header={','.join(header)!r} in {argument}={csv_path!r}"
        )
    multi_label, separator, row_tokens = _checked_tokens(header, rows, csv_path, argument,
                                                         class_names or ())
    name_to_id = {name: i for i, name in enumerate(class_names or [])}
    spellings = {_spelling(name): name for name in name_to_id}
    base = os.path.dirname(os.path.abspath(csv_path))
    records, problems, ids, notes = [], [], [], set()
    for number, row in rows:
        path = _video_path(base, row[0])
        if not os.path.isfile(path):
            trimmed = " (with the spaces around it trimmed)" if row[0] != row[0].strip() else ""
            home = f" ({path!r})" if row[0].strip().startswith("~") else ""
            problems.append(f"row {number}: {row[0]!r}: no such file{home}{trimmed}")
            if not home and not os.path.isabs(row[0].strip()):
                notes.add(f"a relative path is read from the CSV's folder, {base!r}")
            continue
        tokens = row_tokens[number]
        if not tokens and not multi_label:
            problems.append(f"row {number}: {row[0]!r}: missing label")
            continue
        labels, bad = [], []
        for token in tokens:
            # A name first: with class folders `0` .. `10` (sorted as text, so
            # `10` is class 2), the label `10` is the folder, not class id 10.
            if token in name_to_id:
                label = name_to_id[token]
            elif _is_int(token):
                label = int(token)
                if not 0 <= label < num_classes:
                    bad.append(f"class id {label} not in [0, {num_classes})")
                    continue
                ids.append((number, token))
            elif multi_label and _words_are_names(token, name_to_id):
                bad.append(f"unknown label {token!r} (several labels? write them as "
                           f"{';'.join(token.split())!r})")
                continue
            else:
                bad.append(f"unknown label {token!r}{_near_class(token, spellings)}")
                notes.add(f"the {len(class_names)} classes: {id_names(class_names)}"
                          if class_names else "without class names, a label is a class id"
                          f" in [0, {num_classes})")
                continue
            labels.append(label)
        if bad:
            problems.append(f"row {number}: {row[0]!r}: {'; '.join(bad)}")
            continue
        records.append(VideoRecord(path, tuple(sorted(set(labels))), number))
    if separator == " " and any(" " in name.strip() for name in class_names or []):
        notes.add("the labels are split at spaces; separate them with ';' to keep class names "
                  "with spaces whole")
    summary = f"{len(problems)} invalid row(s) ({'; '.join(sorted(notes))})" if notes else None
    _raise_for_problems(problems, csv_path, argument, summary)
    if not records:
        raise DatasetError(f"No video listed. Received: {argument}={csv_path!r}")
    if ids and class_names and names_from_labels:
        _warn_of_ids_beside_names(ids, csv_path, argument, class_names)
    return records, multi_label


def _warn_of_ids_beside_names(ids, csv_path, argument, class_names):
    # The numbers are places among the names sorted from the training labels,
    # which is right only if the user numbered the classes that way (not, say,
    # by the CSV's order).
    logger.warning("%d label(s) of %r are numbers, read as class ids, the places among the "
                   "class names sorted from the training set (%s; row %d's %r). If they number "
                   "the classes otherwise, label the videos by name or give data.class_names "
                   "in that order. Received: %s=%r", len(ids), csv_path, id_names(class_names),
                   ids[0][0], ids[0][1], argument, csv_path)


def _video_path(base, cell):
    """The file a CSV cell names, relative to the CSV's folder. Spaces around
    it are trimmed (`a.mp4, 0`), unless only the name with them is a file (a
    name that ends in a space, quoted in the CSV)."""
    path = _tidy(os.path.join(base, cell.strip()))
    if cell.strip().startswith("~") and not os.path.isfile(path):
        # `~/clips/a.mp4`, as data.train_csv itself is read (a folder `~` beside
        # the CSV first, as it was).
        path = _tidy(os.path.join(base, os.path.expanduser(cell.strip())))
    if cell != cell.strip() and not os.path.isfile(path):
        exact = _tidy(os.path.join(base, cell))
        if os.path.isfile(exact):
            return exact
    return path


def _tidy(path):
    """`path` without its `.` parts and doubled separators (`./a.mp4` and
    `videos//a.mp4` are one video). `..` stays: after a symbolic link it is
    the link target's parent, which `os.path.normpath` would not follow."""
    parts = path.split(os.sep)
    return os.sep.join(parts[:1] + [part for part in parts[1:] if part not in ("", ".")])


def _warn_if_names_were_split(rows, row_tokens, csv_path, argument):
    # Kinetics-style names ("playing guitar") would silently become a class per
    # word. Given class names need no warning: a word alone is an unknown label.
    # Labels with a digit are codes, not words (Charades' "c092 c147", ids); a
    # word among codes ("n2 x") is one.
    for number, row in rows:
        tokens = row_tokens[number]
        if len(tokens) > 1 and not all(any(c.isdigit() for c in t) for t in tokens):
            logger.warning(
                "The class names are read from the labels of %r: row %d's %r is read as %d "
                "labels (%s), as a 'labels' column is split at spaces. If class names contain "
                "spaces, separate the labels with ';' (as in 'playing guitar;juggling'); that, "
                "or data.class_names, also silences this warning. Received: %s=%r",
                csv_path, number, row[1].strip(), len(tokens), ", ".join(map(repr, tokens)),
                argument, csv_path)
            return


def _words_are_names(token, names):
    """Whether `token` is several words, each of them one of `names` (`red green`
    for the classes 'red' and 'green'): several labels written as one."""
    words = token.split()
    return len(words) > 1 and all(word in names for word in words)


def _warn_if_names_were_joined(rows, row_tokens, names, csv_path, argument):
    # One ';' in the file keeps every row's spaces: a row written `red green`
    # is then one class 'red green', beside the classes 'red' and 'green'.
    for number, row in rows:
        for token in row_tokens[number]:
            if _words_are_names(token, names):
                logger.warning(
                    "Row %d's label %r of %r is read as one class name, as the file separates "
                    "labels with ';' (some row has one), and its words %s are labels of other "
                    "rows. If it means %d labels, write them as %r. Received: %s=%r",
                    number, token, csv_path, ", ".join(map(repr, token.split())),
                    len(token.split()), ";".join(token.split()), argument, csv_path)
                return


def _visible(folder):
    """The sorted entries of `folder` but hidden ones (`.ipynb_checkpoints`,
    `.DS_Store`), which no one means as a class or a video."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def class_folders(root):
    """The class sub-folders of a folder-per-class set, sorted."""
    return [d for d in _visible(root) if os.path.isdir(os.path.join(root, d))]


def read_folder_records(root, class_names=None, argument="root"):
    """Index `root/<class name>/<video>`; classes are the sorted sub-folders.

    Returns `(records, class_names)`. With `class_names` given, a sub-folder
    that is not among them is an error. Hidden entries are passed over; what
    else is not a class's video (a file beside the class folders, a folder or
    another file inside one) and a class folder without video are warned about.
    """
    if not os.path.isdir(root):
        raise MissingFileError(f"Video folder not found. Received: {argument}={root!r}")
    folders = class_folders(root)
    class_names = list(class_names) if class_names else folders
    spellings = {_spelling(name): name for name in class_names}
    unknown = [f"folder {d!r}: unknown label{_near_class(d, spellings)}" for d in folders
               if d not in class_names]
    _raise_for_problems(unknown, root, argument, summary=(
        f"{len(unknown)} unknown class folder(s) (the {len(class_names)} classes: "
        f"{id_names(class_names)})"))
    records, unused, empty = [], [d for d in _visible(root) if d not in folders], []
    # Absolute, as a CSV's rows are made: a run resumed from another working
    # directory (or with the folder's absolute path) lists the same videos.
    base = os.path.abspath(root)
    for label, name in enumerate(class_names):
        folder = os.path.join(base, name)
        if not os.path.isdir(folder):
            continue
        found = 0
        for file in _visible(folder):
            path = os.path.join(folder, file)
            if file.lower().endswith(VIDEO_EXTENSIONS) and os.path.isfile(path):
                records.append(VideoRecord(path, (label,), None))
                found += 1
            else:
                unused.append(os.path.join(name, file))
        if not found:
            empty.append(name)
    if unused:
        logger.warning("%d entr%s of %r not used (videos are read from the class folders, one "
                       "level deep, with the extensions %s): %s", len(unused),
                       "y" if len(unused) == 1 else "ies", root, " ".join(VIDEO_EXTENSIONS),
                       first_few(unused, 5))
    if empty and records:
        logger.warning("Class folder(s) of %r without a video: %s", root, ", ".join(empty))
    if not records:
        raise DatasetError(f"No video file ({', '.join(VIDEO_EXTENSIONS)}) found. "
                           f"Received: {argument}={root!r}")
    return records, class_names


def load_records(source, num_classes, class_names=None, argument="source",
                 names_from_labels=False):
    """A CSV file or a folder per class -> `(records, multi_label)`
    (`names_from_labels`: see `read_csv_records`)."""
    if os.path.isdir(source):
        if class_names is None:
            # Labels are class ids: the folders name them (`5/` is class 5), not
            # their places among the folders.
            folders = class_folders(source)
            if not all(_is_int(name) for name in folders):
                raise DatasetError(
                    "The run's labels are class ids, so a folder per class must name its "
                    f"class by id (0 .. {num_classes - 1}): {source!r} has "
                    f"{', '.join(repr(n) for n in folders if not _is_int(n))[:200]}. "
                    f"Received: {argument}={source!r}")
            class_names = [str(i) for i in range(num_classes)]
        records, _ = read_folder_records(source, class_names, argument)
        return records, False
    return read_csv_records(source, num_classes, class_names, argument, names_from_labels)


def load_val_records(data_config, names_from_labels=False):
    """`(records, multi_label)` of `data.val_csv`, checked against the resolved
    classes (`resolve_classes`; `names_from_labels`: their names were sorted
    from the training labels, see `read_csv_records`)."""
    source = data_config["val_csv"]
    if not source:
        raise ConfigError("Nothing to evaluate on. Received: data.val_csv=None")
    records, multi_label = load_records(source, data_config["num_classes"],
                                        data_config["class_names"], argument="data.val_csv",
                                        names_from_labels=names_from_labels)
    if multi_label and not any(record.labels for record in records):
        raise DatasetError(f"No video of {source!r} has a label: its mAP is not a number. "
                           f"Received: data.val_csv={source!r}")
    if multi_label:
        _warn_about_videos_of_no_class(records, source, training=False)
    _warn_about_repeated_videos(records, source)
    return records, multi_label


def id_names(class_names, shown=5):
    """`0 = 'archery', 1 = 'bowling', ...`: which class id is which name."""
    pairs = ", ".join(f"{i} = {name!r}" for i, name in enumerate(class_names[:shown]))
    return pairs + (", ..." if len(class_names) > shown else "")


def _warn_about_repeated_videos(records, source):
    # Oversampling in a training set, a mistake in an evaluation set: each
    # listing is scored as a video of its own.
    rows = {}
    for record in records:
        rows.setdefault(record.path, []).append(record.row)
    repeated = [found for found in rows.values() if len(found) > 1]
    if repeated:
        logger.warning("%d video(s) of %r are listed more than once (rows %s%s); each listing "
                       "counts in the metrics as a video of its own.", len(repeated), source,
                       ", ".join(map(str, repeated[0])), ", ..." if len(repeated) > 1 else "")


def load_training_data(data_config):
    """Settle the classes and check every row of the training and validation sets.

    Returns `(data_config, train_records, val_records, multi_label)`, the
    config with `class_names` and `num_classes` resolved; `val_records` is None
    without `data.val_csv`. Raises before anything is trained or written.
    """
    train = data_config["train_csv"]
    if not train:
        raise ConfigError("Nothing to train on. Received: data.train_csv=None")
    # Before the classes, which it would otherwise be said to lack.
    _check_source(train, "data.train_csv")
    names_given = bool(data_config.get("class_names"))
    data_config = resolve_classes(data_config)
    train_records, multi_label = load_records(
        data_config["train_csv"], data_config["num_classes"], data_config["class_names"],
        argument="data.train_csv")
    _refuse_one_video_two_classes(train_records, train, multi_label)
    if multi_label:
        _warn_about_videos_of_no_class(train_records, train)
    present = {label for record in train_records for label in record.labels}
    if not multi_label and len(present) < 2 <= data_config["num_classes"]:
        names = data_config["class_names"] or [str(i) for i in range(data_config["num_classes"])]
        raise DatasetError(
            f"A single-label run needs training videos of at least 2 classes (a softmax "
            f"learns nothing from one); every training video is of class "
            f"{names[min(present)]!r} (the other {data_config['num_classes'] - 1} have none). "
            f"Received: data.train_csv={train!r}")
    if not multi_label and data_config["num_classes"] < 2:
        names = data_config["class_names"] or []
        folder = (f" (a folder per class: {train!r} has one sub-folder, {names[0]!r}; a CSV "
                  "is given as its file)" if os.path.isdir(train) and names else "")
        raise DatasetError(
            f"A single-label run needs at least 2 classes (a softmax over one learns nothing "
            f"and scores 100%); the training set has {data_config['num_classes']}{folder}. "
            f"Received: data.train_csv={train!r}")
    val_records = None
    if data_config["val_csv"]:
        val_records, val_multi_label = load_val_records(data_config, not names_given)
        if val_multi_label != multi_label:
            raise DatasetError(
                "The training and validation sets must both be single-label ('path,label') "
                f"or both multi-label ('path,labels'). Received: data.train_csv="
                f"{data_config['train_csv']!r}, data.val_csv={data_config['val_csv']!r}")
    _log_classes(train_records, data_config, multi_label, names_given)
    return data_config, train_records, val_records, multi_label


def _warn_about_videos_of_no_class(records, source, training=True):
    # Charades-style data may list a video of no action: it trains (or is
    # scored) as absent from every class. Said, as an empty cell (or a `;`
    # alone) can also be a label left out.
    rows = [record.row for record in records if not record.labels]
    if rows:
        logger.warning("%d %s video(s) of %r have no label (rows %s): each %s.", len(rows),
                       "training" if training else "evaluation", source, first_few(rows, 5),
                       "trains every class as absent" if training
                       else "is scored as absent from every class")


def _refuse_one_video_two_classes(records, source, multi_label=False):
    # By the file the path leads to: a class folder that is a symbolic link to
    # another (or a video linked into a second class's folder, symbolically or
    # by a hard link) lists each of its videos again under the other class.
    # Multi-label, a row an action (`a.mp4,2` and `a.mp4,11`) trained each
    # row's classes as absent in the other. The same labels again are
    # oversampling, which is allowed.
    label_sets, paths = {}, {}
    for record in records:
        file = _file_identity(record.path)
        label_sets.setdefault(file, set()).add(record.labels)
        paths.setdefault(file, []).append(record.path)
    both = [file for file, found in label_sets.items() if len(found) > 1]
    if not both:
        return
    listed = sorted(set(paths[both[0]]))
    first = repr(listed[0]) if len(listed) == 1 else (
        f"{listed[0]!r} and {listed[1]!r}, the same file")
    if multi_label:
        raise DatasetError(
            f"{len(both)} training video(s) listed more than once with different labels "
            f"(first: {first}, labels {' and '.join(map(str, sorted(label_sets[both[0]])))}): "
            f"each listing trains the other's classes as absent; list a video once, with all "
            f"its labels in one cell. Received: data.train_csv={source!r}")
    raise DatasetError(
        f"{len(both)} training video(s) listed with different classes in a single-label "
        f"set (first: {first}, classes {sorted(set().union(*label_sets[both[0]]))}): give "
        f"each one class, or make the set multi-label ('path,labels'). Received: "
        f"data.train_csv={source!r}")


def _file_identity(path):
    """The file `path` leads to, as its device and inode: one stat a video (a
    path resolved with `os.path.realpath` missed hard links: one file under
    two names, a video of two classes, trained as both without a word)."""
    try:
        stat = os.stat(path)
    except OSError:  # gone since its row was checked: the decoder says so
        return path
    return stat.st_dev, stat.st_ino


def _log_classes(records, data_config, multi_label, names_given=False):
    # A typo in a label becomes a class of its own: show every class with its count.
    counts = np.zeros(data_config["num_classes"], int)
    for record in records:
        counts[list(record.labels)] += 1
    names = data_config["class_names"] or [str(i) for i in range(len(counts))]
    shown = ", ".join(f"{n} ({c})" for n, c in list(zip(names, counts))[:20])
    more = f", ... ({len(names) - 20} more)" if len(names) > 20 else ""
    logger.info("%d training videos, %d classes%s: %s%s", len(records), len(counts),
                " (multi-label)" if multi_label else "", shown, more)
    if multi_label and all(len(record.labels) == 1 for record in records):
        # `path,labels` for `path,label`: one letter turns softmax and top-1 into
        # sigmoids and mAP.
        logger.warning(
            "Every training video has exactly one label, but the CSV header 'path,labels' "
            "makes this a multi-label run (sigmoid scores, mAP). For classes that exclude "
            "each other (softmax, top-1, as in Kinetics) name the column 'label'. "
            "Received: data.train_csv=%r", data_config["train_csv"])
    if names_given:
        # A line of a class-name file that is no class (a `# comment`) became one.
        empty = [n for n, c in zip(names, counts) if c == 0]
        if empty:
            logger.warning("%d class(es) of data.class_names without a training video (never "
                           "learnt; a line that is no class?): %s", len(empty),
                           first_few(empty, 10, show=repr))
    elif not data_config["class_names"] and not multi_label and not counts.all():
        # UCF101's and HMDB51's lists number classes from 1: with num_classes one
        # more, class 0 trained as an empty class, and every video as its id.
        empty = np.flatnonzero(counts == 0).tolist()
        logger.warning("%d class id(s) without a training video (never learnt): %s%s",
                       len(empty), first_few(empty, 10),
                       "; class ids start at 0 (ids from 1, as UCF101's lists number them? "
                       "subtract 1)" if empty[0] == 0 else "")
    rare = [n for n, c in zip(names, counts) if c == 1]
    if rare and len(records) >= 4 * len(counts):
        logger.warning("Classes with a single training video (a typo in a label?): %s",
                       ", ".join(rare[:10]))


class SkippedVideos:
    """Thread-safe record of videos the pipeline could not decode.

    Counts videos, not the times the pipeline met them: each file is logged
    once (by name and reason) and counted once in the run (`total`) and in each
    epoch, however often the pipeline, its repeats, its look-ahead or its cache
    rebuilt after a resume decode it. `pop_epoch()` returns and resets the
    epoch's count and paths. A resumed run starts from its commit's paths:
    `run_paths` (the run's so far) and `epoch_paths` (the epoch it stopped in).
    """

    def __init__(self, run_paths=(), epoch_paths=()):
        self._lock = threading.Lock()
        self._run, self._epoch = set(run_paths), set(epoch_paths)
        self._warned = set()

    def record(self, path, reason):
        with self._lock:
            self._run.add(path)
            self._epoch.add(path)
            first_time = path not in self._warned
            self._warned.add(path)
        if first_time:
            logger.warning("Skipping unreadable video %s (%s)", path, reason)

    @property
    def total(self):
        with self._lock:
            return len(self._run)

    def paths(self):
        """`(run_paths, epoch_paths)`, sorted lists: what a commit keeps."""
        with self._lock:
            return sorted(self._run), sorted(self._epoch)

    def pop_epoch(self):
        with self._lock:
            paths, self._epoch = sorted(self._epoch), set()
        return len(paths), paths


class SkippedVideoSummary(keras.callbacks.Callback):
    """Reports, at the end of each epoch, how many videos were skipped.

    Adds `skipped_videos` to the epoch logs (so the progress bar, TensorBoard
    and CSV logs show it) and logs a one-line summary when it is not zero.
    """

    def __init__(self, skipped):
        super().__init__()
        self.skipped = skipped

    def on_epoch_end(self, epoch, logs=None):
        count, paths = self.skipped.pop_epoch()
        if logs is not None:
            logs["skipped_videos"] = count
        if count:
            names = ", ".join(sorted({os.path.basename(p) for p in paths})[:10])
            logger.warning("Epoch %d: skipped %d unreadable video(s): %s", epoch + 1, count, names)


def _label_tensor(records, num_classes, multi_label):
    if multi_label:
        return multi_hot([r.labels for r in records], num_classes)
    return np.array([r.labels[0] for r in records], np.int32)


class NoDecodableVideo(RuntimeError):
    """Every video of a repeated (training) dataset failed to decode: no batch can ever form."""


def _failure(error):
    """Why a video could not be decoded, in a line."""
    if isinstance(error, video_io.VideoDecodeError):
        return error.reason
    return f"{type(error).__name__}: {error}"


def check_a_video_decodes(records, num_frames, sampling_rate, source,
                          argument="data.train_csv"):
    """Raises DatasetError when no video of a set gives a clip, found before a
    run folder is written to (the first step finds it after: a finished run
    continued on broken videos lost its final files; an evaluation set, after the
    whole training). Costs one clip's decoding where the first video is readable.
    Returns the bytes of that clip's decoded frames."""
    reasons = {}
    for path in dict.fromkeys(record.path for record in records):
        try:
            return video_io.decode_frames(path, lambda total: video_io.train_clip_indices(
                total, num_frames, sampling_rate, np.random.default_rng(0))).nbytes
        except Exception as error:  # noqa: BLE001 - as the pipeline's decoder takes them
            reasons[path] = _failure(error)
    first = next(iter(reasons))
    which = "training" if argument == "data.train_csv" else "evaluation"
    raise DatasetError(f"None of the {len(reasons)} {which} videos could be decoded (first: "
                       f"{os.path.basename(first)}: {reasons[first]}); nothing was trained. "
                       f"Received: {argument}={source!r}")


def _decoder(sampler, clip_shape, skipped, num_videos=None, threads=None):
    """numpy_function body: (path, seed) -> (uint8 frames, ok).

    `threads`: each decode's FFmpeg threads (`video_io.decode_frames`).

    With `num_videos` (a repeated dataset), once every one of them has failed
    and none decoded, it raises `NoDecodableVideo` instead of letting the
    pipeline loop forever in search of a batch.
    """
    failed, decoded = set(), [0]
    lock = threading.Lock()

    def decode(path, seed):
        path = os.fsdecode(path)
        try:
            frames = video_io.decode_frames(path, lambda total: sampler(total, seed), threads)
            with lock:
                decoded[0] += 1
            return frames, True
        except Exception as error:  # noqa: BLE001 - one odd file must not end an epoch
            skipped.record(path, _failure(error))
        with lock:
            failed.add(path)
            hopeless = num_videos is not None and not decoded[0] and len(failed) >= num_videos
        if hopeless:
            raise NoDecodableVideo(f"None of the {num_videos} training videos could be decoded")
        return np.zeros(clip_shape + (1, 1, 3), np.uint8), False

    return decode


def _decoded_dataset(records, num_classes, multi_label, sampler, clip_shape, skipped,
                     shuffle, seed, num_parallel_calls, deterministic, repeated=False):
    """(frames, label, index) of every decodable video; `index` is its position."""
    # As bytes: a file name that is not UTF-8 (`bad\xffname.mp4`) cannot be a
    # string tensor (a traceback, and no video was predicted).
    paths = [os.fsencode(r.path) for r in records]
    labels = _label_tensor(records, num_classes, multi_label)
    order = np.arange(len(records), dtype=np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels, order))
    if shuffle:
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    # As many decodes in parallel as cores: one FFmpeg thread each is faster
    # than FFmpeg's own threads on top (video_io.decode_frames); fewer (one
    # video to predict, a small num_parallel_calls): FFmpeg's threads.
    cores = os.cpu_count() or 1
    calls = cores if num_parallel_calls == tf.data.AUTOTUNE else num_parallel_calls
    parallel = calls >= cores and (repeated or len(records) >= cores)
    # Distinct files: a CSV may list a video twice (to oversample its class).
    decode = _decoder(sampler, clip_shape, skipped, len(set(paths)) if repeated else None,
                      threads=1 if parallel else None)

    def decode_map(path, label, index):
        sample_seed = tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64)
        frames, ok = tf.numpy_function(decode, [path, sample_seed], [tf.uint8, tf.bool],
                                       stateful=True)
        frames.set_shape(tuple(clip_shape) + (None, None, 3))
        ok.set_shape([])
        return frames, label, index, ok

    dataset = dataset.map(_graph_code(decode_map), num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic)
    return dataset.filter(_graph_code(lambda frames, label, index, ok: ok)).map(
        _graph_code(lambda frames, label, index, ok: (frames, label, index)))


def train_dataset(records, num_classes, multi_label, batch_size, *, num_frames=32,
                  sampling_rate=2, crop_size=224, min_scale=256, max_scale=320, flip=True,
                  mean=MEAN, std=STD, cache_decoded=False,
                  shuffle=True, seed=None, skipped=None,
                  num_parallel_calls=tf.data.AUTOTUNE, repeat=False):
    """Training clips `(batch, num_frames, crop, crop, 3)` float32 and labels.

    One random clip per video per epoch (paper: 32 frames every 2nd frame,
    shorter side in [256, 320], 224 crop, horizontal flip). `cache_decoded`
    keeps the decoded clips in memory after the first epoch (only for small
    datasets; it also freezes each video's temporal start); spatial
    augmentation still runs every epoch. The last partial batch is dropped so
    that every step has the global batch.

    `repeat=True` repeats the videos before batching, so that skipped videos
    never end an epoch early and a batch can span two passes; if every video
    fails to decode, iterating raises (`NoDecodableVideo`) instead of looping.
    """
    skipped = skipped if skipped is not None else SkippedVideos()

    def sampler(total, seed_value):
        rng = np.random.default_rng(int(seed_value))
        return video_io.train_clip_indices(total, num_frames, sampling_rate, rng)

    dataset = _decoded_dataset(records, num_classes, multi_label, sampler, (num_frames,),
                               skipped, shuffle and not cache_decoded, seed,
                               num_parallel_calls, deterministic=False, repeated=repeat)
    if cache_decoded:
        dataset = dataset.cache()
        if shuffle:
            dataset = dataset.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def augment(frames, label, index):
        clip = preprocessing.train_transform(frames, crop_size, min_scale, max_scale,
                                             flip, mean, std)
        return clip, label

    dataset = dataset.map(_graph_code(augment), num_parallel_calls=num_parallel_calls)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(records, num_classes, multi_label, batch_size, *, num_frames=32,
                 sampling_rate=2, num_clips=10, num_crops=3, crop_size=224, scale=256,
                 mean=MEAN, std=STD, skipped=None,
                 num_parallel_calls=tf.data.AUTOTUNE):
    """Evaluation views per video, in file order.

    Yields `(views, label, index)` batches: `views` is
    `(batch, num_clips * num_crops, num_frames, crop, crop, 3)`; `index` is
    the video's position in `records`, so that skipped videos are accounted for.
    """
    skipped = skipped if skipped is not None else SkippedVideos()
    # tf.data fuses the map into the batch and allocates a whole batch up front:
    # a batch size above the number of videos ran out of memory on one video.
    batch_size = max(1, min(batch_size, len(records)))
    check_view_memory(batch_size, num_clips, num_crops, num_frames, crop_size)

    def sampler(total, seed_value):
        return video_io.eval_clip_indices(total, num_frames, sampling_rate, num_clips)

    dataset = _decoded_dataset(records, num_classes, multi_label, sampler,
                               (num_clips, num_frames), skipped, False, None,
                               num_parallel_calls, deterministic=True)

    def views(frames, label, index):
        clips = preprocessing.eval_transform(frames, crop_size, scale, num_crops, mean, std)
        return clips, label, index

    dataset = dataset.map(_graph_code(views), num_parallel_calls=num_parallel_calls)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def check_view_memory(batch_size, num_clips, num_crops, num_frames, crop_size, **_):
    """Raises ConfigError where one batch of evaluation views (float32) alone
    needs more memory than this process can have: `--num-clips 100000` grew
    to 13 GB of decoded frames before it ran out. Takes `eval_options`."""
    need = batch_size * num_clips * num_crops * num_frames * crop_size * crop_size * 3 * 4
    limit = runtime.memory_limit()
    if limit is not None and need > limit:
        raise ConfigError(
            f"A batch of evaluation views needs {need / 2**30:.1f} GiB ({batch_size} video(s) x "
            f"{num_clips} clips x {num_crops} crops of {num_frames}x{crop_size}x{crop_size}, "
            f"float32), more than the {limit / 2**30:.1f} GiB of memory here: lower the clips or "
            f"crops per video, the batch size or the crop size. Received: num_clips={num_clips}, "
            f"num_crops={num_crops}, batch_size={batch_size}")


def warn_of_cache_size(clip_bytes, num_clips, train_csv):
    """Warns where `data.cache_decoded` would hold decoded clips of more than
    half this process's memory, `num_clips` of `clip_bytes` each (the first
    video's: videos of other sizes make it more or less). A dataset too big
    for it trained until the cache filled the memory, in the first epoch, and
    the process was killed (exit 137) without a word."""
    need, limit = clip_bytes * num_clips, runtime.memory_limit()
    if limit is None or need <= limit / 2:
        return
    logger.warning(
        "data.cache_decoded=true keeps every training video's decoded clip in memory: about "
        "%.1f GiB for these %d (%.1f MiB each, as the first video's), against %.1f GiB of "
        "memory here. The run may be killed when the cache fills, in its first epoch; set "
        "data.cache_decoded=false for a dataset of this size (data.train_csv=%r).",
        need / 2**30, num_clips, clip_bytes / 2**20, limit / 2**30, train_csv)


def class_names_from_config(data_config):
    """`_class_names_from_config`, each name checked as the export writes it."""
    names = _class_names_from_config(data_config)
    if names is not None:
        given = data_config.get("class_names")
        argument, source = (("data.class_names", given) if given
                            else ("data.train_csv", data_config.get("train_csv")))
        _refuse_unwritable_names(names, argument, source)
    return names


def _class_names_from_config(data_config):
    """`data.class_names` as a list: given inline, read from a file (one per
    line), or, when absent and the training labels are names (or folders), their
    sorted set. None when the labels are class ids."""
    names = data_config.get("class_names")
    if isinstance(names, str):
        if not os.path.isfile(names):
            what = (f"{names!r} is a folder, not a class-name file" if os.path.isdir(names)
                    else "Class-name file not found")
            raise MissingFileError(f"{what}. Received: data.class_names={names!r}")
        return _read_class_names(names)
    if names:
        return list(names)
    train = data_config.get("train_csv")
    if train and os.path.isfile(train):
        return infer_class_names(train, "data.train_csv")
    if train and os.path.isdir(train):
        folders = class_folders(train)
        _refuse_name_variants(folders, train, "data.train_csv", "class folders")
        return folders
    return None


def _refuse_unwritable_names(names, argument, source):
    """Class names are written one a line, as UTF-8 (an exported model's
    `class_names.txt`, predictions): a class folder named with a line break
    trained, then could not be exported; one named in another encoding (a
    Windows zip's `t\xf6p`) trained, then the export was a traceback."""
    for name in map(str, names):
        if name and not one_line_text(name):
            raise DatasetError(f"The class name {name!r} is not one line of UTF-8 text, which "
                               "class names are written as (the exported model's class names, "
                               f"the predictions): rename it. Received: {argument}={source!r}")


def one_line_text(name):
    """Whether `name` is one line (no line break of any kind) of UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a file name's undecodable bytes (surrogate escapes)
        return False
    return name.splitlines() == [name]


def _read_class_names(path):
    """The names of a class-name file in class-id order: one a line, numbered
    lines (UCF101's classInd.txt, `1 ApplyEyeMakeup`; `0,abseiling` under an
    `id,name` header), or JSON: a list, names to ids (Something-Something's
    labels.json) or ids to names. Each was read a line a name ('1
    ApplyEyeMakeup', or a whole JSON file)."""
    text = _read_text(path, "data.class_names")
    names = _json_class_names(text, path)
    if names is None:
        names = _numbered_names([line.strip() for line in text.splitlines() if line.strip()],
                                path)
    if not names:  # an empty file was the classes [] (an IndexError once)
        raise DatasetError(f"{path!r} names no class. Received: data.class_names={path!r}")
    return names


def _json_class_names(text, path):
    """The names of a JSON list or mapping of class names; None where `text`
    is not JSON (`[background]` on a line of its own is a name)."""
    index = _json_list_or_mapping(text)
    if index is None:
        return None
    names = _numbered_json(index)
    if names is None:
        raise DatasetError(f"{path!r} is JSON but not a list of class names, nor a mapping "
                           "of distinct names to class ids 0, 1, 2, ... (or of ids to names). "
                           f"Received: data.class_names={path!r}")
    return names


def _numbered_names(lines, path):
    """`lines` as names in the order of their numbers where each (but an `id,name`
    header) is `<number> <name>`, the numbers running 0, 1, ... or 1, 2, ...;
    else the lines themselves (names that start with numbers of their own)."""
    if not lines:
        return lines
    matches = [_NUMBERED_LINE.fullmatch(line) for line in lines]
    header = len(lines) > 1 and bool(_HEADER_LINE.fullmatch(lines[0].lower()))
    numbered = {int(m.group(1)): _unquoted(m.group(2)) for m in matches if m}
    body = len(lines) - header
    names = _in_id_order(numbered, body) if all(matches[header:]) else None
    if names is None:
        if 2 * sum(map(bool, matches)) > len(lines):
            logger.warning(
                "%d of the %d lines of %r start with a number, but they are not read as "
                "numbered class names (numbers 0, 1, 2, ... or 1, 2, 3, ..., each once, with "
                "distinct names): each line is a name, its number included (%r, ...). "
                "Received: data.class_names=%r", sum(map(bool, matches)), len(lines), path,
                lines[0], path)
        return lines
    if 0 not in numbered:
        logger.info("The class names of %r are numbered from 1: class id 0 is its number 1 "
                    "(%r), and so on (labels that are its numbers need 1 subtracted).",
                    path, names[0])
    return names


def _unquoted(name):
    # `0,"abseiling, rope"`: a CSV's quotes.
    name = name.strip()
    if len(name) > 1 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"').strip()
    return name


# `1 ApplyEyeMakeup`, `0,abseiling`, `7: juggling`.
_NUMBERED_LINE = re.compile(r"(\d+)\s*[,:;\t ]\s*(\S.*)")
# `id,name`, `index class`.
_HEADER_LINE = re.compile(r"(id|index|idx|number|class_id|label_id)\s*[,:;\t ]\s*"
                          r"(name|class|label|class_name|label_name|category)")


def _in_id_order(numbered, count):
    """The names of `{number: name}` in order, if the `count` numbers run 0, 1,
    2, ... or 1, 2, 3, ... and the names are distinct; else None."""
    first = min(numbered, default=0)
    if len(numbered) != count or first not in (0, 1) or len(set(numbered.values())) != count or (
            sorted(numbered) != list(range(first, first + count))):
        return None
    return [numbered[i] for i in sorted(numbered)]


def _numbered_json(index):
    """The class names of a JSON list or mapping in id order, else None."""
    if isinstance(index, list):
        if not all(isinstance(v, str) and v.strip() for v in index):
            return None
        return [v.strip() for v in index]
    if not isinstance(index, dict):
        return None
    pairs = list(index.items())
    if all(isinstance(v, (str, int)) and _is_int(str(v)) for _, v in pairs):
        pairs = [(v, k) for k, v in pairs]  # names to ids
    if not all(_is_int(str(k)) and isinstance(v, str) and v.strip() for k, v in pairs):
        return None
    return _in_id_order({int(k): v.strip() for k, v in pairs}, len(pairs))


def names_sorted_from_labels(data_config):
    """Whether `data.class_names` are absent or, as a run's config.yaml keeps
    them, the sorted training labels (class folders) themselves."""
    names, train = data_config.get("class_names"), data_config.get("train_csv")
    if not names:
        return True
    if not isinstance(names, list) or names != sorted(names) or not isinstance(train, str):
        return False
    if os.path.isdir(train):
        return class_folders(train) == names
    try:
        labels = _labels_of(train, "data.train_csv")[3]
    except (DatasetError, OSError):  # a training CSV gone or changed: nothing to tell
        return False
    return sorted(labels) == names


def resolve_classes(data_config):
    """`data_config` with `class_names` (a list, or None for id labels) and
    `num_classes` settled, so that they agree before anything trains.

    Without `data.num_classes` the count is the number of class names; with
    it, the two must agree. Labels that are class ids need `data.num_classes`.
    """
    names = class_names_from_config(data_config)
    count, train = data_config.get("num_classes"), data_config.get("train_csv")
    if names is not None:
        if count is None:
            count = len(names)
        elif count != len(names):
            source = ("data.class_names" if data_config.get("class_names")
                      else f"the training labels of {data_config.get('train_csv')!r}")
            raise ConfigError(
                f"`data.num_classes` and the class names disagree: {len(names)} names from "
                f"{source} ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}). "
                f"Set data.num_classes={len(names)} or leave it out (null). "
                f"Received: data.num_classes={count}")
        if len(set(names)) != len(names):
            raise ConfigError(f"Class names must be distinct. Received: data.class_names={names!r}")
    elif count is None and not (isinstance(train, str) and os.path.exists(train)):
        # It said "The labels of None are class ids".
        raise ConfigError(f"No class names are given and no training CSV is there to read "
                          f"them from (data.train_csv={train!r}): set data.num_classes (labels "
                          "that are class ids) or data.class_names. "
                          "Received: data.num_classes=None")
    elif count is None:
        raise ConfigError(f"The labels of {data_config.get('train_csv')!r} are class ids, so the "
                          "class count cannot be read from names: set data.num_classes (or give "
                          "data.class_names). Received: data.num_classes=None")
    return dict(data_config, class_names=names, num_classes=count)


def multi_hot(label_sets, num_classes):
    """`(len(label_sets), num_classes)` float32 targets, 1 at each listed class id."""
    target = np.zeros((len(label_sets), num_classes), np.float32)
    for i, labels in enumerate(label_sets):
        target[i, list(labels)] = 1.0
    return target


def _common_options(data_config):
    return dict(num_frames=data_config["num_frames"], sampling_rate=data_config["sampling_rate"],
                crop_size=data_config["crop_size"], mean=tuple(data_config["mean"]),
                std=tuple(data_config["std"]),
                num_parallel_calls=data_config.get("num_parallel_calls") or tf.data.AUTOTUNE)


def train_options(data_config):
    """Keyword arguments of `train_dataset` from a data config."""
    return dict(_common_options(data_config), min_scale=data_config["train_scale"][0],
                max_scale=data_config["train_scale"][1], flip=data_config["flip"],
                cache_decoded=data_config["cache_decoded"])


def eval_options(data_config):
    """Keyword arguments of `eval_dataset` from a data config."""
    return dict(_common_options(data_config), num_clips=data_config["num_clips"],
                num_crops=data_config["num_crops"], scale=data_config["eval_scale"],
                crop_size=data_config.get("eval_crop_size") or data_config["crop_size"])
