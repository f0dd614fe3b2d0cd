"""Progress on a terminal and in a log file.

Keras draws its progress bar with carriage returns, backspaces and colour codes
even into a file or a pipe (it takes every POSIX process for an interactive
one). Where the output is not a terminal, these print plain lines instead: one
each time a tenth of the work is done, with the time left, and one at the end.
"""

import contextlib
import sys
import time

import keras

from nonlocal_keras.console import is_terminal


class Tenths:
    """The time and the tenths of `total` units done, for a line at each tenth;
    `done` units were done before (a resumed epoch)."""

    def __init__(self, total, done=0):
        self.total, self.done = total, done
        self.shown = 10 * done // max(total, 1)
        self.start = time.perf_counter()

    def elapsed(self):
        return time.perf_counter() - self.start

    def line(self, current, unit):
        """`"<current>/<total> <unit>, <s> s, about <s> s left"` when `current` has
        passed another tenth (not at the end, which has a line of its own), else None."""
        tenths = 10 * current // max(self.total, 1)
        if tenths <= self.shown or current >= self.total:
            return None
        self.shown = tenths
        elapsed = self.elapsed()
        left = elapsed * (self.total - current) / (current - self.done)
        return f"{current}/{self.total} {unit}, {elapsed:.0f} s, about {left:.0f} s left"


class VideoProgress:
    """Progress over videos with the time left, on stderr (stdout holds the
    results). `verbose` as Keras': 0 nothing; 1 Keras' bar when stderr is a
    terminal, else lines; 2 lines. Skipped videos never reach a batch: they
    count as done once `skipped_count()` reports them."""

    def __init__(self, total, skipped_count, verbose=1):
        self.total = total
        self.skipped_count = skipped_count
        self.done = 0
        self.bar = None
        self.tenths = None
        if verbose == 2 or (verbose == 1 and not is_terminal(sys.stderr)):
            self.tenths = Tenths(total)
        elif verbose:
            with contextlib.redirect_stdout(sys.stderr):
                # interval 0: every video shows, each takes far longer than a redraw.
                self.bar = keras.utils.Progbar(total, unit_name="video", interval=0)

    def wrap(self, batches):
        for batch in batches:
            yield batch
            self.done += int(batch[2].shape[0])
            self._show(finalize=False)
        self._show(finalize=True)

    def _show(self, finalize):
        current = self.total if finalize else min(self.done + self.skipped_count(), self.total)
        if self.bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self.bar.update(current, finalize=finalize)
        elif self.tenths is not None:
            if finalize:
                elapsed = self.tenths.elapsed()
                each = f", {1e3 * elapsed / self.total:.0f} ms a video" if self.total else ""
                line = f"{self.total}/{self.total} videos in {elapsed:.0f} s{each}"
            else:
                line = self.tenths.line(current, "videos")
            if line:
                print(line, file=sys.stderr, flush=True)


class EpochBar(keras.callbacks.ProgbarLogger):
    """Keras' own progress of `fit`, without the epoch's `skipped_videos`, which
    it prints as a float average (`0.0000e+00`): that count is the skipped-video
    warning's, and stays in the logs for `history.csv` and TensorBoard.
    `epochs`: the run's, in the "Epoch 2/5" headers; a `fit` that finishes a
    resumed epoch alone was headed "Epoch 2/2"."""

    def __init__(self, epochs):
        super().__init__()
        self.run_epochs = epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.run_epochs

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {name: value for name, value in (logs or {}).items()
                                     if name != "skipped_videos"})


class StepLines(keras.callbacks.Callback):
    """With Keras' `verbose=2` (one line an epoch, at its end): a line at each
    tenth of an epoch too, with the time left and the metrics so far, so that
    the log of a run whose epochs take hours shows it going. `offset`: the
    step of the epoch at which this `fit` starts (a resumed run)."""

    def __init__(self, steps_per_epoch, epochs, offset=0):
        super().__init__()
        self.steps_per_epoch, self.epochs, self.offset = steps_per_epoch, epochs, offset
        self.epoch, self.tenths = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.tenths = Tenths(self.steps_per_epoch, self.offset)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0

    def on_train_batch_end(self, batch, logs=None):
        line = self.tenths.line(self.offset + batch + 1, "steps")
        if line:
            metrics = "".join(f" - {name}: {float(value):.4f}" for name, value in (logs or {}).items())
            print(f"Epoch {self.epoch + 1}/{self.epochs}: {line}{metrics}", flush=True)
