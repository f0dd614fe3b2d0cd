"""The video ResNets (with non-local blocks) on JAX and PyTorch, against TensorFlow.

The backend is fixed when Keras is imported, so each backend runs in its own
process (`backend_check.py`), with TensorFlow unimportable there. The weights
come from this (TensorFlow) process, random BN statistics included, through a
`.weights.h5` file; predictions must agree to float32 tolerance, and `fit`
must train every weight (FusedBatchNormalization defers to Keras' own there).
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import backend_check

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the TensorFlow process drives the others")


def _randomise_batch_norms(model, rng):
    # Non-trivial statistics and affine terms, and so an active non-local
    # block (its BN gamma starts at zero).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                               rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)])
        for sub in (getattr(layer, "bn", None),):
            if sub is not None:
                c = sub.gamma.shape[0]
                sub.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),
                                 rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)])


@pytest.fixture(scope="module")
def tensorflow_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(4,) + backend_check.INPUT_SHAPE).astype("float32")
    np.savez(directory / "inputs.npz", clips=clips, labels=np.array([0, 1, 2, 3]))
    expected = {}
    for arch in backend_check.TINY_MODELS:
        model = backend_check.tiny_model(arch)
        _randomise_batch_norms(model, rng)
        model.save_weights(directory / f"{arch}.weights.h5")
        expected[arch] = np.asarray(model.predict(clips, verbose=0))
    return directory, expected


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_video_resnets_match_tensorflow(tensorflow_run, backend):
    pytest.importorskip(backend)
    directory, expected = tensorflow_run
    env = dict(os.environ, KERAS_BACKEND=backend)
    script = os.path.join(os.path.dirname(__file__), "backend_check.py")
    result = subprocess.run([sys.executable, script, str(directory)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    got = np.load(directory / f"{backend}.npz")
    assert not got["tensorflow_imported"]
    for arch, logits in expected.items():
        assert np.abs(logits).max() > 1e-3  # the comparison can tell models apart
        # float32 convolutions summed in another order: ~1e-6 relative per op.
        np.testing.assert_allclose(got[f"{arch}_predictions"], logits,
                                   rtol=1e-4, atol=1e-4 * np.abs(logits).max())
        assert np.all(np.isfinite(got[f"{arch}_loss"]))
        # Every weight moved: kernels, BN affine terms and moving statistics
        # (trained BN) and the non-local block's projections.
        assert got[f"{arch}_changed"].all(), arch
    # A batch of no example was a ZeroDivisionError (JAX) or a reshape error (PyTorch).
    assert got["empty_batch_shapes"].all()
    if backend != "jax":
        # Keras' torch matmul gives float32 for float64 operands: the
        # concatenation mode's scores were float32.
        assert list(got["float64_scores_dtypes"]) == ["float64"] * 4
