"""--help, a usage error and `nonlocal-train --list` are answered before TensorFlow
loads (it took 3-4 s of every such command), by the parsers the commands use."""

import os
import subprocess
import sys

import pytest

from nonlocal_keras import command_lines

# console function -> the module whose `main` it runs
SCRIPTS = {"nonlocal-train": ("train", "training.train"),
           "nonlocal-evaluate": ("evaluate", "training.evaluate"),
           "nonlocal-export": ("export", "training.export"),
           "nonlocal-predict": ("predict", "training.predict"),
           "nonlocal-demo": ("demo", "training.demo"),
           "nonlocal-convert-weights": ("convert_weights", "applications.caffe2_weights"),
           "nonlocal-serving-example": ("serving_example", "training.serving_example")}


def _console(function, *argv):
    """Run `nonlocal_keras.console.<function>` with TensorFlow made unimportable."""
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
            f"sys.argv = {[function, *argv]!r}; "
            f"from nonlocal_keras import console; console.{function}()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONWARNINGS="ignore"))


def test_every_console_script_but_detection_is_answered_here():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.cfg"))
    scripts = dict(line.split(" = ") for line in
                   setup["options.entry_points"]["console_scripts"].strip().splitlines())
    assert {prog: scripts[prog] for prog in SCRIPTS} == {
        prog: f"nonlocal_keras.console:{function}" for prog, (function, _) in SCRIPTS.items()}
    assert sorted(SCRIPTS) == sorted(command_lines.PARSERS)
    assert set(scripts) - set(SCRIPTS) == {"nonlocal-train-detection"}  # absl's flags


@pytest.mark.parametrize("prog, function, module", [(p, *f) for p, f in SCRIPTS.items()])
def test_help_and_usage_errors_need_no_tensorflow(prog, function, module):
    helped = _console(function, "--help")
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert helped.stdout.startswith(f"usage: {prog} ")
    description = command_lines.PARSERS[prog]().description
    assert description.strip().splitlines()[0] in helped.stdout
    if module.startswith("training."):  # theirs is the module's docstring
        assert description == __import__(f"nonlocal_keras.{module}", fromlist=["_"]).__doc__
    wrong = _console(function, "--no-such-flag", "--debug")
    last = wrong.stderr.splitlines()[-1]
    assert wrong.returncode == 2 and last.startswith(f"{prog}: error: "), wrong.stderr[-2000:]
    assert "--no-such-flag" in last or "arguments are required" in last, last


def test_list_needs_no_tensorflow_and_lists_the_shipped_video_configs():
    from nonlocal_keras.training import config as config_lib

    listed = _console("train", "--list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = listed.stdout.split()
    assert names == config_lib.list_configs() and "kinetics_nl_c2d_r50" in names
    assert not [n for n in names if n.startswith(("maskrcnn_", "keypoint"))]
    shipped = os.listdir(os.path.join(os.path.dirname(config_lib.__file__), "configs"))
    assert sorted(n + ".yaml" for n in names) == sorted(
        f for f in shipped if not f.startswith(("maskrcnn_", "keypoint")))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_output_that_cannot_be_written_is_one_line_and_exit_2():
    """`> /dev/full` (a full disk) and a closed stdout (`>&-`) were tracebacks,
    exit 1 and exit 120; a closed stderr took stdout's place in the error."""
    def run(**streams):
        code = ("import sys; sys.argv = ['train', '--list']; "
                "from nonlocal_keras import console; console.train()")
        return subprocess.run([sys.executable, "-c", code], text=True, timeout=120,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"), **streams)

    with open("/dev/full", "w") as full:
        result = run(stdout=full, stderr=subprocess.PIPE)
    assert (result.returncode, result.stderr) == (2, (
        "nonlocal-train: error: its output on stdout could not be written (No space left on "
        "device).\n"))
    result = run(stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", (
        "nonlocal-train: error: its output on stdout could not be written (closed when the "
        "command started).\n"))
    result = run(stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert (result.returncode, result.stderr) == (0, "")
    assert "kinetics_nl_c2d_r50" in result.stdout.split()
    # Open for reading only (`1</dev/null`; a script run with `2>&-` hands on its
    # own file as 2): an OSError traceback, exit 1, mid-training (a walk).
    with open(os.devnull) as read_only:
        result = run(stdout=read_only, stderr=subprocess.PIPE)
    assert (result.returncode, result.stderr) == (2, (
        "nonlocal-train: error: its output on stdout could not be written (Bad file "
        "descriptor).\n"))


def test_a_closed_standard_descriptor_is_not_given_to_the_next_file(tmp_path):
    """A file opened while descriptor 2 was closed took its number: every log
    line of TensorFlow's C++ code would have gone into it."""
    code = ("from nonlocal_keras import console; console._occupy_closed_descriptors(); "
            f"print(open({str(tmp_path / 'f')!r}, 'w').fileno())")
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            timeout=60, preexec_fn=lambda: os.close(2))
    assert result.returncode == 0 and int(result.stdout) > 2, result


def test_the_commands_parse_with_these_parsers():
    from nonlocal_keras.training import export, predict, train

    assert train.main(["--list"]) == 0
    with pytest.raises(SystemExit):
        predict.main(["video.mp4"])  # --model is required, by the same parser
    assert export.DEFAULT_MAX_FRAME_SIDE == command_lines.export_parser().parse_args(
        ["--config", "c", "--output", "o"]).max_frame_side


@pytest.mark.parametrize("parser, required", [
    (command_lines.train_parser, []), (command_lines.evaluate_parser, []),
    (command_lines.export_parser, ["--config", "c", "--output", "o"]),
    (command_lines.demo_parser, [])])
def test_one_set_takes_several_fields_and_a_repeated_one_adds_to_them(parser, required):
    """`--set a=1 b=2` was "unrecognized arguments: b=2", exit 2."""
    args = parser().parse_args(required + ["--set", "a=1", "b=2", "--set", "c=3"])
    assert args.set == ["a=1", "b=2", "c=3"]
    assert parser().parse_args(required).set == []


def test_a_bug_is_a_traceback_and_exit_1_through_os_exit():
    """A command that raises (a bug) had `os._exit(None)` fail with a TypeError
    after its traceback, so the process fell through to the interpreter's shutdown,
    which can hang on a tf.data pipeline."""
    code = ("import sys, atexit; sys.argv = ['nonlocal-train', '--config', 'x']; "
            "atexit.register(lambda: print('SHUTDOWN', file=sys.stderr)); "
            "from nonlocal_keras.training import cli\n"
            "def bug(prog, module_name): raise RuntimeError('a bug')\n"
            "cli.run = bug\n"
            "from nonlocal_keras import console; console.train()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "RuntimeError: a bug" in result.stderr and "TypeError" not in result.stderr
    assert "SHUTDOWN" not in result.stderr  # left through os._exit


def test_a_command_loads_keras_without_what_it_imports_for_no_command_and_each_stays_importable(
        tmp_path):
    """Keras imports scikit-learn for its wrappers, matplotlib and OpenCV for image
    plots, pandas for DataFrames, TensorFlow's tf.lite JAX: 2-3 s of each command's
    start, for nothing a command uses. JAX stays when it is Keras' backend."""
    hidden = ("sklearn", "matplotlib", "cv2", "pandas", "jax")
    code = ("import sys; from nonlocal_keras import console; console._prepare_tensorflow(); "
            f"import keras; print([name for name in {hidden!r} if name in sys.modules]); "
            "import matplotlib.pyplot, cv2, pandas, jax; "
            "from sklearn.datasets import load_digits; print(load_digits().data.shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert result.stdout.split("\n")[:2] == ["[]", "(1797, 64)"], result.stderr[-2000:]
    # Keras' own choice of backend agrees with `console._keras_backend`'s reading.
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    on_jax = subprocess.run(
        [sys.executable, "-c", "from nonlocal_keras import console; print(console._keras_backend()); "
         "console._prepare_tensorflow(); import keras; print(keras.backend.backend())"],
        capture_output=True, text=True, timeout=120, env=dict(env, KERAS_HOME=str(tmp_path)))
    assert on_jax.stdout.split() == ["jax", "jax"], on_jax.stderr[-2000:]


@pytest.mark.parametrize("env, keras_json, backend", [
    ({}, None, "tensorflow"),
    ({}, '{"backend": "torch"}', "torch"),
    ({}, '{"floatx": "float32"}', "tensorflow"),
    ({"KERAS_BACKEND": "tensorflow"}, '{"backend": "jax"}', "tensorflow"),
    ({"KERAS_BACKEND": "jax"}, None, "jax"),
    ({}, "{not json", None),  # not hidden: unsure
])
def test_the_backend_keras_will_load_is_read_by_its_own_rule(tmp_path, monkeypatch, env,
                                                               keras_json, backend):
    from nonlocal_keras import console

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if keras_json is not None:
        (tmp_path / "keras.json").write_text(keras_json)
    assert console._keras_backend() == backend


def test_print_data_dir_answers_without_tensorflow_once_the_dataset_is_written(tmp_path):
    """The README's `DATA=$(nonlocal-demo --print-data-dir)` loaded TensorFlow (3-4 s)
    to print a folder that was already there."""
    from nonlocal_keras.training import synthetic_digits

    folder = str(tmp_path / "digits")
    sizes = ["--num-train", "3", "--num-test", "2", "--seed", "5"]
    assert synthetic_digits.generate(folder, num_train=3, num_test=2, seed=5) == folder
    printed = _console("demo", "--print-data-dir", "--data-dir", folder, *sizes)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout == folder + "\n"
    # Another seed is another dataset: the command must write it, which needs
    # TensorFlow (unimportable here), so it does not answer from the cache.
    other = _console("demo", "--print-data-dir", "--data-dir", folder, *sizes[:4], "--seed", "6")
    assert other.returncode != 0 and other.stdout == ""


@pytest.mark.parametrize("function, argv, flag, received", [
    ("export", ["--config", "c.yaml", "--output", "o", "--max-frame-side", "0"],
     "--max-frame-side", "'0'"),
    ("export", ["--config", "c.yaml", "--output", "o", "--max-aspect-ratio", "0.5"],
     "--max-aspect-ratio", "'0.5'"),
    ("export", ["--config", "c.yaml", "--output", "o", "--max-aspect-ratio", "inf"],
     "--max-aspect-ratio", "'inf'"),
    ("export", ["--config", "c.yaml", "--output", "o", "--top-k", "0"], "--top-k", "'0'"),
    ("predict", ["v.mp4", "--model", "m", "--num-clips", "-1"], "--num-clips", "'-1'"),
    ("predict", ["v.mp4", "--model", "m", "--batch-size", "two"], "--batch-size", "'two'"),
    ("demo", ["--print-data-dir", "--num-train", "0"], "--num-train", "'0'"),
    ("demo", ["--print-data-dir", "--seed", "-1"], "--seed", "'-1'"),
    ("convert_weights", ["a.pkl", "b.weights.h5", "--arch", "c2d_r50", "--classes", "0"],
     "--classes", "'0'"),
])
def test_a_number_out_of_range_is_a_usage_error_naming_the_flag(function, argv, flag, received):
    """`nonlocal-demo --print-data-dir --num-train 0` wrote and printed a dataset
    without training videos (exit 0) and `--seed -1` was NumPy's traceback;
    `nonlocal-export --max-frame-side 0` loaded TensorFlow and the model, then
    named the library's argument `max_frame_side`."""
    wrong = _console(function, *argv)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    last = wrong.stderr.splitlines()[-1]
    assert last.startswith("nonlocal-") and f"argument {flag}: must be " in last, last
    assert last.endswith(f"Received: {received}"), last


def test_a_process_says_why_it_stopped_once():
    """A second Ctrl-C's watchdog and the main thread, stopping for the first one,
    both printed "interrupted" (1 in 6 double Ctrl-Cs during an evaluation)."""
    code = ("import signal, sys; from nonlocal_keras import console; "
            "print(console.say_stopped('nonlocal-x', signal.SIGINT), "
            "console.say_stopped('nonlocal-x', signal.SIGTERM))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (run.stdout, run.stderr) == ("130 143\n", "nonlocal-x: interrupted\n"), run.stderr


def test_an_interrupt_a_library_turned_into_its_own_error_is_still_an_interrupt(
        tmp_path, monkeypatch):
    """Ctrl-C while `nonlocal-export` wrote the SavedModel: TensorFlow's graph
    stack turned the KeyboardInterrupt into an AssertionError ("Nesting violated")
    or Keras into a TypeError: a traceback and exit 1 (2 in 18 tries)."""
    from nonlocal_keras.training import cli

    (tmp_path / "interrupted_inside.py").write_text(
        "from nonlocal_keras.training import cli\n"
        "def main(argv):\n"
        "    if argv:\n"
        "        cli.INTERRUPTED.set()\n"
        "    raise AssertionError('Nesting violated for default stack')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert cli._run_main("nonlocal-x", "interrupted_inside", ["stop"], False) == 130
    finally:
        cli.INTERRUPTED.clear()
    # Without an interrupt the same error is a bug: its traceback, exit 1.
    with pytest.raises(AssertionError):
        cli._run_main("nonlocal-x", "interrupted_inside", [], False)


def test_running_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, monkeypatch, capsys):
    """`nonlocal-predict --num-clips 100000` grew to 13 GB and ended in a
    ResourceExhaustedError traceback, exit 1: the settings were too large for the
    machine, not a bug."""
    from nonlocal_keras.training import cli

    (tmp_path / "too_large.py").write_text(
        "import tensorflow as tf\n"
        "def main(argv):\n"
        "    if argv:\n"
        "        raise tf.errors.ResourceExhaustedError(None, None, 'x; No space left on device')\n"
        "    frames = tf.data.Dataset.range(1).map(lambda i: tf.zeros([1000, 1000]))\n"
        "    next(iter(frames.batch(10**6)))  # 4 TB, allocated up front\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli._run_main("nonlocal-x", "too_large", [], False) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == ("nonlocal-x: error: Out of memory (Failed to allocate memory for the "
                         "batch of component 0 [Op:IteratorGetNext]). Lower the batch size, the "
                         "clips or crops per video or the clip size, or free memory, and run the "
                         "command again."), lines
    import tensorflow as tf
    with pytest.raises(tf.errors.ResourceExhaustedError):  # a full disk is not memory
        cli._run_main("nonlocal-x", "too_large", ["disk"], False)


def test_a_deleted_current_directory_is_one_line(tmp_path, monkeypatch, capsys):
    """Found by a walk: `nonlocal-evaluate --output rel.json` in a deleted
    directory was a FileNotFoundError traceback (`os.path.abspath`)."""
    from nonlocal_keras.training import cli

    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    argv = ["--run-dir", str(tmp_path), "--output", "rel.json"]
    assert cli._run_main("nonlocal-evaluate", "nonlocal_keras.training.evaluate", argv,
                         False) == 2
    assert capsys.readouterr().err == (
        "nonlocal-evaluate: error: The current directory was deleted: no relative path can be "
        "read or written from it. cd into a folder that exists and run the command again.\n")


def test_the_temporary_folder_is_removed_whatever_signals_come_meanwhile(tmp_path, monkeypatch):
    """A re-walk: a further SIGTERM while a stopping command removed its
    temporary folder raised KeyboardInterrupt there: a traceback."""
    import shutil

    from nonlocal_keras.training import cli

    folder = tmp_path / "nonlocal-x-1"
    (folder / "inside").mkdir(parents=True)
    rmtree, calls = shutil.rmtree, []

    def interrupted_once(path, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        rmtree(path, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_once)
    cli._remove(str(folder))
    assert not folder.exists() and len(calls) == 2


@pytest.mark.parametrize("function, argv, flag", [
    ("evaluate", ["--run-dir", "runs/x", "--output", ""], "--output"),
    ("evaluate", ["--run-dir", "runs/x", "--weights", " "], "--weights"),
    ("train", ["--config", ""], "--config"),
    ("export", ["--config", "c.yaml", "--output", ""], "--output"),
    ("export", ["--config", "c.yaml", "--output", "o", "--model-name", ""], "--model-name"),
    ("predict", ["", "--model", "m"], "VIDEO"),
    ("demo", ["--print-data-dir", "--data-dir", ""], "--data-dir"),
    ("convert_weights", ["a.pkl", "", "--arch", "c2d_r50"], "destination"),
    ("serving_example", ["m", "--write", ""], "--write"),
])
def test_an_empty_path_is_a_usage_error_naming_the_flag(function, argv, flag):
    """`nonlocal-evaluate --output ""` (an unset shell variable) replaced the run's
    eval.json, exit 0: an empty path was taken as not given."""
    wrong = _console(function, *argv)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    last = wrong.stderr.splitlines()[-1]
    assert last.startswith("nonlocal-") and f"argument {flag}: must not be empty." in last, last
