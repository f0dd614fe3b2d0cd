"""`make demo` end to end on a tiny dataset, and the attention picture's indexing."""

import json
import os

import numpy as np
import pytest
import yaml


def test_marker_attention_picks_the_marked_quadrant_of_the_last_frame():
    from nonlocal_keras.training import attention_map, demo_model

    model = demo_model.DemoC2D(input_shape=(8, 32, 32, 3), width=8)
    clips = np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)).astype("float32")
    maps = attention_map.marker_attention(model, clips, [1, 2])
    layer = attention_map.find_nonlocal_layer(model)
    import keras
    features = keras.Model(model.input, layer.input)(clips)
    scores = np.asarray(layer(features, return_attention_scores=True)[1])
    # Independent indexing: scores as (T, H, W) queries x (T, H/2, W/2) keys.
    grid = scores.reshape(2, 8, 4, 4, 8, 2, 2)
    np.testing.assert_allclose(maps[0], grid[0, 7, 0:2, 2:4].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(maps[1], grid[1, 7, 2:4, 0:2].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), 1.0, rtol=1e-4)


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys, monkeypatch):
    from nonlocal_keras.training import demo

    arguments = ["--output-dir", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"),
                 "--runs-dir", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "exported"),
                 "--num-train", "64", "--num-test", "8", "--set", "schedule.epochs=1",
                 "--set", "runtime.verbose=0"]
    assert demo.main(arguments) == 0
    out = tmp_path / "out"
    written = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in written["rows"]] == ["C2D", "NL-C2D"]
    assert written["rows"][1]["params"] > written["rows"][0]["params"]
    assert all(row["eval_videos"] == 8 and row["eval_views_per_video"] == 6
               for row in written["rows"])
    assert (out / "attention.png").stat().st_size > 1000
    # The folders the README's commands use after `make demo`.
    assert written["saved_model"] == str(tmp_path / "exported" / "demo_nl_c2d" / "1")
    assert os.path.isfile(os.path.join(written["saved_model"], "saved_model.pb"))
    # The signature the README shows, as its own export of the run gives it: the
    # demo exported class names its run's config has not (`top_k_class_names`).
    from nonlocal_keras.training import export

    metadata = export.read_metadata(written["saved_model"])
    run_config = yaml.safe_load((tmp_path / "runs" / "demo_nl_c2d" / "config.yaml").read_text())
    assert metadata.get("class_names") == run_config["data"]["class_names"]
    for run in ("demo_c2d", "demo_nl_c2d"):
        assert (tmp_path / "runs" / run / "final.weights.h5").is_file()
    # Their weights files (final and committed) name their non-local blocks, which
    # a fine-tuning or an evaluation checks the model's against.
    import h5py

    from nonlocal_keras.applications import h5_weights

    for run, blocks in (("demo_c2d", []), ("demo_nl_c2d", ["nonlocal"])):
        files = [tmp_path / "runs" / run / "final.weights.h5",
                 *(tmp_path / "runs" / run).glob("**/ckpt-*.weights.h5")]
        assert len(files) > 1
        for file in files:
            with h5py.File(file, "r") as handle:
                assert json.loads(handle.attrs[h5_weights.BLOCKS_ATTRIBUTE]) == blocks, file
    assert len(os.listdir(out / "examples")) == demo.EXAMPLE_VIDEOS
    assert written["best"] in ("C2D", "NL-C2D")
    # Again: both runs are finished, nothing is retrained, the export is replaced.
    # Had NL-C2D's loss jumped, the demo says so (the table alone blamed the block).
    monkeypatch.setattr(demo, "loss_jump", lambda run_dir: (6, 0.186, 1.808)
                        if run_dir.endswith("demo_nl_c2d") else None)
    capsys.readouterr()
    assert demo.main(arguments) == 0
    again = json.loads((out / "results.json").read_text())
    assert [row["top1"] for row in again["rows"]] == [row["top1"] for row in written["rows"]]
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Note:")]
    assert notes == ["Note: NL-C2D's training loss jumped in epoch 6 (0.186 before, 1.808 then), "
                     "an instability of this small run that comes now and then, so its figures "
                     "are not what it usually reaches (README: \"The embedded default\"); "
                     "`nonlocal-demo --restart` trains both again."], notes


def test_a_wrong_setting_or_folder_fails_before_the_dataset_and_leaves_no_folder(tmp_path):
    """`nonlocal-demo --set schedule.epochs=abc` wrote the 5,000 videos (18 s) before
    its one-line error, and left the empty --output-dir and --export-dir; so did an
    --output-dir with a file in its place."""
    from nonlocal_keras.training import demo
    from nonlocal_keras.training.errors import ConfigError, FolderError

    folders = {flag: tmp_path / flag.strip("-") for flag in
               ("--data-dir", "--runs-dir", "--output-dir", "--export-dir")}
    arguments = [str(part) for flag, path in folders.items() for part in (flag, path)]
    with pytest.raises(ConfigError, match="schedule.epochs` must be an integer"):
        demo.main(arguments + ["--set", "schedule.epochs=abc"])
    assert os.listdir(tmp_path) == []
    folders["--export-dir"].write_text("a file")
    with pytest.raises(FolderError, match="Received: --export-dir="):
        demo.main(arguments)
    assert os.listdir(tmp_path) == ["export-dir"]
    # The folders made above a new one go too (`new/` stayed).
    arguments[arguments.index("--output-dir") + 1] = str(tmp_path / "new" / "output")
    with pytest.raises(FolderError, match="Received: --export-dir="):
        demo.main(arguments)
    assert os.listdir(tmp_path) == ["export-dir"]


def test_first_frame_reader_is_the_last_frame_query_with_most_frame0_attention():
    from nonlocal_keras.training import attention_map, demo_model

    model = demo_model.DemoC2D(input_shape=(8, 32, 32, 3), width=8)
    clips = np.random.default_rng(1).normal(size=(2, 8, 32, 32, 3)).astype("float32")
    grid = attention_map.attention_grid(model, clips)
    assert grid.shape == (2, 8, 4, 4, 8, 2, 2)
    mass, readers, maps = attention_map.first_frame_reader(model, clips)
    for b in range(2):
        # Loop reference over the 16 last-frame queries.
        totals = {(r, c): grid[b, 7, r, c, 0].sum() for r in range(4) for c in range(4)}
        best = max(totals, key=totals.get)
        assert readers[b] == best
        np.testing.assert_allclose(mass[b, best[0], best[1]], totals[best], rtol=1e-6)
        np.testing.assert_allclose(maps[b], grid[b, 7, best[0], best[1], 0], rtol=1e-6)


def test_find_nonlocal_layer_searches_nested_models():
    import keras

    from nonlocal_keras.layers import NonLocal3D
    from nonlocal_keras.training import attention_map

    inner_input = keras.Input((2, 4, 4, 6))
    block = NonLocal3D(name="inner_block")
    inner = keras.Model(inner_input, block(keras.layers.ReLU()(inner_input)), name="inner")
    outer_input = keras.Input((2, 4, 4, 6))
    outer = keras.Model(outer_input, inner(keras.layers.Dense(6)(outer_input)))
    assert attention_map.find_nonlocal_layer(outer) is block
    with pytest.raises(ValueError, match="has no non-local block"):
        attention_map.find_nonlocal_layer(keras.Sequential([keras.Input((3,)),
                                                            keras.layers.Dense(2)]))


def test_picture_rows_share_one_colour_scale(monkeypatch, tmp_path):
    from nonlocal_keras.training import attention_map, demo_model

    model = demo_model.DemoC2D(input_shape=(8, 32, 32, 3), width=8)
    frames = np.random.default_rng(2).integers(0, 256, (2, 8, 32, 32, 3)).astype("uint8")
    monkeypatch.setattr(attention_map, "_test_examples",
                        lambda root, count: (frames, [0, 1], [0, 3]))
    drawn = []
    original = attention_map._overlay
    monkeypatch.setattr(attention_map, "_overlay", lambda axis, image, heat, title, vmax: (
        drawn.append((np.asarray(heat), vmax)), original(axis, image, heat, title, vmax))[-1])
    attention_map.save_marker_attention(model, "unused", str(tmp_path / "a.png"), count=2)
    assert len(drawn) == 6 and (tmp_path / "a.png").stat().st_size > 1000
    for row in (drawn[:3], drawn[3:]):
        scale = max(heat.max() for heat, _ in row)
        assert all(vmax == pytest.approx(scale) for _, vmax in row)


def test_a_loss_jump_is_found_in_the_runs_history(tmp_path):
    """A demo whose NL-C2D loss jumped printed 40.8% beside C2D's 36.4% as if the
    block did no better; the demo now says so."""
    from nonlocal_keras.training import demo

    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,top1\n1,2.13,0.22\n2,0.19,0.96\n3,0.29,0.93\n4,1.81,0.37\n"
                       "5,1.70,0.40\n")
    assert demo.loss_jump(str(tmp_path)) == (4, 0.19, 1.81)
    for quiet in ("1,2.13,0.22\n2,0.70,0.81\n3,0.19,0.96\n4,0.29,0.93\n",
                  "1,2.13,0.22\n2,0.03,0.99\n3,0.010,1.0\n4,0.022,1.0\n"):  # near zero
        history.write_text("epoch,loss,top1\n" + quiet)
        assert demo.loss_jump(str(tmp_path)) is None
    history.unlink()
    assert demo.loss_jump(str(tmp_path)) is None


@pytest.mark.parametrize("key", list(__import__(
    "nonlocal_keras.training.demo", fromlist=["SET_BY_THE_DEMO"]).SET_BY_THE_DEMO))
def test_what_the_demo_sets_itself_is_refused_in_set(tmp_path, key):
    """Found by a walk: `--set runtime.output_dir=runs/same` trained both networks
    into one folder (the second refused as another experiment; with --restart it
    moved the first aside) while the demo printed the folders it meant."""
    from nonlocal_keras.training import demo
    from nonlocal_keras.training.errors import ConfigError

    value = tmp_path / "x"  # where a demo that took it would have trained
    with pytest.raises(ConfigError, match=rf"^nonlocal-demo sets {key} itself \(.*\)\. "
                                          rf"Received: --set {key}={value}$"):
        demo.main(["--output-dir", str(tmp_path / "out"), "--set", f"{key}={value}"])
    assert os.listdir(tmp_path) == []


def test_a_training_that_refuses_to_start_leaves_no_empty_folder(tmp_path):
    """Found by a walk: a file where the run folders go left the empty --output-dir
    (and its new parent) and --export-dir; the dataset stays."""
    from nonlocal_keras.training import demo
    from nonlocal_keras.training.errors import FolderError

    (tmp_path / "afile").write_text("a file")
    with pytest.raises(FolderError, match="afile"):
        demo.main(["--output-dir", str(tmp_path / "new" / "output"), "--data-dir",
                   str(tmp_path / "data"), "--runs-dir", str(tmp_path / "afile" / "x"),
                   "--export-dir", str(tmp_path / "exported"), "--num-train", "64",
                   "--num-test", "8"])
    assert sorted(os.listdir(tmp_path)) == ["afile", "data"]
    assert os.listdir(tmp_path / "data")


@pytest.mark.parametrize("override", ["data.num_frames=16", "data.crop_size=28"])
def test_a_clip_other_than_the_videos_is_refused_before_training(tmp_path, override):
    """Found by a re-walk: `--set data.num_frames=64` trained both networks, then
    the attention picture (which feeds the videos whole) failed with a traceback."""
    from nonlocal_keras.training import demo
    from nonlocal_keras.training.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^The demo's videos are 8 frames of 32x32, .*"
                                          rf"Received: .*\(--set {override}\)$"):
        demo.main(["--output-dir", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
                   "--set", override])
    assert os.listdir(tmp_path) == []
