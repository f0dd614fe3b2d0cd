"""nonlocal-train as a user runs it, under faults: kills, Ctrl-C, errors, reruns.

Each test drives the installed console script in subprocesses on tiny MP4 data.
"""

import json
import os
import random
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import hangup
import loopback
from nonlocal_keras.training import models
from test_training_train import _env, _overrides, _write_dataset

EPOCHS, STEPS = 4, 3
TRAIN = [os.path.join(os.path.dirname(sys.executable), "nonlocal-train")]
# Loads TensorFlow (seconds), then stops with one error line (exit 2). `--list`
# did too until it learnt to answer before TensorFlow loads.
LOADS_TENSORFLOW = TRAIN + ["--config", "no_such_config"]


def _command(csv_path, run_dir, *extra):
    command = list(TRAIN)
    for item in _overrides(csv_path, run_dir, f"schedule.epochs={EPOCHS}",
                           f"schedule.steps_per_epoch={STEPS}", "runtime.backup_freq=2",
                           "runtime.tensorboard=false", *extra):
        command += ["--set", item]
    return command


def _run(command, env=None, timeout=240):
    return subprocess.run(command, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def _env_with_temporary_folder(tmp_path):
    """The CLI's environment with TMPDIR a new empty folder (see `_check_no_temporary_files`)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir(exist_ok=True)
    return dict(_env(), TMPDIR=str(folder))


def _check_no_temporary_files(env):
    # TensorFlow writes a source file there for each function autograph
    # converts and deletes it in an exit handler, which os._exit skips.
    assert os.listdir(env["TMPDIR"]) == []


def _history_epochs(run_dir):
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:]]


def _check_consistent(run_dir, steps=STEPS):
    """What any kill must leave: a readable state whose history has each epoch once."""
    state_path = run_dir / "state" / "state.json"
    if not state_path.exists():
        return
    state = json.loads(state_path.read_text())
    assert (run_dir / "state" / state["weights"]).is_file()
    epochs = [row["epoch"] for row in state["history"]]
    assert epochs == list(range(1, state["step"] // steps + 1)), state
    history = _history_epochs(run_dir)
    assert history == sorted(set(history)), history


@pytest.mark.slow
def test_kills_at_every_kind_of_write_and_at_random_moments_resume_exactly(tmp_path):
    """Ten kills (each kind of write, two seeded random moments), then a clean rerun."""
    import keras

    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    command = _command(csv_path, run_dir)
    # In order they walk one run from its first commits past its end; which
    # write of its kind each run dies at is drawn (seeded), and two die at a
    # random moment. After training, a run's first state.json is the final commit.
    rng = random.Random(1234)
    kills = [f"ckpt-:{rng.randint(1, 2)}", f"history.csv:{rng.randint(1, 2)}",
             f"state.json:{rng.randint(1, 3)}", f"last.weights.h5:{rng.randint(1, 2)}", "random",
             "final.weights.h5:1", "model.keras:1", "random", "results.json:1", "state.json:1"]
    codes = []
    for index, kill in enumerate(kills):
        env = _env_with_temporary_folder(tmp_path)  # where the killed runs leave theirs
        if kill == "random":
            # The next kind of write is a backstop: on a fast machine the rest of
            # the run can finish before the random moment (it did, on a Zen 5).
            env["NONLOCAL_KERAS_KILL_AT"] = kills[index + 1]
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 5.0))  # start-up, data checks or training
            process.send_signal(signal.SIGKILL)
            code = process.wait(timeout=60)
        else:
            env["NONLOCAL_KERAS_KILL_AT"] = kill
            code = _run(command, env).returncode
        codes.append((kill, code))
        _check_consistent(run_dir)
    assert [code for _, code in codes] == [-signal.SIGKILL] * len(kills), codes

    finished = _run(command)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == EPOCHS * STEPS
    assert _history_epochs(run_dir) == list(range(1, EPOCHS + 1))
    model = keras.models.load_model(run_dir / "model.keras")
    assert int(model.optimizer.iterations) == EPOCHS * STEPS
    for name in ("final.weights.h5", "checkpoints/last.weights.h5"):
        model.load_weights(run_dir / name)
    assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp-")]

    # The same command again: finished, nothing trained, nothing rewritten.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = _run(command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has finished" in again.stderr
    assert json.loads(again.stdout[again.stdout.index("{"):])["steps"] == EPOCHS * STEPS
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_more_epochs_continue_a_finished_run_and_restart_moves_it_aside(tmp_path):
    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    assert _run(_command(csv_path, run_dir, "schedule.epochs=1")).returncode == 0
    # Continued, and stopped before its end: the first end's final files no
    # longer describe the run (export and evaluate took its epoch-1 weights).
    env = dict(_env(), NONLOCAL_KERAS_KILL_AT="final.weights.h5:1")
    assert _run(_command(csv_path, run_dir, "schedule.epochs=2"), env).returncode == -signal.SIGKILL
    assert _history_epochs(run_dir) == [1, 2]
    assert not [name for name in ("final.weights.h5", "model.keras", "results.json")
                if (run_dir / name).exists()]
    assert models.weights_file(str(run_dir)) == str(run_dir / "checkpoints" / "last.weights.h5")
    assert _run(_command(csv_path, run_dir, "schedule.epochs=2")).returncode == 0
    more = _run(_command(csv_path, run_dir, "schedule.epochs=3"))
    assert more.returncode == 0, more.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 3 * STEPS and results["steps_run_this_session"] == STEPS
    assert _history_epochs(run_dir) == [1, 2, 3]

    restarted = _run(_command(csv_path, run_dir, "schedule.epochs=1", "optimizer.momentum=0.5")
                     + ["--restart"])
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == STEPS
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _history_epochs(aside[0]) == [1, 2, 3]


@pytest.mark.slow
def test_a_kill_after_the_last_epochs_commit_is_made_good_by_the_rerun(tmp_path):
    """Killed between the last epoch's commit and its history row or
    checkpoints/last.weights.h5 (only `fit` wrote them), the rerun finished
    the run without them: history.csv lacked that epoch, last.weights.h5 held
    the epoch before, for good."""
    import h5py

    csv_path = _write_dataset(tmp_path, count=12)
    for kill in ("history.csv:2", "last.weights.h5:2"):
        run_dir = tmp_path / kill.split(".")[0]
        command = _command(csv_path, run_dir, "schedule.epochs=2")
        env = dict(_env(), NONLOCAL_KERAS_KILL_AT=kill)
        assert _run(command, env).returncode == -signal.SIGKILL
        finished = _run(command)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert _history_epochs(run_dir) == [1, 2]
        committed = json.loads((run_dir / "state" / "state.json").read_text())["weights"]

        def arrays(path):
            with h5py.File(path, "r") as handle:
                found = []
                handle.visititems(lambda name, item: found.append(
                    (name, item[()].tobytes())) if isinstance(item, h5py.Dataset) else None)
                return sorted(found)

        assert arrays(run_dir / "checkpoints" / "last.weights.h5") == arrays(
            run_dir / "state" / committed)


@pytest.mark.slow
def test_a_failed_command_leaves_the_run_folder_byte_identical(tmp_path):
    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    assert _run(_command(csv_path, run_dir, "schedule.epochs=1")).returncode == 0

    def snapshot():
        return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    before = snapshot()
    for bad in ("model.name=NoSuchNet", "model.width=abc", "train.batch_size=abc",
                "optimizer.learning_rate=0.5", "data.num_classes=7",
                "data.train_csv=/nonexistent.csv"):
        result = _run(_command(csv_path, run_dir, "schedule.epochs=1", bad))
        assert result.returncode == 2, (bad, result.stderr[-2000:])
        lines = [line for line in result.stderr.splitlines()
                 if line.startswith("nonlocal-train: error: ")]
        assert len(lines) == 1 and "Traceback" not in result.stderr, (bad, result.stderr)
        assert snapshot() == before, bad


@pytest.mark.slow
def test_no_possible_step_is_an_error_naming_the_counts(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    csv_path = _write_dataset(broken, count=8, bad=range(8))
    result = _run(_command(csv_path, tmp_path / "run1"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "None of the 8 training videos could be decoded" in result.stderr
    assert not (tmp_path / "run1" / "results.json").exists()
    # Each video listed twice (oversampling): counted by rows, the 8 failed files
    # never reached the 16 rows, and the run ended "finished" after no step, exit 0.
    lines = open(csv_path, encoding="utf-8").read().splitlines()
    twice = broken / "twice.csv"
    twice.write_text("\n".join(lines[:1] + lines[1:] * 2) + "\n")
    result = _run(_command(twice, tmp_path / "run3"), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "None of the 8 training videos could be decoded" in result.stderr
    assert not (tmp_path / "run3" / "results.json").exists()

    few = tmp_path / "few"
    few.mkdir()
    csv_path = _write_dataset(few, count=3)
    result = _run(_command(csv_path, tmp_path / "run2"))
    assert result.returncode == 2
    assert "3 video(s), fewer than one global batch" in result.stderr
    assert "train.batch_size=4" in result.stderr
    assert not (tmp_path / "run2").exists()


def _finish_the_run(command, env, run_dir, epochs, steps):
    """The same command again ends the run with exactly `epochs` x `steps` steps."""
    again = _run(command, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == epochs * steps
    assert _history_epochs(run_dir) == list(range(1, epochs + 1))


def _wait_for(process, predicate, seconds):
    deadline = time.time() + seconds
    while not predicate():
        assert process.poll() is None, "the run ended before the moment to interrupt it"
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


def _signal_after_a_commit(process, run_dir, delay, signum, seconds):
    """Send `signum` `delay` seconds after `process` has committed a step (inside `fit`:
    an epoch of this process is done); `(stderr, the committed step)` once it has ended,
    which it must within `seconds`."""
    state_file = run_dir / "state" / "state.json"
    start_step = json.loads(state_file.read_text())["step"] if state_file.exists() else 0
    _wait_for(process, lambda: state_file.exists() and
              json.loads(state_file.read_text())["step"] > start_step, 120)
    committed = json.loads(state_file.read_text())["step"]
    time.sleep(delay)
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running {seconds} s after signal {signum}")
    return stderr, committed


def test_debug_shows_the_traceback_above_the_line_and_keeps_exit_2():
    """With --debug a user's mistake was re-raised: a traceback and exit 1, which
    the README says means a bug."""
    result = _run(LOADS_TENSORFLOW + ["--debug"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "nonlocal-train: error: No such config file")


def test_ctrl_c_while_tensorflow_loads_is_one_line_and_exit_130():
    """Before `cli.run` takes Ctrl-C over, the interrupt must neither print a traceback
    nor be swallowed (raised inside the imports, it could land in a gc callback and
    the command went on: it would print its error and exit 2)."""
    for delay in (0.3, 0.7, 1.1):  # TensorFlow takes seconds to load
        process = subprocess.Popen(LOADS_TENSORFLOW, env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        assert (process.returncode, stdout, stderr) == (
            130, "", "nonlocal-train: interrupted\n"), delay


def test_sighup_while_tensorflow_loads_is_one_line_and_exit_129(tmp_path):
    """A terminal closed during start-up. Output into files, which keep the line."""
    for delay in (0.3, 1.1):
        with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
            process = subprocess.Popen(LOADS_TENSORFLOW, env=_env(), stdout=out, stderr=err,
                                       preexec_fn=hangup.as_without_nohup)
            time.sleep(delay)
            process.send_signal(signal.SIGHUP)
            assert process.wait(timeout=60) == 129, delay
            out.seek(0), err.seek(0)
            assert (out.read(), err.read()) == ("", "nonlocal-train: hung up\n"), delay


def test_after_a_hangup_output_goes_to_dev_null_unless_it_is_a_file(tmp_path):
    """The vanished terminal (or the pipe of a `tee` the hangup ended) fails every
    write; a file does not, and keeps the lines."""
    code = ("import os, sys; from nonlocal_keras.console import leave_terminal; "
            "print('before', flush=True); print('before', file=sys.stderr, flush=True); "
            "leave_terminal(); "
            "print('after', flush=True); print('after', file=sys.stderr, flush=True)")
    with open(tmp_path / "err", "w+") as err:
        result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=err, text=True, timeout=60)
        err.seek(0)
        assert (result.returncode, result.stdout, err.read()) == (
            0, "before\n", "before\nafter\n")


def test_under_nohup_sighup_changes_nothing():
    """`nohup` ignores SIGHUP so that the command outlives the terminal: it must stay
    ignored, during start-up and after."""
    process = subprocess.Popen(
        LOADS_TENSORFLOW, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    for delay in (0.3, 0.8, 1.5, 2.5):
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGHUP)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr[-2000:]  # its own error: it went on to the end
    assert "Received: config='no_such_config'" in stderr.splitlines()[-1]


def test_on_a_terminal_the_interrupt_line_starts_a_line_of_its_own():
    """Ctrl-C typed on a terminal: its `^C` (or a progress bar drawn in place) leaves
    the cursor mid-line, where the one line had been appended."""
    import pty

    pid, terminal = pty.fork()
    if pid == 0:  # the child, with the terminal as its controlling one
        os.execve(TRAIN[0], LOADS_TENSORFLOW, _env())
    time.sleep(0.7)  # TensorFlow is loading
    os.write(terminal, b"\x03")  # what pressing Ctrl-C sends
    output = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # the child closed it
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130, output
    assert output.endswith(b"\r\nnonlocal-train: interrupted\r\n"), output


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_log_on_a_full_disk_loses_the_lines_not_the_training(tmp_path):
    """`nonlocal-train ... > train.log` on a disk that fills: the first line it
    could not write was an OSError traceback from the console, exit 1, and the
    training stopped there. Now it trains to the end, and exit 2 says the output
    was not all written."""
    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    with open("/dev/full", "w") as full:
        result = subprocess.run(_command(csv_path, run_dir, "schedule.epochs=1"), env=_env(),
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == ("nonlocal-train: error: its output on stdout "
                                              "could not be written (No space left on device).")
    assert json.loads((run_dir / "results.json").read_text())["steps"] == STEPS


def test_a_log_file_gets_a_line_an_epoch_and_no_redraw_characters(tmp_path):
    """`runtime.verbose` left at "auto", output into pipes (a log file, `nohup`, a
    batch scheduler): Keras' bar had written carriage returns, backspaces and colour
    codes there (it takes every POSIX process for an interactive one), and so had
    the final evaluation's."""
    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    result = _run(_command(csv_path, run_dir, "schedule.epochs=2", "runtime.verbose=auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    for output in (result.stdout, result.stderr):
        assert not set(output) & {"\r", "\b", "\x1b"}, output[:3000]
    epoch_lines = [line for line in result.stdout.splitlines()
                   if line.startswith(f"{STEPS}/{STEPS} - ") and "loss: " in line]
    assert len(epoch_lines) == 2, result.stdout
    # And, for epochs that take hours, a line at each tenth of an epoch (here a third).
    for epoch in (1, 2):
        assert f"\nEpoch {epoch}/2: 1/{STEPS} steps, " in result.stdout, result.stdout
    assert result.stderr.splitlines()[-1].startswith("12/12 videos in "), result.stderr


def test_a_full_disk_is_one_line_and_the_same_command_runs_once_there_is_room(tmp_path):
    """A write the storage refuses (here a file size limit, `RLIMIT_FSIZE`, below the size
    of the run's config.yaml: the way a test can fill a disk) was a traceback and exit 1."""
    import resource

    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    command = _command(csv_path, run_dir, "schedule.epochs=1")
    env = _env_with_temporary_folder(tmp_path)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal's kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    full = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          preexec_fn=limit_file_size)
    assert full.returncode == 2, full.stderr[-3000:]
    assert full.stderr.splitlines()[-1] == (
        f"nonlocal-train: error: Cannot write '{run_dir / 'config.yaml'}' (File too large); the "
        "file there before, if any, is unchanged. The run keeps its last commit: free space (or "
        "fix the permissions) and run the same command again to resume."), full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert sorted(os.listdir(run_dir)) == [".lock", "state"]  # no temporary file left
    _check_no_temporary_files(env)

    again = _run(command, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == STEPS


@pytest.mark.parametrize("folder", ["state", ""])
def test_a_run_folder_moved_just_after_the_check_is_not_made_again_at_its_path(
        tmp_path, monkeypatch, folder):
    """Moved between `writing_in_held`'s check and a commit's write, the run folder
    (and its `state/`) was made again at its old path, and the write went there."""
    from nonlocal_keras.training import atomic, run_state

    run_dir, moved = str(tmp_path / "run"), tmp_path / "moved"
    checked = run_state.check_still_held

    def moved_after_the_check(held):
        checked(held)
        if os.path.isdir(run_dir):
            os.rename(run_dir, moved)

    with run_state.folder_lock(run_dir):
        monkeypatch.setattr(run_state, "check_still_held", moved_after_the_check)
        with pytest.raises(run_state.RunFolderError, match="moved or deleted"):
            with run_state.writing_in_held(run_dir):
                atomic.write_json(os.path.join(run_dir, folder, "state.json"), {"step": 2})
    assert os.listdir(tmp_path) == ["moved"]
    # A folder the write needed is made where the run is now, empty.
    assert sorted(os.listdir(moved)) == sorted([".lock", folder] if folder else [".lock"])
    assert not folder or os.listdir(moved / folder) == []


@pytest.mark.parametrize("command, argv, status, last_line", [
    ("nonlocal-train", ["--help"], 0, None),
    ("nonlocal-train", ["quick_start"], 2, "nonlocal-train: error: unrecognized arguments: quick_start"),
    ("nonlocal-predict", [], 2,
     "nonlocal-predict: error: the following arguments are required: VIDEO, --model"),
])
def test_help_and_usage_errors_leave_as_argparse_says(command, argv, status, last_line):
    """argparse leaves through SystemExit, which the console scripts' last resort for
    bugs had caught: `--help` printed its text, then a traceback, and exited 1; so
    did every usage error."""
    script = os.path.join(os.path.dirname(sys.executable), command)
    result = subprocess.run([script, *argv], env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == status, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if status == 0:
        assert result.stdout.startswith(f"usage: {command} ")
        assert result.stderr == ""
    else:
        assert result.stdout == ""
        assert result.stderr.startswith(f"usage: {command} ")
        assert result.stderr.splitlines()[-1] == last_line


@pytest.mark.slow
def test_ctrl_c_stops_within_seconds_exits_130_and_resumes(tmp_path):
    """Three SIGINTs at seeded random moments of training, each run resuming the last."""
    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    command = _command(csv_path, run_dir, "schedule.epochs=2000", "runtime.backup_freq=epoch")
    rng = random.Random(99)
    env = _env_with_temporary_folder(tmp_path)
    for trial in range(3):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        # Ended within 20 s of the signal, or the helper fails.
        stderr, _ = _signal_after_a_commit(process, run_dir, rng.uniform(0.0, 1.5),
                                           signal.SIGINT, 20)
        assert process.returncode == 130, (trial, stderr[-2000:])
        assert "nonlocal-train: interrupted" in stderr and "Traceback" not in stderr
        _check_consistent(run_dir)
        _check_no_temporary_files(env)


@pytest.mark.slow
def test_sigterm_commits_the_steps_it_trained_then_exits_143_and_the_run_resumes(tmp_path):
    """What a scheduler preempting the job sends: the process had died at once (-15),
    losing every step since the epoch's commit; now it commits after the step in progress.
    SIGTERM at seeded random moments after the first epoch of three new runs (inside their
    one `fit`), then the same command finishes the last one."""
    csv_path = _write_dataset(tmp_path, count=12)
    steps, epochs = 150, 3
    rng = random.Random(7)
    env = _env_with_temporary_folder(tmp_path)
    for trial in range(3):
        run_dir = tmp_path / f"run{trial}"
        command = _command(csv_path, run_dir, f"schedule.epochs={epochs}",
                           f"schedule.steps_per_epoch={steps}", "runtime.backup_freq=epoch")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        stderr, committed = _signal_after_a_commit(process, run_dir, rng.uniform(0.0, 0.5),
                                                   signal.SIGTERM, 30)
        assert (process.returncode, stderr.splitlines()[-1]) == (
            143, "nonlocal-train: terminated"), stderr[-2000:]
        # The steps after the epoch's commit were committed too (at least the one in progress).
        state = json.loads((run_dir / "state" / "state.json").read_text())
        assert state["step"] > committed == steps, trial
        _check_consistent(run_dir, steps)
        _check_no_temporary_files(env)
    _finish_the_run(command, env, run_dir, epochs, steps)


@pytest.mark.slow
def test_a_closed_terminal_commits_the_steps_it_trained_then_exits_129(tmp_path):
    """An SSH session dropped without tmux or `nohup`: the run had died at once of
    SIGHUP, losing every step since the epoch's commit. Now it is a SIGTERM whose
    output goes nowhere. First the terminal itself closes (the run's controlling
    terminal, whose writes then fail); then the run writes into pipes whose reader
    is gone (a `| tee log` the hangup ended) and gets SIGHUP twice (the kernel's and
    the shell's), as soon as it has committed an epoch. Then the same command
    finishes the run."""
    import pty

    csv_path = _write_dataset(tmp_path, count=12)
    steps, epochs = 150, 4
    env = _env_with_temporary_folder(tmp_path)
    run_dir = tmp_path / "run"
    command = _command(csv_path, run_dir, f"schedule.epochs={epochs}",
                       f"schedule.steps_per_epoch={steps}", "runtime.backup_freq=epoch")
    state_file = run_dir / "state" / "state.json"

    def committed():
        return json.loads(state_file.read_text())["step"] if state_file.exists() else 0

    pid, terminal = pty.fork()
    if pid == 0:  # the child, with the terminal as its controlling one
        hangup.as_without_nohup()
        os.execve(command[0], command, env)
    deadline = time.time() + 120
    while committed() == 0:  # the terminal is read, as a terminal is, until then
        assert time.time() < deadline, "no commit within 120 s"
        if select.select([terminal], [], [], 0.05)[0]:
            os.read(terminal, 65536)
    first = committed()
    time.sleep(random.Random(11).uniform(0.0, 0.2))  # an epoch takes 0.3-1.5 s
    os.close(terminal)  # what sshd does when the connection drops
    _, status = _waitpid(pid, 30)
    assert os.waitstatus_to_exitcode(status) == 129
    assert committed() > first == steps
    _check_no_temporary_files(env)

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=hangup.as_without_nohup)
    left = committed()
    _wait_for(process, lambda: committed() > left, 120)  # this run's first commit
    second = committed()
    process.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    process.stdout.close(), process.stderr.close()
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=30) == 129
    # Equal when the signal came while the epoch's end was still being committed.
    assert committed() >= second
    _check_consistent(run_dir, steps)
    _check_no_temporary_files(env)
    _finish_the_run(command, env, run_dir, epochs, steps)


@pytest.mark.slow
def test_a_background_run_outlives_its_closed_terminal(tmp_path):
    """`cmd &` then `exit`: the shell sends no SIGHUP (as for `disown`, or SIGHUP
    ignored), and the job goes on writing its progress bar to a terminal that is
    gone. Its first failed write (EIO) broke the step, and the process then hung
    for good in the interpreter's shutdown, holding the run folder's lock. Now the
    output goes to /dev/null and the run finishes."""
    import pty

    csv_path = _write_dataset(tmp_path, count=12)
    steps, epochs = 150, 3
    env = _env_with_temporary_folder(tmp_path)
    run_dir = tmp_path / "run"
    command = _command(csv_path, run_dir, f"schedule.epochs={epochs}",
                       f"schedule.steps_per_epoch={steps}", "runtime.backup_freq=epoch",
                       "runtime.verbose=1")  # the bar writes at every step
    state_file = run_dir / "state" / "state.json"
    pid, terminal = pty.fork()
    if pid == 0:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execve(command[0], command, env)
    deadline = time.time() + 120
    while not state_file.exists():
        assert time.time() < deadline, "no commit within 120 s"
        if select.select([terminal], [], [], 0.05)[0]:
            os.read(terminal, 65536)
    os.close(terminal)
    _, status = _waitpid(pid, 120)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads((run_dir / "results.json").read_text())["steps"] == epochs * steps
    _check_no_temporary_files(env)


def _waitpid(pid, seconds):
    deadline = time.time() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return done, status
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"still running {seconds} s after the terminal closed")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_diverging_run_stops_at_its_first_nan_loss_and_keeps_its_last_commit(tmp_path):
    """A learning rate far too high: the loss turns NaN after the first update. The run
    trained on to its first commit, which failed with a traceback (NaN is not JSON),
    exit 1; the same command did it again. Now: one line, exit 2, and the commit before
    the NaN (a commit every step here) stays the run's state, finite."""
    import h5py

    csv_path = _write_dataset(tmp_path, count=12)
    run_dir = tmp_path / "run"
    result = _run(_command(csv_path, run_dir, "optimizer.learning_rate=1e30",
                           "runtime.backup_freq=1"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.splitlines()[-1]
    assert line.startswith("nonlocal-train: error: The training loss became nan at step "), line
    diverged = int(line.split(" at step ")[1].split()[0])
    state = json.loads((run_dir / "state" / "state.json").read_text())  # strict: no NaN
    assert state["step"] == diverged - 1 >= 1, (state, line)
    assert f"keeps its last commit (step {state['step']})" in line
    with h5py.File(run_dir / "state" / state["weights"], "r") as weights:
        arrays = []
        weights.visititems(lambda name, item: arrays.append(item[()])
                           if isinstance(item, h5py.Dataset) and item.dtype.kind == "f" else None)
    assert arrays and all(np.isfinite(a).all() for a in arrays)
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
def test_an_error_in_the_first_step_exits_nonzero_promptly(tmp_path):
    csv_path = _write_dataset(tmp_path, count=8)
    for trial in range(3):  # the failure is the same each time: repeats catch an occasional hang
        command = _command(csv_path, tmp_path / f"run{trial}",
                           "model.name=training_tiny_model:failing_video_net")
        start = time.time()
        env = _env_with_temporary_folder(tmp_path)
        result = _run(command, env=env, timeout=90)
        assert result.returncode not in (0, 2), result.stderr[-2000:]
        assert "injected failure in the first training step" in result.stderr
        assert time.time() - start < 90
        _check_no_temporary_files(env)


@pytest.mark.slow
def test_fine_tuning_to_another_class_count_the_charades_way(tmp_path):
    """Train 3 classes single-label, then fine-tune its run folder multi-label on 4."""
    import keras

    csv_path = _write_dataset(tmp_path, count=12)
    source = tmp_path / "source"
    env = _env_with_temporary_folder(tmp_path)
    assert _run(_command(csv_path, source, "schedule.epochs=1"), env=env).returncode == 0
    _check_no_temporary_files(env)
    rows = [f"{i:03d}.mp4,{i % 3} {3 if i % 2 else ''}".strip() for i in range(12)]
    multi = tmp_path / "multi.csv"
    multi.write_text("path,labels\n" + "\n".join(rows) + "\n")
    target = tmp_path / "target"
    result = _run(_command(str(multi), target, "schedule.epochs=1", "data.num_classes=4",
                           f"model.weights={source}"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Left new (freshly initialised)" in result.stderr
    assert "(file: (4, 3))" in result.stderr  # the classifier kernel: 4 channels, 3 classes
    results = json.loads((target / "results.json").read_text())
    assert "mAP" in results["eval"]
    # A folder per class against it was said to be "single-label (a 'label' column)".
    from nonlocal_keras.training import errors, evaluate

    (tmp_path / "per_class" / "0").mkdir(parents=True)
    with pytest.raises(errors.ConfigError, match=r"trained multi-label .*evaluation CSV is "
                       r"single-label \(a folder per class\)"):
        evaluate.main(["--run-dir", str(target), "--set", f"data.val_csv={tmp_path / 'per_class'}"])
    # Every weight but the classifier's came from the source run (before training moved it).
    source_model = keras.models.load_model(source / "model.keras")
    tuned = keras.models.load_model(target / "model.keras")
    assert tuned.output_shape == (None, 4)
    assert source_model.layers[1].kernel.shape == tuned.layers[1].kernel.shape

    wrong = _run(_command(csv_path, tmp_path / "wrong", "schedule.epochs=1", "model.width=8",
                          f"model.weights={source / 'final.weights.h5'}"))
    assert wrong.returncode == 2
    assert "do not fit" in wrong.stderr and "outside its classifier" in wrong.stderr
    assert np.isfinite(results["eval"]["mAP"])


# Who is stopped, and how, in turn in one run (each case once took a run of its own).
CLUSTER_STOPS = [("kill_the_other_worker", (1,), signal.SIGKILL),
                 ("kill_the_chief", (0,), signal.SIGKILL),
                 ("sigterm_to_the_chief", (0,), signal.SIGTERM),
                 ("sigterm_to_the_other_worker", (1,), signal.SIGTERM),
                 ("sigterm_to_both", (1, 0), signal.SIGTERM)]


@pytest.mark.slow
def test_two_worker_cluster_on_loopback_trains_is_stopped_and_resumes(tmp_path):
    """MultiWorkerMirroredStrategy, two processes on 127.0.0.1: each decodes its
    half of the videos, only the chief writes; one run is stopped in each way of
    CLUSTER_STOPS in turn, both workers restarting after each, then finishes.
    kill -9 of the other worker: the chief fails. SIGTERM to either worker (a
    scheduler preempting its host): TensorFlow's coordination service had taken
    SIGTERM over and the whole run trained on to its end, exit 0; then the
    terminated worker left alone, and when it was not the chief, the chief failed
    keeping only its last (epoch) commit. Now both stop after the same step, the
    chief commits it, and both exit 143; also when both are terminated (a whole
    job preempted or cancelled)."""
    csv_path = _write_dataset(tmp_path, count=16)
    run_dir = tmp_path / "run"
    # Enough epochs that the chief is still training at the last stop.
    epochs, steps = 30, 16 // 4  # what one process makes with the global batch of 4
    command = list(TRAIN)
    for item in _overrides(csv_path, run_dir, f"schedule.epochs={epochs}",
                           "runtime.strategy=multi_worker", "runtime.tensorboard=false",
                           "runtime.backup_freq=epoch"):
        command += ["--set", item]
    ports = loopback.free_ports(2)

    def start(index):
        env = _env_with_temporary_folder(tmp_path)  # the killed worker leaves its folder
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
        if index:
            # The non-chief must write nothing: its first atomic write would kill it.
            env["NONLOCAL_KERAS_KILL_AT"] = ".:1"
        log = open(tmp_path / f"worker{index}.log", "w")  # this start's
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def logs():
        return "\n".join((tmp_path / f"worker{i}.log").read_text()[-2000:] for i in (0, 1))

    def committed():
        return json.loads(state_file.read_text())["step"] if state_file.exists() else 0

    state_file = run_dir / "state" / "state.json"
    workers = []
    try:
        for case, victims, signum in CLUSTER_STOPS:
            before = committed()
            workers = [start(0), start(1)]
            _wait_for(workers[0], lambda: committed() > before, 240)
            time.sleep(0.3)
            at_signal = committed()
            for victim in victims:
                workers[victim].send_signal(signum)
            # Neither may hang on its dead peer: the cluster's health check fails it.
            try:
                statuses = [worker.wait(timeout=120) for worker in workers]
            except subprocess.TimeoutExpired:
                pytest.fail(f"{case}: a worker hung after its peer stopped:\n" + logs())
            if before:
                assert "Resuming at epoch" in (tmp_path / "worker1.log").read_text(), logs()
            if signum == signal.SIGKILL:
                survivor = 1 - victims[0]
                assert statuses[survivor] == 2, (case, logs())
                last = (tmp_path / f"worker{survivor}.log").read_text().strip().splitlines()[-1]
                assert last.startswith("nonlocal-train: error: A worker of the cluster"), \
                    (case, logs())
                assert committed() % steps == 0, case  # epoch commits
            else:
                assert statuses == [143, 143], (case, logs())
                for index in (0, 1):
                    said = (tmp_path / f"worker{index}.log").read_text()
                    assert said.strip().splitlines()[-1] == "nonlocal-train: terminated", \
                        (case, logs())
                if len(victims) == 1:
                    peer = (tmp_path / f"worker{1 - victims[0]}.log").read_text()
                    assert "A worker of the cluster was terminated: every worker stops" in peer, \
                        (case, logs())
                # The steps since the epoch's commit.
                assert at_signal < committed() < epochs * steps, case
        workers = [start(0), start(1)]
        for worker in workers:
            assert worker.wait(timeout=300) == 0, logs()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == epochs * steps and results["replicas"] == 2
    assert _history_epochs(run_dir) == list(range(1, epochs + 1))
    assert "Resuming at epoch" in (tmp_path / "worker1.log").read_text()
    # The final evaluation: each worker scored half of the videos (each scored
    # all of them before), and the chief reports all of them.
    for index in (0, 1):
        said = (tmp_path / f"worker{index}.log").read_text()
        assert f"Worker {index} of 2 evaluates 8 of the 16 videos." in said, logs()
    assert results["eval"]["num_videos"] == 16 and results["eval"]["skipped_videos"] == 0
