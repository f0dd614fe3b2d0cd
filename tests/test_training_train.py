"""nonlocal-train end to end on tiny MP4 data: outputs, precision, resume, MirroredStrategy."""

import csv
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import errors, run_state, video_io

TESTS = os.path.dirname(os.path.abspath(__file__))


def _write_dataset(folder, count=24, bad=()):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        label = i % 3
        frames = rng.integers(0, 40, (4, 16, 16, 3)).astype(np.uint8)
        frames[:, :, :, label] += 150  # the class is the bright channel: learnable
        video_io.write_video(folder / f"{i:03d}.mp4", frames)
        rows.append(f"{i:03d}.mp4,{label}")
    for i in bad:
        (folder / f"{i:03d}.mp4").write_bytes(b"broken")
    (folder / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return str(folder / "train.csv")


def _overrides(csv_path, run_dir, *extra):
    return [
        "model.name=training_tiny_model:tiny_video_net", f"data.train_csv={csv_path}",
        f"data.val_csv={csv_path}", "data.num_classes=3", "data.num_frames=4",
        "data.sampling_rate=1", "data.crop_size=16", "data.train_scale=[16, 16]",
        "data.eval_scale=16", "data.num_clips=2", "data.num_crops=1", "train.batch_size=4",
        "optimizer.learning_rate=0.1", f"runtime.output_dir={run_dir}", "runtime.verbose=0",
        *extra,
    ]


def _runner(csv_path, run_dir):
    """`run(epochs)`: the results of a run of the tiny model, without evaluation."""
    from nonlocal_keras.training import train

    def run(epochs):
        return train.run(config_lib.load_config(None, _overrides(
            csv_path, run_dir, f"schedule.epochs={epochs}", "data.val_csv=null",
            "runtime.tensorboard=false")))[1]

    return run


def test_run_writes_config_checkpoints_logs_and_results(tmp_path):
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, bad=(5,))
    run_dir = tmp_path / "run"
    config = config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=2",
                                                     "runtime.precision=mixed_float16"))
    model, results = train.run(config)
    try:
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        assert model.layers[1].compute_dtype == "float16"
    finally:
        import keras
        keras.mixed_precision.set_global_policy("float32")
    saved = config_lib.load_config(str(run_dir / "config.yaml"))
    assert saved["data"]["train_csv"] == csv_path and saved["schedule"]["epochs"] == 2
    for name in ("checkpoints/last.weights.h5", "final.weights.h5", "model.keras", "history.csv"):
        assert (run_dir / name).is_file(), name
    assert any(f.startswith("events") for f in os.listdir(run_dir / "logs" / "train"))
    written = json.loads((run_dir / "results.json").read_text())
    assert written["steps"] == 2 * (24 // 4)  # 24 rows listed: steps come from the CSV
    assert written["skipped_training_videos"] >= 1
    assert written["eval"]["num_videos"] == 23 and written["eval"]["skipped_videos"] == 1
    with open(run_dir / "history.csv") as handle:
        assert "skipped_videos" in next(csv.reader(handle))


@pytest.mark.parametrize("verbose", [1, 2])
def test_progress_leaves_the_skipped_count_to_the_history_and_the_warning(
        tmp_path, capsys, verbose):
    """Keras' progress printed `skipped_videos: 0.0000e+00` at every epoch's end."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    train.run(config_lib.load_config(None, _overrides(
        csv_path, run_dir, "data.val_csv=null", "schedule.epochs=1",
        f"runtime.verbose={verbose}", "runtime.tensorboard=false")))
    printed = capsys.readouterr().out
    assert "loss:" in printed and "skipped_videos" not in printed, printed[-2000:]
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["skipped_videos"]) for row in rows] == [0]


def test_a_run_folder_keeps_its_files_from_any_directory_and_may_be_moved(tmp_path, monkeypatch):
    """config.yaml held `data.val_csv: val.csv` as given, so `nonlocal-evaluate
    --run-dir` from another directory read that directory's val.csv (or failed),
    and a run folder moved or named another way (`./runs/a`) was refused as
    another experiment (`runtime.output_dir` differed)."""
    from nonlocal_keras.training import evaluate, train

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    csv_path = _write_dataset(data_dir, count=12)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(csv_path)  # data/train.csv
    overrides = [o for o in _overrides(relative, "runs/a", "schedule.epochs=1")
                 if not o.startswith("runtime.output_dir=")]
    train.run(config_lib.load_config(None, overrides + ["runtime.output_dir=runs/a"]))
    saved = config_lib.load_config("runs/a/config.yaml")
    assert saved["data"]["train_csv"] == saved["data"]["val_csv"] == csv_path

    os.rename("runs/a", "runs/moved")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A decoy where the relative name would lead: 3 of the 12 videos.
    (elsewhere / "data").mkdir()
    with open(csv_path) as source:
        decoy = source.read().splitlines()[:4]
    (elsewhere / "data" / "train.csv").write_text(
        "\n".join(decoy[:1] + [os.path.join(data_dir, r) for r in decoy[1:]]) + "\n")
    monkeypatch.chdir(elsewhere)
    assert evaluate.main(["--run-dir", "../runs/moved", "--no-progress",
                          "--output", "eval.json"]) == 0
    assert json.loads((elsewhere / "eval.json").read_text())["num_videos"] == 12

    # The moved folder resumes from here, named by an absolute path, with one more epoch.
    _, results = train.run(config_lib.load_config(None, overrides + [
        f"runtime.output_dir={tmp_path / 'runs' / 'moved'}", f"data.train_csv={csv_path}",
        f"data.val_csv={csv_path}", "schedule.epochs=2"]))
    assert results["steps"] == 2 * (12 // 4) and results["steps_run_this_session"] == 12 // 4
    assert not os.path.exists(tmp_path / "runs" / "a")


def test_a_run_folder_of_before_the_absolute_paths_resumes(tmp_path, monkeypatch):
    """Folders written before config.yaml held absolute paths hold them as given,
    relative to the directory the run was started in: the same command from there
    is the same experiment."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    monkeypatch.chdir(tmp_path)
    overrides = _overrides("train.csv", "run", "schedule.epochs=1")
    train.run(config_lib.load_config(None, overrides))
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert written.count(csv_path) == 2
    (tmp_path / "run" / "config.yaml").write_text(written.replace(csv_path, "train.csv"))
    _, results = train.run(config_lib.load_config(None, overrides[:-1] + ["schedule.epochs=2"]))
    assert results["steps"] == 2 * (8 // 4) and results["epochs_run_this_session"] == 1


def test_evaluate_cli_matches_a_per_video_numpy_protocol(tmp_path, monkeypatch):
    from nonlocal_keras.training import errors, evaluate, train, video_io

    csv_path = _write_dataset(tmp_path, count=9)
    run_dir = tmp_path / "run"
    model, _ = train.run(config_lib.load_config(None, _overrides(csv_path, run_dir,
                                                                 "schedule.epochs=1")))
    # 0: the console script hands main's value to sys.exit.
    monkeypatch.chdir(tmp_path)  # paths as typed, relative: the results name them absolute
    assert evaluate.main(["--run-dir", "run", "--set", "data.num_clips=3",
                          "data.val_csv=./train.csv"]) == 0
    results = json.loads((run_dir / "eval.json").read_text())
    assert results["weights"] == str(run_dir)
    # What it evaluated (each evaluation replaces eval.json; it said nothing of it).
    assert results["data"] == {"val_csv": csv_path, "num_frames": 4, "sampling_rate": 1,
                               "num_clips": 3, "num_crops": 1, "eval_scale": 16,
                               "eval_crop_size": 16}, results["data"]
    # Reference: decode each video, 3 evenly spaced 4-frame clips of 4 frames
    # (all start at 0), normalise, average the softmax, compare to the label.
    hits = 0
    for i in range(9):
        frames = video_io.decode_frames(tmp_path / f"{i:03d}.mp4", lambda total: np.arange(total))
        clips = np.stack([frames[idx] for idx in video_io.eval_clip_indices(len(frames), 4, 1, 3)])
        scores = np.asarray(model((clips.astype("float32") - 114.75) / 57.375)).mean(axis=0)
        hits += int(np.argmax(scores) == i % 3)
    assert results["top1"] == pytest.approx(hits / 9)
    assert results["num_videos"] == 9 and results["views_per_video"] == 3
    # The run's config.yaml without --weights: the run's weights, not the
    # untrained model of its `model.weights: null` (evaluated before, exit 0).
    assert evaluate.main(["--config", str(run_dir / "config.yaml"), "--set", "data.num_clips=3",
                          "--output", str(tmp_path / "by_config.json"), "--no-progress"]) == 0
    by_config = json.loads((tmp_path / "by_config.json").read_text())
    assert by_config["weights"] == str(run_dir / "final.weights.h5")
    assert by_config["top1"] == pytest.approx(hits / 9)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(errors.MissingFileError, match="No weights to evaluate: the config's "
                       "model.weights are all missing"):
        evaluate.main(["--config", str(experiment)])
    # A CSV of the other kind was scored with the other activation (sigmoid for a
    # softmax-trained run) and its mAP reported, exit 0; also with the training CSV
    # gone (then history.csv tells).
    multi = tmp_path / "multi.csv"
    multi.write_text("path,labels\n" + "".join(f"{i:03d}.mp4,{i % 3}\n" for i in range(9)))
    # Found by a walk: labels the run does not know were refused one by one as
    # unknown labels, not as a CSV of the other kind.
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("path,labels\n" + "".join(f"{i:03d}.mp4,odd {i % 3}\n" for i in range(9)))
    for evidence in ("training data has no 'labels' column", "trained with top1 .history.csv"):
        for given in (multi, unknown):
            with pytest.raises(errors.ConfigError, match=rf"trained single-label .*{evidence}.*"
                               r"evaluation CSV is multi-label .*Received: data.val_csv="):
                evaluate.main(["--run-dir", str(run_dir), "--set", f"data.val_csv={given}"])
        if os.path.exists(csv_path):
            os.rename(csv_path, csv_path + ".moved")
    assert not (run_dir / "eval.json").read_text().count("mAP")


def test_invalid_rows_stop_the_run_before_training(tmp_path):
    from nonlocal_keras.training import data, train

    csv_path = _write_dataset(tmp_path, count=6)
    with open(csv_path, "a") as handle:
        handle.write("gone.mp4,1\n000001.mp4,7\n")
    config = config_lib.load_config(None, _overrides(csv_path, tmp_path / "run"))
    with pytest.raises(data.DatasetError, match="2 invalid row"):
        train.run(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _env():
    return dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""),
                TF_CPP_MIN_LOG_LEVEL="3")


MIRRORED_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
from nonlocal_keras.training import config as config_lib, optim, runtime, train

strategy = runtime.make_strategy("mirrored")
# L2 must count once, not once per replica: with a zero data gradient one SGD
# step (lr 1, no momentum) scales the kernel by 1 - l2.
with strategy.scope():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=optim.SGDWithL2(l2=0.25, learning_rate=1.0),
                  loss=lambda y, p: 0.0 * keras.ops.sum(p))
before = model.get_weights()[0]
model.fit(np.ones((8, 2), "float32"), np.zeros((8, 1), "float32"), batch_size=8, verbose=0)
after = model.get_weights()[0]

# The fused momentum update must reach each replica's copy: with x = 1 and the
# prediction above its target, mean absolute error has a gradient of 1; lr 0.5,
# momentum 0.9: steps of -0.5, then -0.95.
with strategy.scope():
    moving = keras.Sequential([keras.Input((2,)),
                               keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    moving.compile(optimizer=optim.SGDWithL2(l2=0.0, learning_rate=0.5, momentum=0.9),
                   loss="mae")
start = moving.get_weights()[0]
moving.fit(np.ones((16, 2), "float32"), np.full((16, 1), -9.0, "float32"), batch_size=8,
           shuffle=False, verbose=0)
moved = [(v.numpy() - start).ravel().tolist() for v in moving.trainable_variables[0].value.values]

# Evaluation splits each batch's views over the replicas (it ran them all on the
# first device): 5 videos x 3 views in batches of 2 videos, the last one 3 views.
from nonlocal_keras.training import evaluate

replica_ids = []

class Scorer(keras.layers.Layer):
    def call(self, x):
        context = tf.distribute.get_replica_context()
        replica_ids.append(None if context is None else
                           int(tf.get_static_value(context.replica_id_in_sync_group)))
        return keras.ops.softmax(keras.ops.sum(x, axis=1) @ keras.ops.ones((3, 4)) * [[1, 2, 3, 4]])

def scorer():
    return keras.Sequential([keras.Input((2, 3)), Scorer()])

views = np.random.default_rng(0).normal(size=(5, 3, 2, 3)).astype("float32")
batches = tf.data.Dataset.from_tensor_slices((views, np.zeros(5), np.arange(5))).batch(2)
with strategy.scope():
    mirrored = scorer()
single, replica_ids[:] = scorer(), []  # building calls it too
split, _ = evaluate.predict_videos(mirrored, batches, 5, 4)
split_ids, replica_ids[:] = sorted(set(replica_ids), key=str), []
alone, _ = evaluate.predict_videos(single, batches, 5, 4)

config = config_lib.load_config(None, sys.argv[1:])
trained, results = train.run(config, strategy=strategy)
# The same command again: the finished run's results (a traceback: the weights
# were restored outside the strategy's scope).
_, again = train.run(config, strategy=strategy)
print(json.dumps({"replicas": results["replicas"], "rerun_steps": again["steps"],
                  "ratio": (after / before).ravel().tolist(), "moved": moved,
                  "steps": results["steps"],
                  "variable": type(trained.trainable_variables[0].value).__name__,
                  "split": split.tolist(), "alone": alone.tolist(), "split_ids": split_ids,
                  "alone_ids": sorted(set(replica_ids), key=str),
                  "eval_videos": results["eval"]["num_videos"]}))
"""


@pytest.mark.slow
def test_fit_under_mirrored_strategy_on_two_cpu_replicas(tmp_path):
    csv_path = _write_dataset(tmp_path, count=16)
    overrides = _overrides(csv_path, tmp_path / "run", "schedule.epochs=1",
                           "runtime.strategy=mirrored", "runtime.tensorboard=false")
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, *overrides], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    np.testing.assert_allclose(report["ratio"], [0.75, 0.75], rtol=1e-6)
    np.testing.assert_allclose(report["moved"], [[-1.45, -1.45]] * 2, rtol=1e-6)
    assert report["steps"] == report["rerun_steps"] == 16 // 4
    assert "Mirrored" in report["variable"] or "Distributed" in report["variable"]
    assert report["split_ids"] == [0, 1] and report["alone_ids"] in ([0], [None])
    expected = np.asarray(report["alone"])
    np.testing.assert_allclose(report["split"], expected, rtol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-6)
    assert report["eval_videos"] == 16


@pytest.mark.slow
def test_multi_worker_strategy_feeds_one_pipeline_per_host(tmp_path):
    # Without TF_CONFIG, MultiWorkerMirroredStrategy is a one-worker cluster;
    # it still takes the per-host input path (distribute_datasets_from_function),
    # the precise BatchNorm statistics' pass over it too.
    csv_path = _write_dataset(tmp_path, count=8)
    command = [sys.executable, "-m", "nonlocal_keras.training.train"]
    for item in _overrides(csv_path, tmp_path / "run", "schedule.epochs=1",
                           "runtime.strategy=multi_worker", "runtime.tensorboard=false",
                           "train.precise_bn_steps=2"):
        command += ["--set", item]
    env = _env()
    env.pop("TF_CONFIG", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["steps"] == 8 // 4 and written["replicas"] == 1
    assert written["eval"]["num_videos"] == 8 and written["precise_bn_batches"] == 2
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "has finished" in rerun.stderr, rerun.stderr[-3000:]


def test_train_list_prints_the_shipped_configs_and_exits_zero(capsys):
    from nonlocal_keras.training import train

    # 0: the console script hands main's value to sys.exit.
    assert train.main(["--list"]) == 0
    assert "kinetics_nl_i3d_r50" in capsys.readouterr().out.split()


def test_evaluation_with_no_decodable_video_fails_and_writes_no_nan(tmp_path):
    from nonlocal_keras.training import evaluate, train
    from nonlocal_keras.training.errors import DatasetError

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    train.run(config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=1",
                                                      "data.val_csv=null")))
    broken = tmp_path / "broken"
    broken.mkdir()
    val_csv = _write_dataset(broken, count=3, bad=range(3))
    with pytest.raises(DatasetError, match="None of the 3 evaluation videos could be decoded"):
        evaluate.main(["--run-dir", str(run_dir), "--set", f"data.val_csv={val_csv}",
                       "--no-progress"])
    assert not (run_dir / "eval.json").exists()


def test_a_second_run_on_a_busy_folder_stops_before_writing(tmp_path, monkeypatch):
    import fcntl

    from nonlocal_keras.training import run_state, train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    config = config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=1",
                                                     "runtime.tensorboard=false"))
    run_dir.mkdir()
    # Another process's hold: flock locks of two open files exclude each other.
    with open(run_dir / run_state.LOCK_FILE, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(run_state.RunFolderError, match="Another process is training"):
            train.run(config)
        assert os.listdir(run_dir) == [run_state.LOCK_FILE]
    _, results = train.run(config)
    assert results["steps"] == 8 // 4 and (run_dir / "results.json").is_file()
    # Released when the run returns.
    with open(run_dir / run_state.LOCK_FILE, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # --restart moves the finished run aside (lock file and all) and trains anew.
    train.run(config, restart=True)
    moved = [name for name in os.listdir(tmp_path) if name.startswith("run.old-")]
    assert len(moved) == 1 and (tmp_path / moved[0] / "results.json").is_file()
    assert (run_dir / "results.json").is_file()
    # On a read-only file system the lock file cannot be opened: nothing can train
    # there to lock against, and a finished run's command says so, as anywhere
    # (it was "Cannot write in the run folder", exit 2).
    import builtins

    real_open = builtins.open

    def read_only(path, *args, **kwargs):
        if os.fspath(path).endswith(run_state.LOCK_FILE):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    _, again = train.run(config)
    assert again["steps"] == 8 // 4


@pytest.mark.parametrize("where", ["a_file", "a_file/run"])
def test_a_run_folder_that_cannot_be_made_is_a_users_mistake(tmp_path, where):
    """A file where the run folder should be (or above it) ended in a FileExistsError or
    NotADirectoryError traceback (exit 1); it is now a one-line error naming the setting."""
    from nonlocal_keras.training import train
    from nonlocal_keras.training.errors import FolderError, UserError

    csv_path = _write_dataset(tmp_path, count=8)
    (tmp_path / "a_file").write_text("mine")
    run_dir = tmp_path / where
    config = config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=1",
                                                     "runtime.tensorboard=false"))
    with pytest.raises(FolderError, match=r"Cannot make the folder .*\. Received: "
                       r"runtime\.output_dir=") as raised:
        train.run(config)
    assert isinstance(raised.value, UserError)  # exit 2, one line
    assert (tmp_path / "a_file").read_text() == "mine"


def test_make_folder_names_the_setting_and_keeps_what_is_there(tmp_path):
    from nonlocal_keras.training import atomic
    from nonlocal_keras.training.errors import FolderError

    atomic.make_folder(str(tmp_path / "new" / "deep"), "--output")
    atomic.make_folder(str(tmp_path / "new"), "--output")  # an existing folder is fine
    assert (tmp_path / "new" / "deep").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FolderError, match=r"'.*file' \(File exists\)\. Received: --output="):
        atomic.make_folder(str(tmp_path / "file"), "--output")
    with pytest.raises(FolderError, match=r"\(Not a directory\)\. Received: export_dir='base'"):
        atomic.make_folder(str(tmp_path / "file" / "sub"), "export_dir", "base")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES])
def test_a_write_the_storage_refuses_names_the_file_and_keeps_the_old_one(tmp_path, code):
    """A full disk (or quota, size limit, permissions) while a file is written: a traceback
    and exit 1 before; now a one-line error, the file as it was, no temporary left."""
    from nonlocal_keras.training import atomic
    from nonlocal_keras.training.errors import FolderError, UserError

    target = tmp_path / "state.json"
    target.write_text("before")
    with pytest.raises(FolderError, match=rf"Cannot write '{target}' \({os.strerror(code)}\); "
                       "the file there before, if any, is unchanged") as raised:
        with atomic.replace(target) as temporary:
            with open(temporary, "w") as handle:
                handle.write("half")
            raise OSError(code, os.strerror(code))
    assert isinstance(raised.value, UserError)  # one line, exit 2
    assert os.listdir(tmp_path) == ["state.json"] and target.read_text() == "before"
    with pytest.raises(OSError, match="Input/output error"):  # not the user's: a bug or hardware
        with atomic.replace(target):
            raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_live_writers_staging_folder_is_not_taken_for_a_killed_ones(tmp_path):
    """Two exports into one folder at once: the second's clean-up deleted the
    first's staging folder as one a killed writer left."""
    from nonlocal_keras.training import atomic

    target = tmp_path / "export"
    left = tmp_path / ".tmp-0123abcd-export"  # what a kill -9 leaves
    left.mkdir()
    with atomic.replace_folder(str(target)) as staging:
        assert not left.exists()
        (tmp_path / staging / "saved_model.pb").write_text("first")
        atomic.remove_left_by_killed_writers(str(target))  # a second export's first step
        assert os.path.isdir(staging)
    assert os.listdir(tmp_path) == ["export"]
    assert (target / "saved_model.pb").read_text() == "first"


def test_a_file_in_place_of_a_folder_to_write_in_is_named(tmp_path):
    """`nonlocal-convert-weights x.pkl --arch ... afile/o.weights.h5` said
    "[Errno 17] File exists: 'afile'"; a check before the work said "Permission denied"."""
    from nonlocal_keras.training import atomic

    (tmp_path / "afile").write_text("mine")
    for target in ("afile/o.weights.h5", "afile/sub/o.weights.h5"):
        path = str(tmp_path / target)
        expected = (rf"Cannot write '{re.escape(path)}' "
                    rf"\('{re.escape(str(tmp_path / 'afile'))}' is a file, not a folder\)")
        with pytest.raises(errors.FolderError, match=expected):
            atomic.check_writable(path)
        with pytest.raises(errors.FolderError, match=expected):
            with atomic.replace(path) as temporary:
                open(temporary, "w").close()
        with pytest.raises(errors.FolderError, match=expected):
            with atomic.replace_folder(path):
                pass
    assert os.listdir(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_a_device_or_a_pipe_as_the_output_is_refused_without_reading_it(tmp_path):
    """A re-walk: `nonlocal-evaluate --output /dev/stdout > /dev/full` read
    /dev/full as earlier results until the machine ran out of memory; into a
    pipe it waited for good."""
    from nonlocal_keras.training import atomic

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), os.devnull):
        with pytest.raises(errors.FolderError, match=rf"Cannot write the file '{re.escape(path)}':"
                           r" it is no file \(a device or a pipe\); name a file$"):
            atomic.check_writable(path)


def test_a_folder_that_takes_no_file_whatever_its_permission_bits_is_named():
    """Root's permission bits say yes under /proc, which takes no file: an
    output there was found unwritable after the work (a walk, in the detection
    export)."""
    from nonlocal_keras.training import atomic

    with pytest.raises(errors.FolderError, match=r"^Cannot write '/proc/nonlocal_keras_check/"
                       r"eval.json' \(.+\); the file there before, if any, is unchanged$"):
        atomic.check_writable("/proc/nonlocal_keras_check/eval.json")


def test_a_name_near_the_file_systems_limit_is_written_and_one_beyond_it_refused_first(tmp_path):
    """Found by a walk: the temporary name is 14 bytes longer than the file's,
    so `--output` names of 242 to 255 bytes failed after the evaluation (an
    ENAMETOOLONG traceback); a longer one was only found there too."""
    from nonlocal_keras.training import atomic

    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("é" * ((longest - 11) // 2) + ".weights.h5")  # 2 bytes a letter
    assert longest - 1 <= len(os.fsencode(path.name)) <= longest
    atomic.check_writable(str(path))
    with atomic.replace(str(path)) as temporary:
        assert temporary.endswith(".weights.h5")
        with open(temporary, "w") as handle:
            handle.write("whole")
    assert os.listdir(tmp_path) == [path.name] and path.read_text() == "whole"
    with pytest.raises(errors.FolderError, match=r"\(File name too long: the file system takes "
                       rf"names of at most {longest} bytes\)"):
        atomic.check_writable(str(tmp_path / ("e" * longest + ".json")))


def test_a_file_size_limit_is_refused_before_the_write(tmp_path):
    """Found by a walk: under `ulimit -f` h5py printed its tracebacks
    ("Exception ignored in ... __dealloc__") above the one line, or crashed the
    process (a segmentation fault) when the limit came in the file's metadata."""
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
from nonlocal_keras.applications.video_resnet import VideoResNet
from nonlocal_keras.training import atomic, errors
model = VideoResNet((1, 1, 1, 1), width=16, input_shape=(4, 32, 32, 3), classes=10)
try:
    with atomic.replace({str(tmp_path / "m.weights.h5")!r}, atomic.model_size(model)) as temporary:
        model.save_weights(temporary)
except errors.FolderError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.match(rf"Cannot write '{re.escape(str(tmp_path / 'm.weights.h5'))}' \(File too "
                    r"large: this process may write files of at most 200.0 KB \(ulimit -f\), "
                    r"about [\d.]+ [KM]B needed\)", result.stdout), result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert os.listdir(tmp_path) == []


def test_a_refused_writes_failing_finalisers_are_not_reported_but_others_are(monkeypatch):
    """h5py reports a failed close in a finaliser through both hooks: after a
    storage refusal it printed two tracebacks around the command's one line."""
    import gc

    from nonlocal_keras.training import atomic

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: reported.append(report.exc_value))

    class Closes:
        def __init__(self, error):
            self.error = error

        def __del__(self):
            raise self.error

    with atomic._refusals_reported_once():
        Closes(OSError(errno.EFBIG, "File too large"))
        Closes(RuntimeError("Can't decrement id ref count (errno = 28, error message = 'No "
                            "space left on device')"))
        Closes(ValueError("a bug"))
        gc.collect()
    assert [str(error) for error in reported] == ["a bug"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    """`atomic.replace_folder` (the detection export's: Model Garden wrote into the
    folder, and a kill left an earlier export half overwritten)."""
    from nonlocal_keras.training import atomic

    target = tmp_path / "export"
    target.mkdir()
    (target / "old.pb").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.replace_folder(str(target)) as staging:
            (tmp_path / staging / "new.pb").write_text("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["old.pb"]
    left = tmp_path / ".tmp-0123abcd-export"  # what a kill -9 leaves
    left.mkdir()
    with atomic.replace_folder(str(target)) as staging:
        assert os.listdir(target) == ["old.pb"]  # untouched while the new one is written
        (tmp_path / staging / "new.pb").write_text("new")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["new.pb"]
    # Killed between its two renames: the old folder moved aside, the new one not in
    # place. The next writer deleted the old one with the temporaries; it puts it back.
    os.rename(target, tmp_path / ".tmp-4567cdef-export.replaced")
    (tmp_path / ".tmp-89abcdef-export").mkdir()  # the new one, not renamed in
    with atomic.replace_folder(str(target)) as staging:
        assert sorted(os.listdir(tmp_path)) == sorted(["export", os.path.basename(staging)])
        assert os.listdir(target) == ["new.pb"]
        (tmp_path / staging / "newer.pb").write_text("newer")
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["newer.pb"]


def test_an_hdf5_write_refused_at_its_close_is_a_refusal_too(tmp_path):
    """h5py reports a failed write that HDF5 had buffered until the close as a
    RuntimeError whose message holds the errno."""
    from nonlocal_keras.training import atomic
    from nonlocal_keras.training.errors import FolderError

    message = ("Disable slist on flush dest failure failed (file write failed: time = Fri Dec  "
               "4 14:40:45 2026\n, filename = '.tmp-bff457eb-ckpt-000000002.weights.h5', file "
               "descriptor = 8, errno = 28, error message = 'No space left on device', buf = "
               "0x5576bb9e65a8, total write size = 13832, bytes this sub-write = 13832, offset = "
               "13040)")
    with pytest.raises(FolderError, match=r"\(No space left on device\)"):
        with atomic.replace(tmp_path / "x.weights.h5"):
            raise RuntimeError(message)
    with pytest.raises(RuntimeError, match="errno = 5"):  # EIO: not the user's
        with atomic.replace(tmp_path / "x.weights.h5"):
            raise RuntimeError(message.replace("errno = 28", "errno = 5"))
    assert os.listdir(tmp_path) == []


def test_hdf5_files_are_written_only_where_there_is_room_for_them(tmp_path, monkeypatch):
    """HDF5 can crash the process (a segmentation fault in h5py's close) when the disk
    fills while it writes a file's metadata: the free space is checked first."""
    import keras

    from nonlocal_keras.training import atomic
    from nonlocal_keras.training.errors import FolderError

    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(200),
                              keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    size = atomic.model_size(model)
    model.save_weights(tmp_path / "w.weights.h5")
    model.save(tmp_path / "m.keras")
    for name in ("w.weights.h5", "m.keras"):
        actual = os.path.getsize(tmp_path / name)
        assert actual <= size <= 1.3 * actual, (name, actual, size)

    real = os.statvfs(tmp_path)
    free = {"blocks": size // real.f_frsize - 1}

    def statvfs(path):
        return os.statvfs_result(real[:4] + (free["blocks"],) + real[5:])

    monkeypatch.setattr(os, "statvfs", statvfs)
    target = tmp_path / "w.weights.h5"
    before = target.read_bytes()
    with pytest.raises(FolderError, match=r"\(No space left on device: [0-9.]+ KB free, about "
                       r"[0-9.]+ KB needed\); the file there before, if any, is unchanged"):
        with atomic.replace(target, size):
            raise AssertionError("written without room")
    assert target.read_bytes() == before
    free["blocks"] += 2
    with atomic.replace(target, size) as temporary:
        model.save_weights(temporary)
    # A file system that reports no size at all (some FUSE ones) cannot tell: no refusal.
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(real[:2] + (0,) * 8))
    with atomic.replace(target, size) as temporary:
        model.save_weights(temporary)


def test_a_folder_whose_run_never_committed_is_taken_by_another_experiment(tmp_path):
    """A first command that trained nothing (its videos undecodable) left config.yaml:
    the corrected command was refused as another experiment; one that trained is."""
    from nonlocal_keras.training import run_state, train

    run_dir = tmp_path / "run"
    (run_dir / run_state.STATE_DIR).mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"train_csv": "/old.csv"}}))
    config = {"data": {"train_csv": "/new.csv"}}
    assert train._check_same_experiment(str(run_dir), config) is None
    (run_dir / run_state.STATE_DIR / run_state.STATE_FILE).write_text("{}")
    with pytest.raises(run_state.RunFolderError, match=r"holds another experiment \(data.train_csv"):
        train._check_same_experiment(str(run_dir), config)
    # A config.yaml edited into something else was a YAML or AttributeError traceback.
    for text, said in (("model: [\n  oops", r" \(while parsing a flow sequence"), ("", ""),
                       ("- a list\n", ""), ("data: 3\n", ""), (b"\xff\xfe", r" \('utf-8' codec")):
        (run_dir / "config.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(run_state.RunFolderError, match=(
                rf"^The run folder's config.yaml cannot be read as a run's config{said}.*--restart "
                rf".*Received: runtime.output_dir='{run_dir}'$")):
            train._check_same_experiment(str(run_dir), config)


def test_a_constructors_default_written_out_is_the_same_experiment(tmp_path):
    """`--set model.affine_bn=false` (VideoResNet's default) on a run started
    without it was "another experiment (model.affine_bn: None -> False)"."""
    from nonlocal_keras.training import run_state, train

    run_dir = tmp_path / "run"
    (run_dir / run_state.STATE_DIR).mkdir(parents=True)
    (run_dir / run_state.STATE_DIR / run_state.STATE_FILE).write_text("{}")
    started = {"model": {"name": "C2DResNet50", "nonlocal_blocks": 5}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(started))
    for model in ({"affine_bn": False, "stem": "8x8", "dropout_rate": 0.5}, {}):
        config = {"model": {**started["model"], **model}}
        assert train._check_same_experiment(str(run_dir), config) == started
    for model, change in (({"affine_bn": True}, "model.affine_bn: False -> True"),
                          ({"nonlocal_blocks": 0}, "model.nonlocal_blocks: 5 -> 0")):
        config = {"model": {**started["model"], **model}}
        with pytest.raises(run_state.RunFolderError, match=re.escape(change)):
            train._check_same_experiment(str(run_dir), config)
    # Left out the other way round: a run started with the default written out.
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"model": {**started["model"], "affine_bn": False}}))
    assert train._check_same_experiment(str(run_dir), started)


def test_a_folder_that_holds_no_run_is_refused_untouched(tmp_path):
    from nonlocal_keras.training import run_state, train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    config = config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=1",
                                                     "runtime.tensorboard=false"))
    with pytest.raises(run_state.RunFolderError, match="holds no run"):
        train.run(config)
    assert os.listdir(run_dir) == ["notes.txt"]  # not even a lock file
    # A folder with only what an earlier start left before its config.yaml (the lock
    # file, an empty state folder, a temporary file: a kill or a full disk there) is an
    # empty one, with --restart or without; the latter had been refused as a folder
    # that holds no run.
    (run_dir / "notes.txt").unlink()
    for restart in (True, False):
        run_dir.mkdir(exist_ok=True)
        (run_dir / run_state.LOCK_FILE).touch()
        (run_dir / run_state.STATE_DIR).mkdir()
        (run_dir / ".tmp-0123abcd-config.yaml").write_text("half")
        assert not run_state.holds_anything(run_dir)
        train.run(config, restart=restart)
        assert not [name for name in os.listdir(tmp_path) if name.startswith("run.old-")]
        assert (run_dir / "results.json").is_file()
        shutil.rmtree(run_dir)


RESUMED_EPOCH_SCRIPT = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
run_dir, replicas = sys.argv[1], int(sys.argv[2])
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
import keras
from nonlocal_keras.training import data, run_state, train

strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
rng = np.random.default_rng(0)
x = rng.normal(size=(24, 5)).astype("float32")
y = (rng.random((24, 3)) < 0.4).astype("float32")
batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # an epoch of 6 steps

def model():  # learning rate 0: every step sees the same weights
    keras.utils.set_random_seed(1)
    with strategy.scope():
        made = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="sigmoid")])
        made.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.BinaryCrossentropy(),
                     metrics=[keras.metrics.AUC(curve="PR", multi_label=True, name="pr_auc")])
    return made

class Killed(Exception):
    pass

class KillAtStep3(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            raise Killed

state = run_state.RunState(run_dir, 6)
os.makedirs(state.folder)
try:
    model().fit(batches, epochs=1, steps_per_epoch=6, verbose=0,
                callbacks=[run_state.CommitState(state, 1, metrics=True), KillAtStep3()])
except Killed:
    pass
resumed = model()
state = run_state.RunState(run_dir, 6)
state.read()
state.restore(resumed)
config = {"runtime": {"verbose": 0, "tensorboard": False, "backup_freq": 1},
          "schedule": {"epochs": 1}}
train._fit(resumed, batches.skip(3), state, config, 6, data.SkippedVideos(), True)
whole = keras.metrics.AUC(curve="PR", multi_label=True)
whole.update_state(y, resumed.predict(x, verbose=0))
print(json.dumps({"step": state.step, "history": state.history, "auc": float(whole.result()),
                  "kernel": resumed.get_weights()[0].tolist(),
                  "bias": resumed.get_weights()[1].tolist()}))
"""


@pytest.mark.parametrize("replicas", [1, 2])
def test_an_epoch_resumed_mid_way_has_a_history_row_of_all_its_steps(tmp_path, replicas):
    """Killed at step 3 of 6 and resumed, the epoch's row in history.csv averaged
    steps 4 to 6 only (the `fit` that finishes the epoch starts Keras' metrics
    afresh). A mid-epoch commit keeps the metrics' running sums, which the
    resumed session adds back: with the weights held (learning rate 0), the
    row is the loss of all six batches, and the PR AUC of all 24 examples,
    on one replica and split over two."""
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", RESUMED_EPOCH_SCRIPT, str(run_dir),
                             str(replicas)], env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["step"] == 6 and [row["epoch"] for row in report["history"]] == [1]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 5)), (rng.random((24, 3)) < 0.4).astype(float)
    p = 1 / (1 + np.exp(-(x @ np.asarray(report["kernel"]) + report["bias"])))
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    row = report["history"][0]
    np.testing.assert_allclose(row["loss"], losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(row["pr_auc"], report["auc"], rtol=1e-5)
    committed = json.loads((run_dir / "state" / "state.json").read_text())
    named = {committed["weights"], committed["previous"]["weights"],
             committed["previous"]["metrics"], "state.json"}
    assert committed["metrics"] is None and sorted(os.listdir(run_dir / "state")) == sorted(named)


def test_a_sigterm_between_the_fits_of_a_resumed_run_stops_after_the_next_step(
        tmp_path, monkeypatch):
    """A run resumed mid-epoch finishes that epoch in a `fit` of its own: a SIGTERM
    between it and the next `fit` raised at once, and one worker of a cluster left
    alone (its peers failed; seen in a two-worker run). Now it is met at the next
    step, which is committed, as inside a `fit`."""
    import signal

    import keras
    import tensorflow as tf

    from nonlocal_keras.training import cli, data, run_state, train

    class Left(Exception):
        pass

    def leave():
        raise Left  # instead of os._exit

    class KillAtStep3(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise Left

    ends = cli.StopWhenInterrupted.on_train_end

    def sigterm_after_the_first_fit(self, logs=None):
        ends(self, logs)
        if not cli.TERMINATED.is_set():
            cli._on_signal(signal.SIGTERM)

    rng = np.random.default_rng(0)
    batches = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(24, 5)).astype("float32"), rng.normal(size=(24, 1)).astype("float32"))
    ).batch(4).repeat()  # epochs of 6 steps
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    state = run_state.RunState(str(tmp_path / "run"), 6)
    os.makedirs(state.folder)
    with pytest.raises(Left):
        model.fit(batches, epochs=1, steps_per_epoch=6, verbose=0,
                  callbacks=[run_state.CommitState(state, 1), KillAtStep3()])
    state = run_state.RunState(str(tmp_path / "run"), 6)
    state.read()
    assert state.step == 3
    monkeypatch.setattr(cli, "_exit_now", leave)
    monkeypatch.setattr(cli.StopWhenInterrupted, "on_train_end", sigterm_after_the_first_fit)
    config = {"runtime": {"verbose": 0, "tensorboard": False, "backup_freq": 100},
              "schedule": {"epochs": 3}}
    try:
        with pytest.raises(Left):
            train._fit(model, batches, state, config, 6, data.SkippedVideos(), True)
    except KeyboardInterrupt:  # would end pytest's session
        pytest.fail("the SIGTERM between two fits was raised at once")
    finally:
        cli.TERMINATED.clear()
    assert not cli._AT_STEP_END.is_set()
    committed = run_state.RunState(str(tmp_path / "run"), 6)
    committed.read()
    assert committed.step == 7  # the first step of epoch 2


def test_a_resumed_epochs_bar_counts_the_runs_epochs(capsys):
    """The `fit` that finishes an epoch resumed mid-way was headed "Epoch 2/2" in
    a run of 5 epochs."""
    from nonlocal_keras.training import progress

    bar = progress.EpochBar(5)
    bar.set_params({"verbose": 1, "epochs": 2, "steps": 3})
    bar.on_epoch_begin(1)
    assert capsys.readouterr().out.splitlines() == ["Epoch 2/5"]


def _weights(path):
    import h5py

    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: found.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
    return found


def _differing(first, second):
    assert first.keys() == second.keys()
    return sorted(name for name in first if not np.array_equal(first[name], second[name]))


def test_precise_bn_steps_recompute_the_saved_models_statistics(tmp_path):
    """`train.precise_bn_steps` (the official COMPUTE_PRECISE_BN, numbers in
    test_training_precise_bn.py): the final weights differ from the last
    epoch's exactly in the BatchNorm's moving mean and variance."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    config = config_lib.load_config(None, _overrides(
        csv_path, run_dir, "schedule.epochs=1", "train.precise_bn_steps=3", "data.val_csv=null",
        "runtime.tensorboard=false"))
    _, results = train.run(config)
    assert results["precise_bn_batches"] == 3

    changed = _differing(_weights(run_dir / "final.weights.h5"),
                         _weights(run_dir / "checkpoints" / "last.weights.h5"))
    assert changed == BN_STATISTICS


BN_STATISTICS = ["layers/batch_normalization/vars/2", "layers/batch_normalization/vars/3"]


def test_a_finished_run_makes_the_precise_bn_pass_its_command_asks_for(tmp_path):
    """A finished run rerun with `train.precise_bn_steps` set (or changed) said
    "has finished", exit 0, its BatchNorm statistics not recomputed. The pass is
    made from the last step's weights (the commit's), as asked: with 0, none."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"

    def run(steps):
        return train.run(config_lib.load_config(None, _overrides(
            csv_path, run_dir, "schedule.epochs=1", f"train.precise_bn_steps={steps}",
            "data.val_csv=null", "runtime.tensorboard=false")))

    def final_against_last():
        return _differing(_weights(run_dir / "final.weights.h5"),
                          _weights(run_dir / "checkpoints" / "last.weights.h5"))

    assert "precise_bn_batches" not in run(0)[1] and final_against_last() == []
    model, results = run(3)
    assert results["precise_bn_batches"] == 3 and results["steps_run_this_session"] == 0
    assert final_against_last() == BN_STATISTICS
    recomputed = _weights(run_dir / "final.weights.h5")
    model, results = run(3)  # finished as asked: returned with the final statistics
    assert results["precise_bn_batches"] == 3
    assert _differing(recomputed, _weights(run_dir / "final.weights.h5")) == []
    layer = next(l for l in model.layers if "batch_normalization" in l.name)
    np.testing.assert_array_equal(layer.moving_mean.numpy(),
                                  recomputed["layers/batch_normalization/vars/2"])
    assert "precise_bn_batches" not in run(0)[1] and final_against_last() == []


def test_a_precise_bn_pass_with_no_statistics_to_recompute_says_so(tmp_path, caplog):
    """With every BN fixed (`model.affine_bn`) or none, the pass did nothing, silently."""
    import logging

    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    config = config_lib.load_config(None, _overrides(
        csv_path, tmp_path / "run", "model.name=training_tiny_model:headless_video_net",
        "schedule.epochs=1", "train.precise_bn_steps=2", "data.val_csv=null",
        "runtime.tensorboard=false"))
    with caplog.at_level(logging.WARNING, logger="nonlocal_keras.training.train"):
        _, results = train.run(config)
    assert results["precise_bn_batches"] == 0
    assert "train.precise_bn_steps=2: the model has no BatchNorm statistics" in caplog.text


def test_videos_the_precise_bn_pass_skips_are_counted(tmp_path):
    """`skipped_training_videos` was taken before the pass, which reads the same
    repeated pipeline (12 batches of 4 from 7 decodable videos meet the bad one at
    least 6 times): it is taken after, and counts the bad video once."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8, bad=(3,))
    config = config_lib.load_config(None, _overrides(
        csv_path, tmp_path / "run", "schedule.epochs=1", "train.precise_bn_steps=12",
        "data.val_csv=null", "runtime.tensorboard=false"))
    _, results = train.run(config)
    assert results["precise_bn_batches"] == 12
    assert results["skipped_training_videos"] == 1, results  # one video, however often met


def test_a_fine_tuned_run_resumes_without_the_weights_it_started_from(tmp_path):
    """Its command loaded `model.weights` on every start, a rerun and a resume
    too, whose weights come from the run's own commit: once the source run was
    moved, "Cannot build ...: File format not supported", exit 2."""
    from nonlocal_keras.training import run_state, train

    csv_path = _write_dataset(tmp_path, count=8)
    quiet = ("schedule.epochs=1", "data.val_csv=null", "runtime.tensorboard=false")
    train.run(config_lib.load_config(None, _overrides(csv_path, tmp_path / "source", *quiet)))
    tuned = tmp_path / "tuned"

    def command(epochs, weights=tmp_path / "source", run_dir=tuned):
        return config_lib.load_config(None, _overrides(
            csv_path, run_dir, *quiet, f"schedule.epochs={epochs}",
            *([f"model.weights={weights}"] if weights else [])))

    train.run(command(1))
    finished = train.run(command(1))[0].get_weights()
    os.rename(tmp_path / "source", tmp_path / "moved")
    model, _ = train.run(command(1))  # the finished run's command: nothing to train
    for weight, expected in zip(model.get_weights(), finished, strict=True):
        np.testing.assert_array_equal(weight, expected)
    assert train.run(command(2))[1]["steps"] == 2 * 2  # continued for an epoch
    # Other weights where its own start is still there, none, or weights for a run
    # that started from none: the rerun went on without a word and wrote them into
    # config.yaml as the run's start.
    os.rename(tmp_path / "moved", tmp_path / "source")
    shutil.copytree(tmp_path / "source", tmp_path / "other")
    saved = (tuned / "config.yaml").read_bytes()
    for weights in (tmp_path / "other", None):
        with pytest.raises(run_state.RunFolderError, match=(
                r"model\.weights: '.*source' -> .*\(the run started from the first, which is "
                r"still there\)")):
            train.run(command(2, weights))
    with pytest.raises(run_state.RunFolderError, match=r"model\.weights: None -> '.*other' \(the "
                       r"run started from the first\)"):
        train.run(command(1, tmp_path / "other", tmp_path / "source"))
    assert (tuned / "config.yaml").read_bytes() == saved
    (tmp_path / "link").symlink_to(tmp_path / "source")
    assert train.run(command(2, tmp_path / "link"))[1]["steps"] == 2 * 2  # the same start
    # Its start gone, any name goes on from the run's own weights, and config.yaml
    # keeps where it started: the new name was written there, and the run's own
    # command then refused; none named said its start was "still there".
    os.rename(tmp_path / "source", tmp_path / "moved")
    with pytest.raises(run_state.RunFolderError, match=(
            r"model\.weights: '.*source' -> None \(the run started from the first\)\)")):
        train.run(command(3, None))
    assert train.run(command(3, tmp_path / "other"))[1]["steps"] == 3 * 2
    saved = yaml.safe_load((tuned / "config.yaml").read_text())
    assert saved["model"]["weights"] == str(tmp_path / "source")
    assert train.run(command(3))[1]["steps"] == 3 * 2  # its own command: finished
    os.rename(tmp_path / "moved", tmp_path / "source")
    with pytest.raises(errors.MissingFileError, match="No such weights file or run folder"):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, tmp_path / "new", *quiet, f"model.weights={tmp_path / 'gone'}")))
    # A saved model is no weights file: it was a 72-line Keras error.
    with pytest.raises(errors.ConfigError, match=r"takes a \.weights\.h5 file.*model\.keras'$"):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, tmp_path / "new", *quiet, f"model.weights={tmp_path / 'source' / 'model.keras'}")))
    # Nor a run's config.yaml: Keras' "File format not supported", naming `model=`.
    with pytest.raises(errors.ConfigError, match=r"takes a \.weights\.h5 file, an official \.pkl "
                       r"or a run folder\. Received: model\.weights='.*config\.yaml'$"):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, tmp_path / "new", *quiet, f"model.weights={tmp_path / 'source' / 'config.yaml'}")))
    # Nor a .weights.h5 renamed .h5: a "Layer count mismatch" traceback.
    shutil.copy(tmp_path / "source" / "final.weights.h5", tmp_path / "renamed.h5")
    with pytest.raises(errors.ConfigError, match=r"takes Keras 3 weights files, whose names end in "
                       r"\.weights\.h5 .*Received: model\.weights='.*renamed\.h5'$"):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, tmp_path / "new", *quiet, f"model.weights={tmp_path / 'renamed.h5'}")))


def test_start_weights_that_are_no_file_are_compared_as_names(tmp_path):
    """`imagenet` (Keras' weights, inflated) is no path: it is not 'gone', so a file
    named in its place is another start."""
    from nonlocal_keras.training import train

    file = tmp_path / "w.weights.h5"
    file.write_bytes(b"x")
    imagenet = {"model": {"weights": "imagenet"}}
    assert train._other_start_weights(imagenet, imagenet) == []
    assert train._other_start_weights(imagenet, {"model": {"weights": str(file)}}) == [
        f"model.weights: 'imagenet' -> {str(file)!r} (the run started from the first)"]
    assert train._other_start_weights({"model": {"weights": str(tmp_path / "gone.h5")}},
                                      {"model": {"weights": str(file)}}) == []


def test_a_commit_on_sigterm_waits_for_the_epochs_end_at_its_last_step(tmp_path):
    """At an epoch's last step the commit comes with the epoch's history row, at the
    epoch's end: committed at the step, the row would be missing on resume."""
    import keras

    from nonlocal_keras.training import run_state

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    state = run_state.RunState(str(tmp_path), steps_per_epoch=4)
    os.makedirs(state.folder)
    commit = run_state.CommitState(state, "epoch")
    commit.set_model(model)
    commit.on_epoch_begin(0)
    commit.on_train_batch_end(0)
    assert commit.commit_now()
    assert json.loads(open(state.path).read())["step"] == 1
    commit.on_train_batch_end(3)
    assert not commit.commit_now()
    assert json.loads(open(state.path).read())["step"] == 1
    commit.on_epoch_end(0, {"loss": 0.5})
    saved = json.loads(open(state.path).read())
    assert saved["step"] == 4 and [row["epoch"] for row in saved["history"]] == [1]


def test_an_epoch_whose_data_ran_out_is_an_error_not_a_trained_epoch(tmp_path):
    """Keras ends an epoch whose dataset ran out ("Your input ran out of data")
    as if it were whole: seen with a CSV listing each (undecodable) video twice,
    the run was marked finished after no training step, exit 0."""
    import keras
    import tensorflow as tf

    from nonlocal_keras.training import run_state
    from nonlocal_keras.training.errors import DatasetError

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    state = run_state.RunState(str(tmp_path), steps_per_epoch=4)
    os.makedirs(state.folder)
    two_batches = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 2), np.float32), np.zeros((4, 1), np.float32))).batch(2)
    with pytest.raises(DatasetError, match="ran out at step 2 of the 4 of epoch 1"):
        model.fit(two_batches, epochs=1, steps_per_epoch=4, verbose=0, shuffle=False,
                  callbacks=[run_state.CommitState(state, "epoch")])
    assert not os.path.exists(state.path)  # nothing of the epoch committed


def test_steps_per_execution_trains_exactly_the_steps_it_counts(tmp_path):
    """Keras' fit runs whole executions on the repeated dataset: with 4 steps an
    execution an epoch of 6 steps trained 8, the run counting 6. A value that does
    not divide the epoch is refused before anything is written; one that does
    trains as many optimiser steps as the run counts."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path)  # 24 videos, batch 4: 6 steps an epoch
    refused = config_lib.load_config(None, _overrides(
        csv_path, tmp_path / "refused", "runtime.steps_per_execution=4"))
    with pytest.raises(config_lib.ConfigError, match=r"must divide the 6 steps of an epoch .*"
                       r"Use 3, or set schedule.steps_per_epoch to a multiple \(4 or 8\).*"
                       r"Received: runtime.steps_per_execution=4"):
        train.run(refused)
    assert not (tmp_path / "refused").exists()

    config = config_lib.load_config(None, _overrides(
        csv_path, tmp_path / "run", "schedule.epochs=2", "runtime.steps_per_execution=3",
        "runtime.backup_freq=2", "data.val_csv=null"))
    model, results = train.run(config)
    assert results["steps"] == 12 and int(model.optimizer.iterations.numpy()) == 12


def test_a_run_resumed_mid_epoch_needs_a_steps_per_execution_dividing_what_is_left():
    from nonlocal_keras.training import train

    config = {"runtime": {"steps_per_execution": 2}, "schedule": {"steps_per_epoch": None}}
    train._check_steps_per_execution(config, 6, 4)  # 2 steps left
    with pytest.raises(config_lib.ConfigError, match=r"the 3 steps left in the epoch this run "
                       r"stopped in \(committed at its step 3 of 6\).*Finish that epoch with 1"):
        train._check_steps_per_execution(config, 6, 3)


def test_evaluate_names_a_run_dir_that_holds_no_run(tmp_path):
    """It said "No such config file or shipped config (<every shipped name>)"."""
    from nonlocal_keras.training import evaluate
    from nonlocal_keras.training.errors import MissingFileError

    with pytest.raises(MissingFileError, match=r"holds no nonlocal-train run \(no config.yaml\).*"
                       f"Received: --run-dir={str(tmp_path)!r}"):
        evaluate.main(["--run-dir", str(tmp_path)])


def test_evaluate_output_naming_a_folder_is_refused_before_the_evaluation(tmp_path):
    """It evaluated every video, then failed with IsADirectoryError (a traceback)."""
    from nonlocal_keras.training import atomic, evaluate
    from nonlocal_keras.training.errors import FolderError

    config = tmp_path / "config.yaml"
    config.write_text("data: {val_csv: no_such.csv}\n")
    with pytest.raises(FolderError, match=f"Cannot write the file {str(tmp_path)!r}: a folder.*"
                       f"Received: --output={str(tmp_path)!r}"):
        evaluate.main(["--config", str(config), "--output", str(tmp_path)])
    with pytest.raises(FolderError, match="a folder is there"):
        atomic.write_json(str(tmp_path), {"top1": 1.0})
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_evaluate_output_replaces_earlier_results_only(tmp_path):
    """`--output run/final.weights.h5` (or a SavedModel's saved_model.pb) replaced the
    trained weights with JSON, exit 0."""
    from nonlocal_keras.training import evaluate
    from nonlocal_keras.training.errors import FolderError

    config = tmp_path / "config.yaml"
    config.write_text("data: {val_csv: no_such.csv}\n")
    weights = tmp_path / "final.weights.h5"
    weights.write_bytes(b"\x89HDF weights")
    with pytest.raises(FolderError, match=rf"^'{weights}' is there and holds no earlier "
                       rf"evaluation's results.*Received: --output='{weights}'$"):
        evaluate.main(["--config", str(config), "--output", str(weights)])
    assert weights.read_bytes() == b"\x89HDF weights"
    (tmp_path / "eval.json").write_text("[]")
    with pytest.raises(FolderError, match=rf"Received: --run-dir='{tmp_path}'$"):
        evaluate.main(["--run-dir", str(tmp_path)])
    (tmp_path / "eval.json").write_text('{"top1": 0.5, "num_videos": 3}')
    config.write_text("data: {val_csv: no_such.csv, num_classes: 3}\n")
    with pytest.raises(errors.MissingFileError, match="no_such.csv"):  # gets past the check
        evaluate.main(["--run-dir", str(tmp_path), "--weights", str(weights)])


def test_evaluate_output_that_cannot_be_written_is_refused_before_the_evaluation(
        tmp_path, monkeypatch):
    """On a read-only file system it evaluated every video, then failed to write and
    printed none of the results (exit 2)."""
    from nonlocal_keras.training import evaluate
    from nonlocal_keras.training.errors import FolderError

    config = tmp_path / "config.yaml"
    config.write_text("data: {val_csv: no_such.csv}\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access  # root may write anywhere: the folder says no here
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(locked)
                        and access(path, mode))
    with pytest.raises(FolderError, match=r"Cannot write '.*/locked/new/eval.json' \(Permission "
                       "denied\)"):
        evaluate.main(["--config", str(config), "--output", str(locked / "new" / "eval.json")])
    assert os.listdir(locked) == []
    (locked / "config.yaml").write_text(config.read_text())  # a run folder: its eval.json
    with pytest.raises(FolderError, match=r"locked/eval.json' \(Permission denied\).*; give "
                       r"--output\. Received: --run-dir='.*locked'$"):
        evaluate.main(["--run-dir", str(locked)])


def test_a_run_folder_moved_while_training_stops_it_and_resumes_where_it_went(
        tmp_path, monkeypatch):
    """Found by a walk: `mv runs/x runs/y` (or `rm -rf runs/x`) during training;
    the next commit made `runs/x` again, a run without config.yaml that no
    command took, and the command exited 0."""
    from nonlocal_keras.training import run_state, train

    csv_path = _write_dataset(tmp_path, count=8)  # 2 steps an epoch
    run_dir, moved = tmp_path / "run", tmp_path / "moved"
    commit = run_state.RunState.commit

    def move_after_the_first(self, *args, **kwargs):
        if self.step > 2 and run_dir.exists():
            os.rename(run_dir, moved)
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(run_state.RunState, "commit", move_after_the_first)
    overrides = _overrides(csv_path, run_dir, "schedule.epochs=2", "runtime.backup_freq=1")
    with pytest.raises(run_state.RunFolderError, match=r"^The run folder was moved or deleted "
                       rf"while this command ran; .* Received: runtime.output_dir='{run_dir}'$"):
        train.run(config_lib.load_config(None, overrides))
    assert not run_dir.exists()
    monkeypatch.setattr(run_state.RunState, "commit", commit)
    _, results = train.run(config_lib.load_config(
        None, _overrides(csv_path, moved, "schedule.epochs=2", "runtime.backup_freq=1")))
    assert results["steps"] == 4 and results["steps_run_this_session"] == 2


def test_a_deleted_current_directory_is_a_moved_run_folder(tmp_path, monkeypatch):
    """A relative run folder whose current directory was deleted: a
    FileNotFoundError traceback at the next commit."""
    from nonlocal_keras.training import run_state

    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    monkeypatch.chdir(work)
    with run_state.folder_lock("runs/x"):
        run_state.check_still_held("runs/x")
        shutil.rmtree(work)
        with pytest.raises(run_state.RunFolderError, match="moved or deleted"):
            run_state.check_still_held("runs/x")
    run_state.check_still_held("runs/x")  # no longer held: nothing to say


def test_a_run_folder_moved_while_its_files_are_written_is_said_as_a_move(tmp_path):
    """A re-walk: moved between the check and the write, the write's own
    FileNotFoundError was a traceback, exit 1, in 3 moves of 4."""
    from nonlocal_keras.training import run_state

    run_dir = str(tmp_path / "run")
    with run_state.folder_lock(run_dir):
        with pytest.raises(run_state.RunFolderError, match="moved or deleted"):
            with run_state.writing_in_held(run_dir):
                os.rename(run_dir, tmp_path / "moved")
                open(os.path.join(run_dir, "state.json"), "w").close()  # FileNotFoundError
        with pytest.raises(ZeroDivisionError):  # still there: the error as it is
            os.rename(tmp_path / "moved", run_dir)
            with run_state.writing_in_held(run_dir):
                1 / 0


def test_a_finished_run_is_not_rerun_against_what_the_command_asks(tmp_path):
    """Seen: a run stopped 22 steps into its second 100-step epoch, rerun with
    `schedule.epochs=1`, was written as finished at step 122, exit 0; a finished
    run rerun with another `data.val_csv` printed the old set's results (exit 0);
    one whose results.json was gone was a FileNotFoundError traceback (then
    refused with --restart as the way out, which trains it again)."""
    from nonlocal_keras.training import train
    from nonlocal_keras.training.run_state import RunFolderError

    csv_path = _write_dataset(tmp_path, count=8)  # 2 steps an epoch
    run_dir = tmp_path / "run"
    overrides = _overrides(csv_path, run_dir, "schedule.epochs=1")
    train.run(config_lib.load_config(None, overrides))
    other_val = tmp_path / "other_val.csv"
    other_val.write_text("".join(open(csv_path).readlines()[:4]))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match="does not evaluate it again another way: "
                       f"nonlocal-evaluate --run-dir {run_dir} evaluates it"):
        train.run(config_lib.load_config(None, overrides + [f"data.val_csv={other_val}"]))
    with pytest.raises(RunFolderError, match=r"Received: data.num_clips=1, data.num_crops=3$"):
        train.run(config_lib.load_config(None, overrides + ["data.num_clips=1",
                                                            "data.num_crops=3"]))
    # The crop it evaluated with, named (null is data.crop_size): the same evaluation.
    assert train.run(config_lib.load_config(None, overrides + ["data.eval_crop_size=16"]))[1][
        "steps"] == 2
    assert train.run(config_lib.load_config(None, overrides))[1]["steps"] == 2
    (run_dir / "results.json").unlink()  # evaluated and written again, not retrained
    again = train.run(config_lib.load_config(None, overrides))[1]
    assert again["steps"] == 2 and again["steps_run_this_session"] == 0 and "eval" in again
    assert json.loads((run_dir / "results.json").read_text()) == again
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    state_file = run_dir / "state" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(dict(state, step=3, finished=False)))  # 1 step into epoch 2
    with pytest.raises(RunFolderError, match=r"has 3 steps done \(1 finished epochs of 2 steps\), "
                       "more than this command asks for"):
        train.run(config_lib.load_config(None, overrides))
    del before[state_file]
    assert {p: p.read_bytes() for p in before} == before


def test_a_resumed_session_draws_other_clips_than_the_first(tmp_path, monkeypatch):
    """Seeded with train.seed again, a run preempted every epoch trained every epoch
    on the first epoch's clips (order, temporal starts, crops). A session now seeds
    its data from the seed and the step it starts at (the same step, the same data)."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    seeds = []
    make = train._training_input

    def recording(strategy, records, data_config, multi_label, batch, seed, skipped):
        seeds.append(seed)
        return make(strategy, records, data_config, multi_label, batch, seed, skipped)

    monkeypatch.setattr(train, "_training_input", recording)
    overrides = _overrides(csv_path, tmp_path / "run", "train.seed=3")
    train.run(config_lib.load_config(None, overrides + ["schedule.epochs=1"]))
    train.run(config_lib.load_config(None, overrides + ["schedule.epochs=2"]))
    assert seeds[0] == 3 and seeds[1] != 3
    assert train._session_seed(3, 2) == seeds[1] != train._session_seed(3, 4)


def test_skipped_videos_count_over_the_whole_run(tmp_path):
    """`skipped_training_videos` counted the last session's only, and the row of an
    epoch resumed mid-way its steps after the resume: the commit keeps the paths.
    A video is counted once however often the pipeline meets it (its repeats,
    its look-ahead, its cache rebuilt by a resumed session)."""
    import keras

    from nonlocal_keras.training import data, run_state, train

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    state = run_state.RunState(str(tmp_path), steps_per_epoch=4)
    os.makedirs(state.folder)
    state.skipped = data.SkippedVideos()
    for name in ("a", "b", "c", "a"):
        state.skipped.record(f"/v/{name}.mp4", "bad")
    state.step = 6  # epoch 2, step 2: one of the videos met in it
    assert state.skipped.pop_epoch() == (3, ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4"])
    state.skipped.record("/v/a.mp4", "bad")
    state.commit(model)
    resumed = run_state.RunState(str(tmp_path), steps_per_epoch=4)
    assert resumed.read()
    skipped = data.SkippedVideos(resumed.skipped_paths, resumed.skipped_in_epoch)
    for name in ("a", "b", "d"):  # the resumed session meets a again
        skipped.record(f"/v/{name}.mp4", "bad")
    assert skipped.total == 4
    assert skipped.pop_epoch() == (3, ["/v/a.mp4", "/v/b.mp4", "/v/d.mp4"])
    state.step = 8  # an epoch's end: nothing carried into the next
    state.commit(model)
    assert resumed.read() and (len(resumed.skipped_paths), resumed.skipped_in_epoch) == (3, [])

    csv_path = _write_dataset(tmp_path, count=8, bad=(3,))
    quiet = ("data.val_csv=null", "runtime.tensorboard=false")
    first = train.run(config_lib.load_config(None, _overrides(
        csv_path, tmp_path / "run", "schedule.epochs=1", *quiet)))[1]["skipped_training_videos"]
    results = train.run(config_lib.load_config(None, _overrides(
        csv_path, tmp_path / "run", "schedule.epochs=2", *quiet)))[1]
    with open(tmp_path / "run" / "history.csv") as handle:
        rows = [float(row["skipped_videos"]) for row in csv.DictReader(handle)]
    assert first == 1 and rows == [1, 1] and results["skipped_training_videos"] == 1, (
        first, rows, results)


def test_a_run_resumes_only_on_the_labels_it_trained_with(tmp_path, caplog):
    """A training list written again with other labels (class ids from another
    listing, say) between two sessions resumed without a word: the run's later
    epochs learned other classes. Relabelled videos are refused; videos added
    or removed are named in a warning, and the run goes on with them."""
    import shutil

    from nonlocal_keras.training.run_state import RunFolderError

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    run = _runner(csv_path, run_dir)
    run(1)
    listed = json.loads((run_dir / "training_videos.json").read_text())["videos"]
    assert listed == {str(tmp_path / f"{i:03d}.mp4"): [[i % 3]] for i in range(8)}
    original = open(csv_path).read()
    open(csv_path, "w").write(original.replace("002.mp4,2", "002.mp4,0"))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match=r"^1 of the training videos have other labels than "
                       r"when this run committed its steps \(first: 002.mp4: 2 -> 0\).*"
                       rf"--set model.weights={run_dir} .*Received: data.train_csv="):
        run(2)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    shutil.copyfile(tmp_path / "000.mp4", tmp_path / "100.mp4")
    open(csv_path, "w").write(original + "100.mp4,0\n")  # 9 videos: still 2 steps an epoch
    with caplog.at_level(logging.WARNING):
        assert run(2)["steps"] == 4
    assert "has changed since this run committed its steps: 1 video(s) added, 0 removed" in (
        caplog.text)
    listed = json.loads((run_dir / "training_videos.json").read_text())["videos"]
    assert listed[str(tmp_path / "100.mp4")] == [[0]] and len(listed) == 9

    (run_dir / "training_videos.json").unlink()  # a run from before the list was kept
    assert run(3)["steps"] == 6 and (run_dir / "training_videos.json").is_file()


def test_an_evaluation_the_network_cannot_make_is_refused_before_training(tmp_path):
    """A network without the video ResNets' head, with `data.eval_crop_size` larger
    than the training crop, trained its run and failed at the final evaluation;
    the run could not be finished: the evaluation fields made "another experiment".
    The check comes first now, and the evaluation fields may change between sessions."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    with pytest.raises(config_lib.ConfigError, match=r"needs a network that ends in global "
                       r"average pooling .*Received: data.eval_crop_size=16"):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, run_dir, "data.crop_size=12", "data.eval_crop_size=16",
            "model.name=training_tiny_model:headless_video_net")))
    assert not run_dir.exists()
    quiet = ("runtime.tensorboard=false", "data.num_clips=1")
    train.run(config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=1",
                                                      *quiet)))
    results = train.run(config_lib.load_config(None, _overrides(
        csv_path, run_dir, "schedule.epochs=2", *quiet[:1], "data.num_clips=3")))[1]
    assert results["steps"] == 4 and results["eval"]["num_videos"] == 8


def test_a_video_moved_to_another_class_folder_is_a_relabelled_one(tmp_path):
    """In a folder per class a video gets another label by moving it: the run
    read that as one video added and one removed, and resumed on the new label."""
    import shutil

    from nonlocal_keras.training import train
    from nonlocal_keras.training.run_state import RunFolderError

    _write_dataset(tmp_path, count=9)
    classes = tmp_path / "classes"
    for i in range(9):
        (classes / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / f"{i:03d}.mp4", classes / f"c{i % 3}" / f"{i:03d}.mp4")
    run_dir = tmp_path / "run"

    def run(epochs):
        return train.run(config_lib.load_config(None, _overrides(
            str(classes), run_dir, f"schedule.epochs={epochs}", "data.val_csv=null",
            "runtime.tensorboard=false")))[1]

    run(1)
    shutil.move(classes / "c1" / "004.mp4", classes / "c2" / "004.mp4")
    with pytest.raises(RunFolderError, match=r"^1 of the training videos have other labels .*"
                       r"\(first: 004.mp4: 1 -> 2\)"):
        run(2)
    shutil.move(classes / "c2" / "004.mp4", classes / "c1" / "004.mp4")
    assert run(2)["steps"] == 4


def test_a_class_folder_named_relatively_is_the_same_run_from_any_directory(
        tmp_path, monkeypatch, caplog):
    """A folder per class named by a relative path kept its videos' paths relative
    to the working directory: resumed from elsewhere by its absolute path, the run
    warned that every video was added and removed, and counted a broken video
    twice. Runs written so still resume from where they started."""
    import shutil

    from nonlocal_keras.training import train

    _write_dataset(tmp_path, count=9, bad=(3,))
    classes = tmp_path / "classes"
    for i in range(9):
        (classes / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / f"{i:03d}.mp4", classes / f"c{i % 3}" / f"{i:03d}.mp4")
    run_dir = tmp_path / "run"

    def run(folder, epochs):
        with caplog.at_level(logging.WARNING):
            results = train.run(config_lib.load_config(None, _overrides(
                folder, run_dir, f"schedule.epochs={epochs}", "data.val_csv=null",
                "runtime.tensorboard=false")))[1]
        assert "has changed" not in caplog.text
        assert results["skipped_training_videos"] == 1, results
        return results

    monkeypatch.chdir(tmp_path)
    run("classes", 1)
    listing = run_dir / "training_videos.json"
    assert sorted(json.loads(listing.read_text())["videos"]) == sorted(
        str(path) for path in classes.rglob("*.mp4"))
    monkeypatch.chdir(run_dir)
    assert run(str(classes), 2)["steps"] == 4

    # A run of before: the listing and the committed skipped videos relative.
    written = json.loads(listing.read_text())
    written["videos"] = {os.path.relpath(path, tmp_path): labels
                         for path, labels in written["videos"].items()}
    listing.write_text(json.dumps(written))
    state_file = run_dir / "state" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["skipped_videos"] == [str(classes / "c0" / "003.mp4")]
    state["skipped_videos"] = [os.path.join("classes", "c0", "003.mp4")]
    state_file.write_text(json.dumps(state))
    monkeypatch.chdir(tmp_path)
    assert run("classes", 3)["steps"] == 6


def test_listing_a_video_once_more_or_less_is_no_relabelling(tmp_path):
    """Dropping a duplicate row (same label) was refused as "other labels"
    (`v0.mp4: 2, 2 -> 2`), where added and removed videos go on with a warning."""
    csv_path = _write_dataset(tmp_path, count=8)
    original = open(csv_path).read()
    open(csv_path, "a").write("000.mp4,0\n")  # 9 rows: still 2 steps an epoch
    run_dir = tmp_path / "run"
    run = _runner(csv_path, run_dir)
    run(1)
    open(csv_path, "w").write(original)
    assert run(2)["steps"] == 4


def test_a_continuation_on_videos_none_of_which_decodes_leaves_the_run_as_it_was(tmp_path):
    """The final files were deleted and config.yaml rewritten before the first
    step found no decodable video (exit 2): a failed command changed the run."""
    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    run = _runner(csv_path, run_dir)
    run(1)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    for i in range(8):
        (tmp_path / f"{i:03d}.mp4").write_bytes(b"broken")
    with pytest.raises(errors.DatasetError, match=r"None of the 8 training videos could be "
                       r"decoded \(first: 000.mp4: .*nothing was trained"):
        run(2)
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def _files(run_dir):
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}


def test_a_continuation_that_fails_before_its_first_commit_leaves_the_run_as_it_was(
        tmp_path, monkeypatch):
    """Any failure in a continuation's first steps (out of memory, say) found the
    finished run's final files deleted and config.yaml rewritten: they change at
    its first commit. One that commits removes them (written again at its end)."""
    import keras
    import tensorflow as tf

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"
    run = _runner(csv_path, run_dir)
    run(1)
    before = _files(run_dir)
    fit = keras.Model.fit

    def out_of_memory(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating a tensor")

    monkeypatch.setattr(keras.Model, "fit", out_of_memory)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        run(2)
    assert _files(run_dir) == before

    from nonlocal_keras.training import run_state, train

    # Failing at its first step's end, with TensorBoard on (the default): its
    # logs/ files go too.
    def first_step_out_of_memory(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating a tensor")

    monkeypatch.setattr(keras.Model, "fit", fit)
    monkeypatch.setattr(run_state.CommitState, "on_train_batch_end", first_step_out_of_memory)
    listing = sorted(run_dir.rglob("*"))
    with pytest.raises(tf.errors.ResourceExhaustedError):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, run_dir, "schedule.epochs=2", "data.val_csv=null")))
    assert _files(run_dir) == before and sorted(run_dir.rglob("*")) == listing

    def commit_then_stop(self, *args, **kwargs):
        self.state.commit(self.model)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "fit", fit)
    monkeypatch.setattr(run_state.CommitState, "on_train_batch_end", commit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(2)
    assert not any((run_dir / name).exists() for name in run_state.FINAL_FILES)
    assert "epochs: 2" in (run_dir / "config.yaml").read_text()
    monkeypatch.undo()
    assert run(2)["steps"] == 4


def test_a_final_pass_made_again_keeps_the_final_files_until_each_is_replaced(
        tmp_path, monkeypatch):
    """A rerun with another `train.precise_bn_steps` removed the final files as it
    started: a pass that failed (out of memory, a full disk) left none."""
    from nonlocal_keras.training import precise_bn, run_state, train

    csv_path = _write_dataset(tmp_path, count=8)
    run_dir = tmp_path / "run"

    def run(steps):
        return train.run(config_lib.load_config(None, _overrides(
            csv_path, run_dir, "schedule.epochs=1", f"train.precise_bn_steps={steps}",
            "data.val_csv=null", "runtime.tensorboard=false")))[1]

    run(0)
    before = _files(run_dir)
    epoch_files = [run_dir / "history.csv", run_dir / "checkpoints" / "last.weights.h5"]
    inodes = [path.stat().st_ino for path in epoch_files]

    def failing(*args, **kwargs):
        raise MemoryError("the pass")

    monkeypatch.setattr(precise_bn, "recompute_statistics", failing)
    with pytest.raises(MemoryError):
        run(3)
    assert _files(run_dir) == before
    # Written again only where they differ from the commit: unchanged, they
    # needed room on a full disk before the pass could start.
    assert [path.stat().st_ino for path in epoch_files] == inodes
    monkeypatch.undo()

    import keras

    def full_disk(model, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(errors.FolderError, match="model.keras"):
        run(3)
    after = _files(run_dir)
    assert after[run_dir / run_state.FINAL_MODEL] == before[run_dir / run_state.FINAL_MODEL]
    assert after[run_dir / run_state.FINAL_WEIGHTS] != before[run_dir / run_state.FINAL_WEIGHTS]
    assert not (run_dir / run_state.RESULTS).exists()  # the rerun makes the pass again
    monkeypatch.undo()
    assert run(3)["precise_bn_batches"] == 3


def test_fine_tuning_from_a_run_of_other_class_names_leaves_the_classifier_new(
        tmp_path, monkeypatch, caplog):
    """Same class count, other names or order: its classifier was loaded, its
    rows other classes. And a relative `model.weights` gone by a continuation
    became a relative path to nowhere in config.yaml."""
    from nonlocal_keras.training import data, models, train

    _write_dataset(tmp_path, count=6)
    monkeypatch.chdir(tmp_path)
    quiet = ("schedule.epochs=1", "data.val_csv=null", "runtime.tensorboard=false",
             "data.num_classes=null")

    def named(csv_name, names):
        rows = "".join(f"{i:03d}.mp4,{names[i % 3]}\n" for i in range(6))
        (tmp_path / csv_name).write_text("path,label\n" + rows)
        return str(tmp_path / csv_name)

    source = named("abc.csv", ["archery", "bowling", "cycling"])
    trained = train.run(config_lib.load_config(None, _overrides(source, "source", *quiet)))[0]

    def tuned(csv_path):
        config = config_lib.load_config(None, _overrides(csv_path, "unused", *quiet,
                                                         "model.weights=source"))
        return models.build_model(config["model"], data.resolve_classes(config["data"]), False,
                                  fine_tune=True)

    def kernel(model, layer=-1):
        return model.layers[layer].get_weights()[0]

    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(kernel(tuned(source)), kernel(trained))
    assert "classifier" not in caplog.text  # nothing said of it (TensorFlow may say other things)
    # A single-label run's classifier into a multi-label one: loaded, said (it was
    # without a word).
    config = config_lib.load_config(None, _overrides(source, "unused", *quiet,
                                                     "model.weights=source"))
    with caplog.at_level(logging.WARNING):
        multi = models.build_model(config["model"], data.resolve_classes(config["data"]), True,
                                   fine_tune=True)
    np.testing.assert_array_equal(kernel(multi), kernel(trained))
    assert ("The classifier of source, trained single-label (softmax), is loaded as it is into "
            "this multi-label (sigmoid) run") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        other = tuned(named("abd.csv", ["archery", "bowling", "dancing"]))
    assert "The classifier is left new" in caplog.text
    assert not np.array_equal(kernel(other), kernel(trained))
    np.testing.assert_array_equal(kernel(other, 1), kernel(trained, 1))  # the rest is loaded
    # The whole classifier is left new, its bias too (the log counted it loaded).
    _, left_new = models.load_matching_weights(other, str(tmp_path / "source" / "final.weights.h5"),
                                               other_classes=True)
    assert len(left_new) == len(other.layers[-1].weights) == 2
    # From a commit's weights in `state/` too (they were loaded as these classes).
    config = config_lib.load_config(None, _overrides(
        named("abd.csv", ["archery", "bowling", "dancing"]), "unused", *quiet,
        "model.weights=" + str(sorted((tmp_path / "source" / "state").glob("*.weights.h5"))[-1])))
    other = models.build_model(config["model"], data.resolve_classes(config["data"]), False,
                               fine_tune=True)
    assert not np.array_equal(kernel(other), kernel(trained))
    # The run's weights file names the same run; a config.yaml not UTF-8 names none.
    config = config_lib.load_config(None, _overrides(
        named("abd.csv", ["archery", "bowling", "dancing"]), "unused", *quiet,
        "model.weights=source/final.weights.h5"))
    other = models.build_model(config["model"], data.resolve_classes(config["data"]), False,
                               fine_tune=True)
    assert not np.array_equal(kernel(other), kernel(trained))
    saved_config = (tmp_path / "source" / "config.yaml").read_bytes()
    (tmp_path / "source" / "config.yaml").write_bytes(b"data:\n  class_names: [caf\xe9]\n")
    # The run's weights files say their classes themselves; others (a user's
    # save_weights) do not.
    for weights in ("final.weights.h5", "checkpoints/last.weights.h5"):
        config["model"]["weights"] = str(tmp_path / "source" / weights)
        other = models.build_model(config["model"], data.resolve_classes(config["data"]), False,
                                   fine_tune=True)
        assert not np.array_equal(kernel(other), kernel(trained)), weights
    trained.save_weights(tmp_path / "source" / "plain.weights.h5")
    config["model"]["weights"] = str(tmp_path / "source" / "plain.weights.h5")
    same = models.build_model(config["model"], data.resolve_classes(config["data"]), False,
                              fine_tune=True)
    np.testing.assert_array_equal(kernel(same), kernel(trained))
    (tmp_path / "source" / "config.yaml").write_bytes(saved_config)

    # Class ids beside names, either way round: loaded in order (nothing says
    # what the ids meant), with a warning saying which id is which name.
    ids_csv = tmp_path / "ids.csv"
    ids_csv.write_text("path,label\n" + "".join(f"{i:03d}.mp4,{i % 3}\n" for i in range(6)))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        config = config_lib.load_config(None, _overrides(str(ids_csv), "unused", *quiet,
                                                         "data.num_classes=3",
                                                         "model.weights=source"))
        as_ids = models.build_model(config["model"], data.resolve_classes(config["data"]), False,
                                    fine_tune=True)
    np.testing.assert_array_equal(kernel(as_ids), kernel(trained))
    assert "loaded row by row as this run's class ids" in caplog.text
    assert "0 = 'archery', 1 = 'bowling', 2 = 'cycling'" in caplog.text
    shutil.copytree(tmp_path / "source", tmp_path / "of_ids")
    with open(tmp_path / "of_ids" / "config.yaml") as handle:
        of_ids = yaml.safe_load(handle)
    of_ids["data"]["class_names"] = None
    (tmp_path / "of_ids" / "config.yaml").write_text(yaml.safe_dump(of_ids))
    run_state.write_labels(str(tmp_path / "of_ids" / "final.weights.h5"), run_state.labels_of(
        of_ids["data"], False))  # as a run of class ids writes them
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        config = config_lib.load_config(None, _overrides(
            named("cab.csv", ["cycling", "archery", "bowling"]), "unused", *quiet,
            "model.weights=of_ids"))
        as_names = models.build_model(config["model"], data.resolve_classes(config["data"]),
                                      False, fine_tune=True)
    np.testing.assert_array_equal(kernel(as_names), kernel(trained))
    assert "a run of class ids, is loaded row by row" in caplog.text
    assert "0 = 'archery', 1 = 'bowling', 2 = 'cycling'" in caplog.text

    # Evaluation and export take the classifier as it is: another order (or the
    # other kind of labels) scored every video as another class, exit 0.
    def scored(csv_path, weights, multi_label=False, *extra):
        config = config_lib.load_config(None, _overrides(csv_path, "unused", *quiet, *extra,
                                                         f"model.weights={weights}"))
        return models.build_model(config["model"], data.resolve_classes(config["data"]),
                                  multi_label, argument="--weights")

    state_file = os.path.relpath(sorted((tmp_path / "source" / "state").glob("*.weights.h5"))[-1])
    np.testing.assert_array_equal(kernel(scored(source, state_file)), kernel(trained))
    reordered = "data.class_names=[cycling, archery, bowling]"
    for weights in ("source", "source/final.weights.h5", "source/checkpoints/last.weights.h5",
                    state_file):
        with pytest.raises(errors.ConfigError, match=(
                r"other class names \(or another order\) than these: 0 = 'archery', 1 = "
                r"'bowling', 2 = 'cycling' against 0 = 'cycling', 1 = 'archery'.*Received: "
                rf"--weights='{weights}'")):
            scored(source, weights, False, reordered)
    with pytest.raises(errors.ConfigError, match=r"trained single-label \(softmax\) \(as source/"
                       r"final.weights.h5 says\), and this is multi-label"):
        scored(source, "source", True)
    # The final weights carry their classes out of the run folder (a copy was
    # scored as these classes, whatever they were).
    shutil.copy(state_file, tmp_path / "copied.weights.h5")
    np.testing.assert_array_equal(kernel(scored(source, "copied.weights.h5")), kernel(trained))
    with pytest.raises(errors.ConfigError, match=r"other class names \(or another order\).*"
                       r"\(as copied.weights.h5 says\)"):
        scored(source, "copied.weights.h5", False, reordered)
    with pytest.raises(errors.ConfigError, match=r"single-label \(softmax\) \(as copied.weights.h5"):
        scored(source, "copied.weights.h5", True)
    # Named by a folder: its weights file says it too, whatever the folder's
    # config.yaml says or whether it has one (both were taken as they were).
    os.mkdir("bare")
    shutil.copy(tmp_path / "source" / "final.weights.h5", "bare")
    shutil.copytree("source", "damaged")
    (tmp_path / "damaged" / "config.yaml").write_text("data: [\n")
    for folder in ("bare", "damaged"):
        with pytest.raises(errors.ConfigError, match=rf"other class names.*\(as {folder}/final"):
            scored(source, folder, False, reordered)

    def command(epochs):
        return config_lib.load_config(None, _overrides(source, "tuned", *quiet[1:],
                                                       f"schedule.epochs={epochs}",
                                                       "model.weights=./source"))

    train.run(command(1))
    os.rename("source", "moved")
    assert train.run(command(2))[1]["steps"] == 2  # 6 videos, batches of 4: a step an epoch
    saved = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text())
    assert saved["model"]["weights"] == str(tmp_path / "source")


def test_a_classifier_left_new_is_left_new_whole_with_its_zero_bias(tmp_path):
    """A zero bias is named by its layer, not matched to its variable: it was
    counted as loaded ("Loaded 26 of 27") while `set_weights` reset it."""
    import keras

    from nonlocal_keras.training import models

    def model():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(2)(inputs)  # a zero bias of the classifier's shape
        return keras.Model(inputs, keras.layers.Dense(2, name="predictions")(hidden))

    path = str(tmp_path / "source.weights.h5")
    model().save_weights(path)
    restored, left_new = models.load_matching_weights(model(), path, other_classes=True)
    assert (len(restored), len(left_new)) == (2, 2)


def test_an_evaluation_set_none_of_which_decodes_is_refused_before_training(tmp_path):
    """Every epoch trained, then the final evaluation failed (exit 2) and the
    run could not finish until `data.val_csv` changed."""
    from nonlocal_keras.training import train

    csv_path = _write_dataset(tmp_path, count=8)
    (tmp_path / "broken.mp4").write_bytes(b"broken")
    (tmp_path / "val.csv").write_text("path,label\nbroken.mp4,1\n")
    run_dir = tmp_path / "run"
    with pytest.raises(errors.DatasetError, match=r"None of the 1 evaluation videos could be "
                       r"decoded \(first: broken.mp4: .*Received: data.val_csv="):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, run_dir, "schedule.epochs=1", f"data.val_csv={tmp_path / 'val.csv'}")))
    assert not run_dir.exists()


def test_evaluation_views_beyond_memory_are_refused_before_training(tmp_path, monkeypatch):
    """The views of one evaluation batch are allocated at once: `data.num_clips`
    too large for the machine failed only in the final evaluation."""
    from nonlocal_keras.training import runtime, train

    csv_path = _write_dataset(tmp_path, count=6)
    # 4 videos (the default eval batch) x 2 clips x 1 crop of 4x16x16x3 float32: 98,304 bytes.
    monkeypatch.setattr(runtime, "memory_limit", lambda: 98_303)
    run_dir = tmp_path / "run"
    with pytest.raises(errors.ConfigError, match=r"needs 0.0 GiB \(4 video\(s\) x 2 clips"):
        train.run(config_lib.load_config(None, _overrides(csv_path, run_dir, "schedule.epochs=1")))
    assert not run_dir.exists()


def test_a_decoded_cache_beyond_half_the_memory_is_warned_of(tmp_path, monkeypatch, caplog):
    """`data.cache_decoded` on a dataset too big for it trained until the cache
    filled the memory, in the first epoch, and the process was killed (137)."""
    from nonlocal_keras.training import data, runtime, train

    csv_path = _write_dataset(tmp_path, count=6)
    # 6 clips of 4x16x16x3 uint8: 18,432 bytes, above half of 30,000.
    monkeypatch.setattr(runtime, "memory_limit", lambda: 30_000)
    with caplog.at_level(logging.WARNING):
        train.run(config_lib.load_config(None, _overrides(
            csv_path, tmp_path / "run", "schedule.epochs=1", "data.val_csv=null",
            "data.cache_decoded=true", "runtime.tensorboard=false")))
    warned = [r.getMessage() for r in caplog.records if "cache_decoded" in r.getMessage()]
    assert len(warned) == 1 and re.search(
        r"about 0\.0 GiB for these 6 \(0\.0 MiB each, as the first video's\), against 0\.0 "
        r"GiB of memory here\. The run may be killed .*data\.cache_decoded=false", warned[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        monkeypatch.setattr(runtime, "memory_limit", lambda: 36_864)  # half holds them
        data.warn_of_cache_size(3072, 6, csv_path)
        monkeypatch.setattr(runtime, "memory_limit", lambda: 36_863)
        data.warn_of_cache_size(3072, 6, csv_path)
    assert len([r for r in caplog.records if "cache_decoded" in r.getMessage()]) == 1


def test_restart_that_cannot_move_the_run_aside_is_one_error(tmp_path, monkeypatch):
    """A read-only parent folder was a PermissionError traceback, exit 1; a
    second --restart in the same second would have met the first's folder."""
    from nonlocal_keras.training import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("x")
    monkeypatch.setattr(train.time, "strftime", lambda _: "20261205-120000")
    (tmp_path / "run.old-20261205-120000").mkdir()
    assert train._move_aside(str(run_dir)) == str(tmp_path / "run.old-20261205-120000-2")
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("x")

    def refused(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(train.os, "rename", refused)
    with pytest.raises(errors.FolderError, match=r"Cannot move the run folder aside for "
                       r"--restart \(Permission denied\); it is left as it was"):
        train._move_aside(str(run_dir))


def _train_bfloat16(csv_path, run_dir, xla_flags=None):
    """nonlocal-train under mixed_bfloat16, TensorFlow's C++ log on (XLA says when it
    compiles); `xla_flags` is the user's TF_XLA_FLAGS (None: not set)."""
    command = [sys.executable, "-m", "nonlocal_keras.training.train"]
    for item in _overrides(csv_path, run_dir, "schedule.epochs=1", "data.val_csv=null",
                           "runtime.precision=mixed_bfloat16", "runtime.tensorboard=false"):
        command += ["--set", item]
    env = dict(_env(), TF_CPP_MIN_LOG_LEVEL="0")
    env.pop("TF_XLA_FLAGS", None)
    if xla_flags is not None:
        env["TF_XLA_FLAGS"] = xla_flags
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    return result.stderr, results["final_train_metrics"]


@pytest.mark.slow
def test_bfloat16_training_compiles_pointwise_ops_with_xla_on_the_cpu(tmp_path):
    # TensorFlow reads TF_XLA_FLAGS at its first op: nonlocal-train sets them before
    # it (cpu.fuse_pointwise_ops). XLA logs its CPU service when it compiles a
    # cluster; a user's own TF_XLA_FLAGS (empty here) wins, and nothing is compiled.
    csv_path = _write_dataset(tmp_path, count=8)
    fused_log, fused = _train_bfloat16(csv_path, tmp_path / "fused")
    plain_log, plain = _train_bfloat16(csv_path, tmp_path / "plain", xla_flags="")
    assert "XLA service" in fused_log and "initialized for platform Host" in fused_log
    assert "XLA service" not in plain_log
    said = "mixed_bfloat16 without a GPU: XLA compiles TensorFlow's pointwise ops"
    assert said in fused_log and said not in plain_log
    # Both trained (their values differ from run to run with the decoding's order:
    # the next test compares the two ways on the same batches).
    assert fused.keys() == plain.keys() and np.isfinite(fused["loss"])


POINTWISE_SCRIPT = r"""
import json, os, sys
os.environ["TF_XLA_FLAGS"] = sys.argv[1]
import numpy as np
import keras
from training_tiny_model import tiny_video_net
keras.utils.set_random_seed(0)
keras.mixed_precision.set_global_policy("mixed_bfloat16")
model = tiny_video_net(input_shape=(4, 16, 16, 3), classes=3)
model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
x, y = rng.random((8, 4, 16, 16, 3), dtype="float32"), np.arange(8) % 3
losses = [float(model.train_on_batch(x, y)) for _ in range(6)]
print(json.dumps({"losses": losses, "weights": [np.asarray(w).tolist() for w in model.weights]}))
"""


def test_pointwise_xla_trains_as_tensorflow_does_up_to_bfloat16_rounding():
    # The same batches, seed and steps, with and without the flags: XLA keeps a
    # fused chain's intermediate values in float32 where TensorFlow rounds each
    # op's result to bfloat16, so they may differ by that rounding (2**-8), no more.
    from nonlocal_keras import cpu

    runs = []
    for flags in (cpu.FUSE_POINTWISE_FLAGS, ""):
        result = subprocess.run([sys.executable, "-c", POINTWISE_SCRIPT, flags],
                                env=dict(_env(), TF_CPP_MIN_LOG_LEVEL="0"),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("Compiled cluster using XLA" in result.stderr) is bool(flags)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    fused, plain = runs
    np.testing.assert_allclose(fused["losses"], plain["losses"], rtol=2**-8)
    assert plain["losses"][-1] < plain["losses"][0]  # it trained
    for mine, theirs in zip(fused["weights"], plain["weights"]):
        np.testing.assert_allclose(mine, theirs, rtol=2**-8, atol=1e-6)


ABSL_LOG_SCRIPT = r"""
import os
os.environ["TF_XLA_FLAGS"] = os.environ["FLAGS"]
from nonlocal_keras.training import cli
cli.absl_log_level_as_tensorflow()
import tensorflow as tf
x = tf.cast(tf.ones((8, 8)), tf.bfloat16)
f = tf.function(lambda x: tf.nn.relu(x + x) * x)
for _ in range(4):  # XLA compiles a cluster once it has run a few times
    f(x)
"""


@pytest.mark.parametrize("level, logged", [("0", True), ("3", False)])
def test_absl_cpp_log_follows_tf_cpp_min_log_level(level, logged):
    # XLA logs through absl's C++ log, which TF_CPP_MIN_LOG_LEVEL alone does not
    # reach: at the console scripts' 3, every bfloat16 training on a CPU said
    # "Compiled cluster using XLA!" after absl's "WARNING: All log messages ...".
    from nonlocal_keras import cpu

    env = dict(_env(), TF_CPP_MIN_LOG_LEVEL=level, FLAGS=cpu.FUSE_POINTWISE_FLAGS)
    result = subprocess.run([sys.executable, "-c", ABSL_LOG_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("Compiled cluster using XLA" in result.stderr) is logged, result.stderr[-3000:]
    assert ("absl::InitializeLog" in result.stderr) is logged, result.stderr[-3000:]
