"""Serve an exported detection SavedModel in a process that cannot import the package."""

import subprocess
import sys
import textwrap


def serve_without_the_package(export_dir, cwd, keys, image_size=256):
    """Run `serving_default` on one random uint8 image; print `key shape` per key.

    The process has `nonlocal_keras` blocked and runs from `cwd` (a folder that
    does not contain it); it also fails if Model Garden got imported. Returns
    the `subprocess.CompletedProcess`.
    """
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["nonlocal_keras"] = None
        try:
            import nonlocal_keras
        except ImportError:
            pass
        else:
            raise SystemExit("nonlocal_keras is importable")
        import tensorflow as tf
        serve = tf.saved_model.load({str(export_dir)!r}).signatures["serving_default"]
        images = tf.cast(tf.random.uniform((1, {image_size}, {image_size}, 3), maxval=255), tf.uint8)
        out = serve(images)
        assert "official" not in sys.modules
        for key in {list(keys)!r}:
            print(key, out[key].shape)
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=str(cwd))


def check_serves_without_the_package(export_dir, cwd, shapes):
    """The export needs no Keras layer traced to serve, and `serve_without_the_package`
    gives each output of `shapes` (`{key: shape tuple}`) its shape."""
    assert keras_layer_traces(export_dir) == 0  # serving needs the signatures only
    loaded = serve_without_the_package(export_dir, cwd, shapes)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    for key, shape in shapes.items():
        assert f"{key} {shape}" in loaded.stdout, loaded.stdout


def keras_layer_traces(export_dir):
    """How many graph functions of the SavedModel are TF-Keras per-layer call traces."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(f"{export_dir}/saved_model.pb", "rb") as f:
        saved_model.ParseFromString(f.read())
    library = saved_model.meta_graphs[0].graph_def.library
    return sum("layer_call" in function.signature.name for function in library.function)
