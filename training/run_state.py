"""A run folder's resume state, committed as one unit, and the files derived from it.

    run_dir/
      config.yaml                  the resolved experiment (written once validated)
      state/state.json             the commit: steps done, history, finished, which weights
      state/ckpt-<step>.weights.h5 weights + optimiser state of the last two commits
      state/ckpt-<step>.metrics.npz  a mid-epoch commit's running metric sums
      checkpoints/last.weights.h5  the weights at the end of the last finished epoch
      history.csv                  one row per finished epoch (derived from state.json)
      final.weights.h5, model.keras, results.json   written when training has ended,
                                   removed when it goes on (more epochs)

A session that resumes a committed run changes nothing in the folder but the
files derived from the commit until its own first commit (or its final files):
`before_first_commit` holds what it would write. A session that fails before
(a first step out of memory, a failed evaluation) leaves the run as it was.

A commit writes the weights under a new name, then atomically replaces
`state.json`, which names them; only then are older weight files deleted. So a
kill at any moment leaves `state.json` naming complete weights (the previous
commit's until the new one is whole), and the epoch, the step and the history
always describe exactly those weights. The commit before the last one is kept
too, and used if the last one cannot be read.
"""

import contextlib
import csv
import errno
import filecmp
import io
import json
import logging
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from nonlocal_keras.applications import h5_weights
from nonlocal_keras.training import atomic
from nonlocal_keras.training.errors import DatasetError, FolderError, UserError

logger = logging.getLogger(__name__)

STATE_DIR = "state"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
FORMAT = 1


class RunFolderError(UserError):
    """The run folder holds something this command cannot continue."""


def holds_anything(run_dir):
    """Whether `run_dir` is a folder with anything in it but what a run's first
    moments leave before its config.yaml is in place (the lock file, an empty
    state folder, temporary files): a run killed or refused a write there has
    trained nothing, and the same command starts it again."""
    if not os.path.isdir(run_dir):
        return False
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name == LOCK_FILE or atomic.is_temporary(name):
            continue
        if name == STATE_DIR and os.path.isdir(path) and not os.listdir(path):
            continue
        return True
    return False


@contextlib.contextmanager
def folder_lock(run_dir, setting="runtime.output_dir"):
    """Hold the run folder for this process: `flock` on `<run_dir>/.lock`
    (`setting`: the option that names the folder, in the messages).

    A second `nonlocal-train` on the same folder would resume from the same
    state, delete the first one's temporary files as a killed writer's
    (`RunState.clean`) and commit over its steps; it stops instead, before it
    writes anything. The kernel drops the lock when the process ends, however
    it ends (`kill -9` included), so a stale lock file holds nothing. Creates
    the folder if there is none. Where the file system has no locks (some
    network file systems) the run goes on unlocked, with a warning.
    """
    import fcntl

    atomic.make_folder(run_dir, setting)
    try:
        handle = open(os.path.join(run_dir, LOCK_FILE), "a")
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES) and os.path.isdir(run_dir):
            # Nothing can train there, so nothing to hold it against; a finished
            # run's command still says so (exit 0), a write says it cannot.
            yield
            return
        raise FolderError(f"Cannot write in the run folder ({error.strerror}). "
                          f"Received: {setting}={run_dir!r}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                "Another process is training in this run folder (it holds its lock file); "
                f"wait for it to end or stop it, or choose another {setting}. "
                f"Received: {setting}={run_dir!r}") from None
        except OSError as error:
            logger.warning("Cannot lock the run folder %s (%s); nothing stops a second run "
                           "from writing into it at the same time.", run_dir, error)
        try:  # where the folders of its writes are made (`writing_in_held`)
            folder = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # not readable: they are made at its path
            folder = None
        _HELD[run_dir] = (os.fstat(handle.fileno()), setting, folder)
        try:
            yield
        finally:
            _HELD.pop(run_dir, None)
            if folder is not None:
                os.close(folder)


_HELD = {}  # run folder -> (its lock file's stat, the setting naming it, its descriptor)


@contextlib.contextmanager
def writing_in_held(run_dir):
    """Writes into the run folder this process holds: `check_still_held` before
    them, and again when one fails, so that a folder moved while its files were
    written (a re-walk: a FileNotFoundError traceback, exit 1, in 3 moves of 4)
    is said as a move, not as the write's error. The folders they are written in
    are made in the held folder wherever it is (`atomic.folders_made_in`): a move
    just after the check made them again, and the run folder, at its old path,
    where the writes then went, without a word."""
    check_still_held(run_dir)
    held = _HELD.get(run_dir)
    try:
        with (atomic.folders_made_in(run_dir, held[2]) if held and held[2] is not None
              else contextlib.nullcontext()):
            yield
    except Exception:
        check_still_held(run_dir)
        raise


def check_still_held(run_dir):
    """A `RunFolderError` where the run folder this process holds (`folder_lock`)
    is no longer where it was: moved, renamed or deleted while the command ran
    (its current directory too, for a relative path). Its writes made the
    folder again, a run without `config.yaml` and lock that no command took,
    exit 0; the run's commits went with the folder, which resumes there."""
    held = _HELD.get(run_dir)
    if held is None:
        return
    (before, setting, _), now = held, None
    try:
        now = os.stat(os.path.join(run_dir, LOCK_FILE))
    except OSError:
        pass
    if now is None or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        raise RunFolderError(
            "The run folder was moved or deleted while this command ran; nothing more is "
            "written. Its last commit went with it: run the command on the folder where it "
            f"is now to resume. Received: {setting}={run_dir!r}")


FINAL_WEIGHTS, FINAL_MODEL, RESULTS = "final.weights.h5", "model.keras", "results.json"
FINAL_FILES = (FINAL_WEIGHTS, FINAL_MODEL, RESULTS)
LAST_WEIGHTS = os.path.join("checkpoints", "last.weights.h5")
# The training metrics' names, which history.csv keeps: they tell how a run
# was trained once its training CSV is gone.
MULTI_LABEL_METRIC, SINGLE_LABEL_METRIC = "pr_auc", "top1"


def remove_final_files(run_dir, names=FINAL_FILES):
    """Before a session commits: the final files of a run that had ended describe
    it no longer. A finished run continued for more epochs and stopped kept its
    old `final.weights.h5`, which `nonlocal-export` and `nonlocal-evaluate`
    prefer to the newer last checkpoint (both exit 0). They are written again
    when the training ends."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, name))


TRAINING_LIST = "training_videos.json"


def training_listing(records):
    """Each training video's labels (a list per row that names it), by path."""
    listing = {}
    for record in records:
        listing.setdefault(record.path, []).append(list(record.labels))
    return {path: sorted(labels) for path, labels in listing.items()}


def _label_sets(labels):
    # A video listed once more or less with the same labels is sampled more or
    # less often, not relabelled.
    return sorted({tuple(found) for found in labels})


def check_training_list(run_dir, records, source):
    """Compares the training videos with those the run was committed with.

    Raises where a video it trained on has other labels now (a list written again
    with other class ids, say: resumed, the run would learn other classes);
    warns of videos added or removed, with which it goes on. Returns whether
    `TRAINING_LIST` is to be written (missing, from a run before it was kept, or
    changed)."""
    try:
        with open(os.path.join(run_dir, TRAINING_LIST), encoding="utf-8") as handle:
            # Absolute as the records are (older runs': relative to where they started).
            before = {os.path.abspath(path): labels
                      for path, labels in json.load(handle)["videos"].items()}
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        logger.warning("Cannot read %s (%s): the training videos are not compared with those "
                       "of the run's start.", os.path.join(run_dir, TRAINING_LIST), error)
        return True
    now = training_listing(records)
    added, removed = set(now) - set(before), set(before) - set(now)
    # A video moved to another folder keeps its name: in a folder per class, that
    # is how it gets another label.
    moved = _same_names(removed, added)
    relabelled = sorted((path, path) for path in set(now) & set(before)
                        if _label_sets(now[path]) != _label_sets(before[path]))
    relabelled += sorted((old, new) for old, new in moved
                         if _label_sets(now[new]) != _label_sets(before[old]))
    if relabelled:
        old, new = relabelled[0]
        raise RunFolderError(
            f"{len(relabelled)} of the training videos have other labels than when this run "
            f"committed its steps (first: {os.path.basename(new)}: {_labels(before[old])} -> "
            f"{_labels(now[new])}): resumed, it would train on other classes. Restore the "
            "list, start over with --restart, or fine-tune from this run in another folder "
            f"(--set model.weights={run_dir} --set runtime.output_dir=...). "
            f"Received: data.train_csv={source!r}")
    if added or removed:
        logger.warning("The training list %s has changed since this run committed its steps: "
                       "%d video(s) added, %d removed; the run goes on with it.",
                       source, len(added), len(removed))
    return bool(added or removed)


def _same_names(removed, added):
    """`(removed path, added path)` pairs of a file name each side has once."""
    def by_name(paths):
        names = {}
        for path in paths:
            names.setdefault(os.path.basename(path), []).append(path)
        return {name: found[0] for name, found in names.items() if len(found) == 1}

    gone, came = by_name(removed), by_name(added)
    return [(gone[name], came[name]) for name in sorted(set(gone) & set(came))]


def _labels(rows):
    return ", ".join(" ".join(map(str, labels)) for labels in rows)


def write_training_list(run_dir, records):
    atomic.write_json(os.path.join(run_dir, TRAINING_LIST),
                      {"videos": training_listing(records)})


def trained_multi_label(run_dir):
    """Whether the run in `run_dir` trained multi-label, from history.csv's
    columns; None when no epoch has finished (or the file is unreadable)."""
    try:
        with open(os.path.join(run_dir, "history.csv"), newline="", encoding="utf-8") as handle:
            columns = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if MULTI_LABEL_METRIC in columns:
        return True
    return False if SINGLE_LABEL_METRIC in columns else None


# The HDF5 attribute in which a run's weights files name their classes (`write_labels`).
LABELS_ATTRIBUTE = "nonlocal_keras.labels"


def labels_of(data_config, multi_label):
    """What a run's weights files say of their classifier (`write_labels`)."""
    return {"class_names": data_config.get("class_names"),
            "num_classes": data_config["num_classes"], "multi_label": bool(multi_label)}


def write_labels(path, labels):
    """Record `labels` (`labels_of`) in the weights file `path`, so that a copy
    taken out of its run folder is still checked against the classes it scores."""
    import h5py

    with h5py.File(path, "a") as handle:
        handle.attrs[LABELS_ATTRIBUTE] = json.dumps(labels)


def read_labels(path):
    """What `write_labels` recorded in `path` (a dict with `class_names`,
    `num_classes` and `multi_label`), or None."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            labels = json.loads(handle.attrs[LABELS_ATTRIBUTE])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return labels if isinstance(labels, dict) else None


def has_commit(run_dir):
    """Whether `run_dir` holds a committed state, which a command resumes from."""
    return os.path.isfile(os.path.join(run_dir, STATE_DIR, STATE_FILE))


class RunState:
    """The committed state of a run: `step` optimiser steps done, epoch `history`, `finished`."""

    def __init__(self, run_dir, steps_per_epoch, labels=None):
        self.run_dir = run_dir
        self.labels = labels  # recorded in each commit's weights (`write_labels`)
        self.steps_per_epoch = steps_per_epoch
        self.folder = os.path.join(run_dir, STATE_DIR)
        self.path = os.path.join(self.folder, STATE_FILE)
        self.step = 0
        self.history = []
        self.finished = False
        # The paths of the run's skipped videos at the commit, and of the epoch it
        # ends in; `skipped` (a `data.SkippedVideos` going on from them) is committed.
        self.skipped_paths, self.skipped_in_epoch = [], []
        self.skipped = None
        self._committed = None
        self._restored = None
        # Called with no argument before the first commit (see the module's text).
        self.before_first_commit = None

    def write_held_back(self, **kwargs):
        """What `before_first_commit` holds, now (once)."""
        held, self.before_first_commit = self.before_first_commit, None
        if held is not None:
            held(**kwargs)

    @property
    def epoch(self):
        """Finished epochs."""
        return self.step // self.steps_per_epoch

    @property
    def step_in_epoch(self):
        return self.step % self.steps_per_epoch

    def read(self):
        """Load `state.json` if there is one; returns whether there was."""
        if not os.path.isfile(self.path):
            return False
        try:
            with open(self.path, encoding="utf-8") as handle:
                committed = json.load(handle)
        except (OSError, ValueError) as error:
            raise RunFolderError(f"Cannot read the resume state {self.path!r} ({error}); move the "
                                 "run folder away to start over.") from None
        if committed.get("format") != FORMAT or committed.get("steps_per_epoch") != self.steps_per_epoch:
            raise RunFolderError(
                f"The run folder was trained with {committed.get('steps_per_epoch')} steps per "
                f"epoch, this command makes {self.steps_per_epoch} (the training set's size, "
                "the batch size or the number of workers changed): it is another experiment. Use "
                f"--restart or another runtime.output_dir. Received: runtime.output_dir={self.run_dir!r}")
        self._committed = committed
        self._take(committed)
        self.finished = committed["finished"]
        return True

    def _take(self, committed):
        self.step, self.history = committed["step"], committed["history"]
        # Commits made before the paths were kept count from none.
        # Runs before a folder per class was read into absolute paths kept them
        # relative to where the run started (the same command resumes from there).
        self.skipped_paths = [os.path.abspath(p) for p in committed.get("skipped_videos", [])]
        self.skipped_in_epoch = [os.path.abspath(p)
                                 for p in committed.get("skipped_in_epoch", [])]

    def restore(self, model):
        """Load the committed weights and optimiser state into `model` (built and compiled)."""
        if self._committed is None:
            return
        candidates = [self._committed] + ([self._committed["previous"]]
                                          if self._committed.get("previous") else [])
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for number, committed in enumerate(candidates):
            path = os.path.join(self.folder, committed["weights"])
            try:
                model.load_weights(path)
            except (OSError, ValueError) as error:
                logger.warning("Cannot load %s (%s)%s", path, error,
                               "; trying the commit before it" if number == 0 else "")
                continue
            if number:
                self._take(committed)
                self.finished = False
            self._restored = committed
            return
        raise RunFolderError(f"None of the committed weights in {self.folder!r} can be read; move "
                             "the run folder away to start over.")

    def commit(self, model, finished=False, metric_sums=None):
        """Write the weights, then the state naming them; keep the last two commits.

        `metric_sums` (`metric_sums(model)` mid-epoch): the epoch's running
        metric sums so far, which a session resumed from this commit adds back
        (`restored_metric_sums`) so that the epoch's history row covers it whole.
        """
        with writing_in_held(self.run_dir):
            self._commit(model, finished, metric_sums)

    def _commit(self, model, finished, metric_sums):
        self.write_held_back()
        name = f"ckpt-{self.step:09d}.weights.h5"
        path = os.path.join(self.folder, name)
        if self._committed is None or self._committed["weights"] != name:
            with atomic.replace(path, atomic.model_size(model)) as temporary:
                model.save_weights(temporary)
                h5_weights.write_block_names(temporary, model)
                if self.labels:
                    write_labels(temporary, self.labels)
        metrics = None
        if metric_sums is not None and self.step_in_epoch:
            metrics = f"ckpt-{self.step:09d}.metrics.npz"
            with atomic.replace(os.path.join(self.folder, metrics)) as temporary, \
                    open(temporary, "wb") as handle:
                np.savez(handle, **metric_sums)
        previous = None
        if self._committed is not None and self._committed["weights"] != name:
            previous = {k: v for k, v in self._committed.items() if k != "previous"}
        elif self._committed is not None:
            previous = self._committed.get("previous")
        if self.skipped is not None:
            self.skipped_paths, self.skipped_in_epoch = self.skipped.paths()
            if not self.step_in_epoch:  # the epoch's row has them (`SkippedVideoSummary`)
                self.skipped_in_epoch = []
        committed = {"format": FORMAT, "steps_per_epoch": self.steps_per_epoch, "step": self.step,
                     "epoch": self.epoch, "weights": name, "metrics": metrics,
                     "history": self.history, "finished": finished, "previous": previous,
                     "skipped_videos": self.skipped_paths,
                     "skipped_in_epoch": self.skipped_in_epoch}
        atomic.write_json(self.path, committed)
        self._committed, self.finished = committed, finished
        self._remove_unreferenced()

    def restored_metric_sums(self):
        """The running metric sums of the commit `restore` loaded, if it was made
        mid-epoch with them (`commit(metric_sums=...)`); else None."""
        name = (self._restored or {}).get("metrics")
        if not name or self._restored["step"] != self.step:
            return None
        try:
            with np.load(os.path.join(self.folder, name)) as saved:
                return {key: saved[key] for key in saved.files}
        except (OSError, ValueError) as error:
            logger.warning("Cannot read %s (%s): the history row of epoch %d covers the steps "
                           "after the resume only.", name, error, self.epoch + 1)
            return None

    def _remove_unreferenced(self):
        keep = {STATE_FILE}
        for committed in (self._committed, self._committed.get("previous") or {}):
            keep.update(committed.get(key) for key in ("weights", "metrics"))
        for name in os.listdir(self.folder):
            if name not in keep and os.path.isfile(os.path.join(self.folder, name)):
                os.remove(os.path.join(self.folder, name))

    def clean(self):
        """Remove what a killed writer left: temporary files, weights no commit names."""
        for folder in (self.run_dir, self.folder, os.path.join(self.run_dir, "checkpoints")):
            atomic.remove_stale(folder)
        if self._committed is not None:
            self._remove_unreferenced()

    def write_history_csv(self):
        """`history.csv` from the committed history: each epoch exactly once."""
        with writing_in_held(self.run_dir):
            atomic.write_text(self._history_csv_path, self._history_csv())

    def copy_last_epoch_weights(self):
        """`checkpoints/last.weights.h5`: the committed weights at an epoch's end."""
        with writing_in_held(self.run_dir), atomic.replace(self._last_weights_path) as temporary:
            shutil.copyfile(self._committed_weights_path, temporary)

    def make_epoch_files_good(self):
        """`history.csv` and `checkpoints/last.weights.h5` as the commit at an epoch's
        end has them, each written only where it differs (a kill between the
        commit and them): rewriting them unchanged needed room on a full disk."""
        try:
            with open(self._history_csv_path, encoding="utf-8") as handle:
                history_good = handle.read() == self._history_csv()
        except (OSError, UnicodeDecodeError):
            history_good = False
        if not history_good:
            self.write_history_csv()
        if not (os.path.isfile(self._last_weights_path) and filecmp.cmp(
                self._committed_weights_path, self._last_weights_path, shallow=False)):
            self.copy_last_epoch_weights()

    @property
    def _history_csv_path(self):
        return os.path.join(self.run_dir, "history.csv")

    @property
    def _last_weights_path(self):
        return os.path.join(self.run_dir, LAST_WEIGHTS)

    @property
    def _committed_weights_path(self):
        return os.path.join(self.folder, self._committed["weights"])

    def _history_csv(self):
        keys = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        return buffer.getvalue()


class CommitState(keras.callbacks.Callback):
    """Commits the run state every `frequency` steps ("epoch": at each epoch's end).

    `offset` is the step within the epoch at which this `fit` call started
    (a run resumed mid-epoch finishes that epoch in a `fit` of its own).
    Only `writer` processes write (the chief of a multi-worker cluster).
    `metrics`: mid-epoch commits keep the epoch's running metric sums, and a
    `fit` resumed from one adds them back, so the epoch's logs and history row
    cover its steps before the resume too (reading them is a collective on a
    cluster of several workers, where only the chief commits: False there).
    """

    def __init__(self, state, frequency, offset=0, writer=True, metrics=False):
        super().__init__()
        self.state, self.frequency, self.offset, self.writer = state, frequency, offset, writer
        self.metrics = metrics
        self._epoch_start = state.epoch * state.steps_per_epoch
        self._last_commit = self._last_step = state.step
        self._resumed_sums = state.restored_metric_sums() if metrics and offset else None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = epoch * self.state.steps_per_epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_start + self.offset + batch + 1
        if self._resumed_sums is not None:
            # Added after the first batch: Keras builds some metrics (AUC) only then.
            _add_metric_sums(self.model, self._resumed_sums, self.state.epoch + 1)
            self._resumed_sums = None
        self._check_finite(logs, step)
        self.state.step = self._last_step = step
        if (self.frequency != "epoch" and self.state.step_in_epoch
                and self.state.step - self._last_commit >= self.frequency):
            self._last_commit = self.state.step
            if self.writer:
                self._commit()

    def _commit(self):
        self.state.commit(self.model,
                          metric_sums=metric_sums(self.model) if self.metrics else None)

    def commit_now(self):
        """Commit the steps done since the last commit, now: the process is about
        to stop. False at an epoch's last step, whose commit (with the epoch's
        history row) comes at the epoch's end."""
        if not self.state.step_in_epoch:
            return False
        if self.writer and self.state.step > self._last_commit:
            self._last_commit = self.state.step
            self._commit()
        return True

    def on_epoch_end(self, epoch, logs=None):
        end = (epoch + 1) * self.state.steps_per_epoch
        if self._last_step != end:
            # Keras ends an epoch whose dataset ran out ("Your input ran out of
            # data") as a whole one: the run counted steps it never trained.
            raise DatasetError(
                f"The training data ran out at step {self._last_step} of the {end} of epoch "
                f"{epoch + 1}: no training video could be decoded (see the warnings above); "
                "nothing of that epoch was saved.")
        self._check_finite(logs, end)
        self.offset = 0
        self.state.step = (epoch + 1) * self.state.steps_per_epoch
        row = {"epoch": epoch + 1}
        row.update({k: _plain(v) for k, v in (logs or {}).items()})
        self.state.history = [r for r in self.state.history if r["epoch"] != epoch + 1] + [row]
        self._last_commit = self.state.step
        if self.writer:
            self.state.commit(self.model)
            self.state.write_history_csv()
            self.state.copy_last_epoch_weights()

    def _check_finite(self, logs, step):
        """A `DivergedError` once the loss (Keras' mean over the epoch so far: it
        stays NaN from the first NaN step on) is not finite, before anything of
        that step is committed. Trained on, every later step is NaN, and the
        run failed only at its first commit (NaN is not JSON) with a traceback."""
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        kept = (f"the run keeps its last commit (step {self._last_commit})" if self._last_commit
                else "nothing was committed")
        raise DivergedError(
            f"The training loss became {float(loss)} at step {step} (epoch "
            f"{(step - 1) // self.state.steps_per_epoch + 1}): training diverged. Nothing of "
            f"that step was saved; {kept}. Lower optimizer.learning_rate (or add "
            "schedule.warmup_epochs) and start over with --restart.")


class DivergedError(UserError):
    """The training loss became NaN or infinite."""


def metric_sums(model):
    """The model's metric variables (Keras' running sums of the epoch so far, summed
    over the replicas) by path."""
    return {variable.path: keras.ops.convert_to_numpy(variable.value.read_value())
            for variable in model.metrics_variables}


def _add_metric_sums(model, sums, epoch):
    """Adds `sums` (`metric_sums` of a commit) to the model's metric variables (on
    the first replica: each replica's share is summed on reading)."""
    variables = {variable.path: variable for variable in model.metrics_variables}
    mismatched = sorted(set(sums) ^ set(variables)) + sorted(
        path for path in set(sums) & set(variables)
        if tuple(sums[path].shape) != tuple(variables[path].shape)
        or getattr(variables[path].value, "aggregation", None) != tf.VariableAggregation.SUM)
    if mismatched:
        logger.warning("The committed metric sums do not fit this model's metrics (%s): the "
                       "history row of epoch %d covers the steps after the resume only.",
                       ", ".join(mismatched), epoch)
        return
    for path, variable in variables.items():
        first = getattr(variable.value, "values", (variable.value,))[0]
        first.assign_add(sums[path])


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
