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
