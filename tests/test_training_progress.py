"""Progress output on a terminal and into files: `runtime.verbose` and `VideoProgress`."""

import io
import time

import numpy as np
import pytest

from nonlocal_keras.training import evaluate, runtime

REDRAW = {"\r", "\b", "\x1b"}  # what a bar drawn in place writes


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Closed(io.StringIO):
    def isatty(self):
        raise ValueError("I/O operation on closed file")


@pytest.mark.parametrize("setting, stream, expected", [
    ("auto", Terminal(), 1),
    ("auto", io.StringIO(), 2),
    ("auto", Closed(), 2),
    ("auto", object(), 2),
    (0, Terminal(), 0),
    (1, io.StringIO(), 1),  # asked for: kept
    (2, Terminal(), 2),
])
def test_auto_draws_the_bar_only_on_a_terminal(setting, stream, expected):
    assert runtime.keras_verbose(setting, stream) == expected


def _batches(sizes):
    # VideoProgress counts the videos of a batch by its third element (the indices).
    return [(None, None, np.zeros(size)) for size in sizes]


def _progress(monkeypatch, stderr, verbose, total=20, sizes=(4,) * 5, skipped=0):
    monkeypatch.setattr("sys.stderr", stderr)
    bar = evaluate.VideoProgress(total, lambda: skipped, verbose)
    for _ in bar.wrap(_batches(sizes)):
        time.sleep(0.001)
    return stderr.getvalue()


def test_into_a_file_a_line_at_every_tenth_and_one_at_the_end(monkeypatch):
    output = _progress(monkeypatch, io.StringIO(), 1, total=40, sizes=(3,) * 13 + (1,))
    assert not set(output) & REDRAW, output
    lines = output.splitlines()
    # 3, 6, ..., 39 videos: a line when a tenth (4, 8, ...) is passed, none at 40.
    assert [line.split()[0] for line in lines[:-1]] == [
        "6/40", "9/40", "12/40", "18/40", "21/40", "24/40", "30/40", "33/40", "36/40"]
    assert all(", about " in line and line.endswith(" s left") for line in lines[:-1])
    assert lines[-1].startswith("40/40 videos in ") and lines[-1].endswith(" ms a video")


def test_skipped_videos_count_as_done_and_two_asks_for_lines_on_a_terminal(monkeypatch):
    output = _progress(monkeypatch, Terminal(), 2, total=20, sizes=(4, 4), skipped=12)
    assert not set(output) & REDRAW, output
    assert [line.split()[0] for line in output.splitlines()] == ["16/20", "20/20"]


def test_on_a_terminal_keras_bar_and_nothing_at_zero(monkeypatch):
    drawn = _progress(monkeypatch, Terminal(), 1)
    assert "\r" in drawn and "20/20" in drawn
    assert _progress(monkeypatch, Terminal(), 0) == ""
    assert _progress(monkeypatch, io.StringIO(), 0) == ""
