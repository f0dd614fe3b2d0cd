"""The layers' Keras contract: argument edges, input dtypes and ranks, shapes
inferred without running, and run-time sizes checked like build-time ones."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import nonlocal_reference as ref
from nonlocal_keras.layers import BaseNonLocal, NonLocal1D, NonLocal2D, NonLocal3D
from test_nonlocal_layers import RTOL, _randomise, _residual_error

tf_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow graphs"
)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"pool_size": 2.0}, r"Received: pool_size=2.0"),
        ({"pool_size": "2"}, r"Received: pool_size='2'"),
        ({"bn_momentum": "0.9"}, r"Received: bn_momentum='0.9'"),
        ({"bn_momentum": 1.0}, r"Received: bn_momentum=1.0"),
        ({"bn_epsilon": None}, r"Received: bn_epsilon=None"),
        ({"bn_epsilon": -1e-5}, r"Received: bn_epsilon=-1e-05"),
        # inf passed `> 0` and gave an all-zero BN output.
        ({"bn_epsilon": float("inf")}, r"finite number > 0 .*\. Received: bn_epsilon=inf"),
        ({"bn_epsilon": float("nan")}, r"Received: bn_epsilon=nan"),
        ({"inter_channels": True}, r"Received: inter_channels=True"),
        ({"inter_channels": 2**31}, r"Received: inter_channels=2147483648"),
    ],
)
def test_argument_edges_raise_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NonLocal2D(**kwargs)


@pytest.mark.parametrize("rank", (4, 0, "2", 2.0, True, None))
def test_base_class_checks_rank(rank):
    # rank=4 failed with a KeyError when called, rank="2" with a TypeError.
    with pytest.raises(ValueError, match=rf"`rank` must be 1, 2 or 3.*Received: rank={rank!r}$"):
        BaseNonLocal(rank=rank)


@pytest.mark.parametrize("rank,shape", [(1, (2, 8, 6)), (2, (2, 4, 6, 6)), (3, (2, 2, 4, 4, 6))])
def test_base_class_round_trips(tmp_path, rank, shape):
    # Exported (the class of isinstance checks): its config must rebuild it,
    # which needs the rank the subclasses fix (from_config had no `rank`).
    layer = BaseNonLocal(rank=np.int64(rank), mode="dot_product", name="base")
    assert layer.rank == rank and type(layer.rank) is int
    config = layer.get_config()
    assert config["rank"] == rank
    clone = BaseNonLocal.from_config(config)
    assert clone.get_config() == config
    # A subclass's config stays its own arguments only.
    assert "rank" not in NonLocal2D().get_config()
    x = np.random.default_rng(rank).normal(0, 1, shape).astype("float32")
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, layer(inputs))
    _randomise(layer, np.random.default_rng(0))
    model.save(tmp_path / "base.keras")
    loaded = keras.saving.load_model(tmp_path / "base.keras")
    assert type(loaded.get_layer("base")) is BaseNonLocal
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))


def test_seeded_initializer_gives_distinct_reproducible_projections():
    # A seeded initialiser was copied with its seed: theta, phi and g started
    # identical. The first keeps the seed, the others take one drawn from it.
    def kernels(initializer):
        layer = NonLocal2D(mode="concatenation", use_bn=True,
                           kernel_initializer=initializer, bias_initializer=initializer)
        layer.build((None, 4, 4, 8))
        return {name: [ops.convert_to_numpy(w) for w in getattr(layer, name).weights]
                for name in ("theta", "phi", "g", "w_z", "w_f")}

    for make in (lambda seed: keras.initializers.RandomNormal(stddev=0.1, seed=seed),
                 lambda seed: keras.initializers.RandomNormal(
                     seed=keras.random.SeedGenerator(seed))):
        first, second = kernels(make(1)), kernels(make(1))
        for name in first:  # reproducible: the same seed builds the same block
            for a, b in zip(first[name], second[name]):
                np.testing.assert_array_equal(a, b)
        square = ("theta", "phi", "g")  # the kernels of one shape, (8, 4)
        for i, a in enumerate(square):
            for b in square[i + 1:]:
                assert not np.array_equal(first[a][0], first[b][0]), (a, b)
                assert not np.array_equal(first[a][1], first[b][1]), (a, b)
        # Blocks seeded 1 and 2 (a seed a block, as a user seeds five): no
        # sub-layer of one starts as one of the other (with the seed plus the
        # index, block 1's phi was block 2's theta).
        other = kernels(make(2))
        for a in square:
            for b in square:
                assert not np.array_equal(first[a][0], other[b][0]), (a, b)
    # Unseeded: distinct sub-layers, and distinct blocks.
    first, second = kernels("he_normal"), kernels("he_normal")
    assert not np.array_equal(first["theta"][0], first["phi"][0])
    assert not np.array_equal(first["theta"][0], second["theta"][0])


@pytest.mark.parametrize("cls", [NonLocal1D, NonLocal2D, NonLocal3D, BaseNonLocal])
def test_config_holds_exactly_the_constructor_arguments(cls):
    """Found by a walk: NonLocal1D/2D/3D's configs held `frames_per_group`,
    which none of them named (it went through `**kwargs`; help(NonLocal3D)
    did not show the argument the README lists)."""
    layer = cls(rank=3) if cls is BaseNonLocal else cls()
    named = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert set(layer.get_config()) - {"name", "trainable", "dtype"} == named


def _ones_times_a_hundredth(shape, dtype=None):
    return keras.ops.ones(shape, dtype=dtype) * 0.01


def test_a_function_initializer_builds_the_block():
    """Found by a walk: a function as `kernel_initializer` (which `Dense` takes)
    passed the constructor, then failed in `build` with "AttributeError: 'str'
    object has no attribute 'get'"."""
    layer = NonLocal2D(kernel_initializer=_ones_times_a_hundredth, inter_channels=4)
    layer(np.ones((1, 4, 4, 8), "float32"))
    for name, shape in (("theta", (8, 4)), ("phi", (8, 4)), ("g", (8, 4)), ("w_z", (4, 8))):
        np.testing.assert_array_equal(ops.convert_to_numpy(getattr(layer, name).kernel),
                                      np.full(shape, 0.01, "float32"))


@pytest.mark.parametrize("value", [
    np.float32(0.01), np.full((8, 4), 0.01, "float32"),
    keras.initializers.Constant(np.full((8, 4), 0.01, "float32")),
    {"class_name": "Constant", "config": {"value": [[0.01] * 4] * 8}},
    keras.initializers.Constant([]),
], ids=["numpy scalar", "numpy array", "Constant of an array", "Constant config of a list",
        "Constant of no value"])
@pytest.mark.parametrize("name", ["kernel_initializer", "bias_initializer"])
def test_an_array_initializer_is_refused_by_its_argument(name, value):
    """Keras takes an array as one variable's values, and a `Constant` of an
    array broadcasts it to each shape asked for; the block's projections have
    several shapes (it failed in `build` with Keras' or TensorFlow's shape
    error, or the AttributeError above)."""
    with pytest.raises(ValueError, match=rf"`{name}` must be a Keras initializer.*"
                                         rf"Received: {name}="):
        NonLocal2D(**{name: value})


def test_a_constant_of_one_value_initialises_every_projection():
    layer = NonLocal2D(kernel_initializer=keras.initializers.Constant(np.full((1, 1), 0.5)),
                       bias_initializer=keras.initializers.Constant(0.25), inter_channels=4)
    layer.build((None, 4, 4, 8))
    for name, shape in (("theta", (8, 4)), ("phi", (8, 4)), ("g", (8, 4)), ("w_z", (4, 8))):
        sublayer = getattr(layer, name)
        np.testing.assert_array_equal(ops.convert_to_numpy(sublayer.kernel), np.full(shape, 0.5))
        np.testing.assert_array_equal(ops.convert_to_numpy(sublayer.bias),
                                      np.full(shape[1:], 0.25))


def test_numpy_integers_are_integers():
    layer = NonLocal2D(inter_channels=np.int64(4), pool_size=(np.int32(2), 2),
                       bn_momentum=np.float32(0.5))
    layer.build((None, 4, 4, 6))
    assert layer.g.kernel.shape == (6, 4)
    config = layer.get_config()
    # Plain Python numbers, so the config serialises to JSON.
    assert type(config["inter_channels"]) is int and config["pool_size"] == (2, 2)
    assert type(config["bn_momentum"]) is float
    assert NonLocal2D.from_config(config).get_config() == config


def test_integer_inputs_are_cast_like_dense():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (2, 8, 6)).astype("int32")
    layer = NonLocal1D(mode="dot_product")
    layer.build(x.shape)
    weights, bn = _randomise(layer, rng)
    out = layer(x, training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    expected = ref.nonlocal_block(x.astype("float64"), weights, "dot_product", (2,), bn=bn)
    assert _residual_error(ops.convert_to_numpy(out), expected, x) < RTOL


def test_input_spec_rejects_another_rank():
    layer = NonLocal2D()
    layer(np.zeros((1, 4, 4, 6), "float32"))
    assert layer.input_spec.ndim == 4 and layer.input_spec.axes == {-1: 6}
    with pytest.raises(ValueError, match="expected ndim=4, found ndim=5"):
        layer(np.zeros((1, 2, 4, 4, 6), "float32"))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 6"):
        layer(np.zeros((1, 4, 4, 5), "float32"))


@pytest.mark.parametrize(
    "layer,shape,scores",
    [
        (NonLocal1D(), (None, 8, 6), (None, 8, 4)),
        (NonLocal2D(data_format="channels_first"), (2, 6, 4, 6), (2, 24, 6)),
        (NonLocal3D(), (2, None, 4, 4, 6), (2, None, None)),
        (NonLocal3D(affinity="space", pool_size=(2, 2, 2)), (2, 4, 4, 6, 6), (2, 2, 48, 6)),
        (NonLocal3D(affinity="time"), (2, 4, 4, 6, 6), (2, 6, 16, 4)),
    ],
)
def test_output_shapes_without_running(layer, shape, scores):
    assert layer.compute_output_shape(shape) == shape
    out, attention = layer.compute_output_spec(
        keras.KerasTensor(shape), return_attention_scores=True)
    assert out.shape == shape and attention.shape == scores
    if None not in shape:  # the inferred shapes are the ones a call gives
        real_out, real_scores = layer(np.zeros(shape, "float32"), return_attention_scores=True)
        assert tuple(real_out.shape) == shape and tuple(real_scores.shape) == scores


def test_symbolic_call_with_scores():
    inputs = keras.Input((4, 6, 6))
    out, scores = NonLocal2D()(inputs, return_attention_scores=True)
    assert out.shape == (None, 4, 6, 6) and scores.shape == (None, 24, 6)


# Built on unknown sizes, called on maps the window does not fit or that a
# grouped affinity cannot split: the build-time words, at run time.
RUN_TIME_CASES = [
    (lambda: NonLocal2D(), (1, 1, 3, 4), "pool size 2 on position axis 0 is larger"),
    (lambda: NonLocal2D(), (1, 1, 1, 4), "pool size 2 on position axis 0 is larger"),
    (lambda: NonLocal3D(pool_size=2), (1, 1, 4, 4, 4), "pool size 2 on position axis 0 is larger"),
    (lambda: NonLocal3D(affinity="time"), (1, 2, 5, 4, 4), "needs position axis 1 to be a multiple"),
    (lambda: NonLocal3D(affinity="space", pool_size=2), (1, 3, 4, 4, 4),
     "needs position axis 0 to be a multiple"),
]


def _unknown_sizes(make, shape):
    layer = make()
    layer.build((None,) * (len(shape) - 1) + shape[-1:])
    return layer


@pytest.mark.parametrize("make,shape,message", RUN_TIME_CASES)
def test_run_time_sizes_eager(make, shape, message):
    layer = _unknown_sizes(make, shape)
    with pytest.raises(ValueError, match=message):
        layer(np.zeros(shape, "float32"))
    with pytest.raises(ValueError, match=message):  # and at build time
        make().build(shape)


@tf_only
@pytest.mark.parametrize("make,shape,message", RUN_TIME_CASES)
def test_run_time_sizes_in_a_tf_function(make, shape, message):
    import tensorflow as tf

    layer = _unknown_sizes(make, shape)
    call = tf.function(lambda t: layer(t, training=False),
                       input_signature=[tf.TensorSpec((None,) * (len(shape) - 1) + shape[-1:])])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(tf.zeros(shape))


@tf_only
def test_run_time_sizes_under_xla_with_shapes_known_at_trace():
    # A jit-compiled function traced on the call's shape raises the ValueError
    # while tracing. (XLA drops assertions: sizes unknown at trace time are
    # not checked there.)
    import tensorflow as tf

    make, shape, message = RUN_TIME_CASES[0]
    layer = _unknown_sizes(make, shape)
    call = tf.function(lambda t: layer(t, training=False), jit_compile=True)
    with pytest.raises(ValueError, match=message):
        call(tf.zeros(shape))


@tf_only
def test_valid_sizes_still_run_in_a_tf_function():
    import tensorflow as tf

    layer = _unknown_sizes(lambda: NonLocal3D(affinity="time"), (1, 2, 4, 4, 4))
    call = tf.function(lambda t: layer(t, training=False),
                       input_signature=[tf.TensorSpec((None, None, None, None, 4))])
    x = np.random.default_rng(1).normal(size=(1, 2, 4, 6, 4)).astype("float32")
    np.testing.assert_allclose(call(x).numpy(), ops.convert_to_numpy(layer(x)), rtol=1e-6)
