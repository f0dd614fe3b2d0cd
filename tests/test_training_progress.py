"""Progress output on a terminal and into files: `runtime.verbose` and `VideoProgress`."""

import io
import time

import numpy as np
import pytest

from nonlocal_keras.training import progress, runtime

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
    bar = progress.VideoProgress(total, lambda: skipped, verbose)
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


def test_a_line_at_every_tenth_of_an_epoch_resumed_ones_too(capsys):
    lines = progress.StepLines(steps_per_epoch=20, epochs=3)
    for epoch in (0, 1):
        lines.on_epoch_begin(epoch)
        for batch in range(20):
            lines.on_train_batch_end(batch, {"loss": 0.5, "top1": 1 / 3})
        lines.on_epoch_end(epoch)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in printed] == [
        f"Epoch {e}/3: {s}/20 steps" for e in (1, 2) for s in range(2, 20, 2)]
    assert printed[0].endswith(" s left - loss: 0.5000 - top1: 0.3333"), printed[0]
    resumed = progress.StepLines(steps_per_epoch=20, epochs=3, offset=13)
    resumed.on_epoch_begin(2)
    for batch in range(7):
        resumed.on_train_batch_end(batch, {})
    assert [line.split(",")[0] for line in capsys.readouterr().out.splitlines()] == [
        "Epoch 3/3: 14/20 steps", "Epoch 3/3: 16/20 steps", "Epoch 3/3: 18/20 steps"]
