"""The rank-generic non-local block; `NonLocal1D/2D/3D` only fix the rank."""

import math
import numbers

import keras
import numpy as np
from keras import dtype_policies, initializers, layers, ops, regularizers
from keras.saving import register_keras_serializable

from nonlocal_keras import nonlocal_math
from nonlocal_keras.layers.fused_batch_normalization import FusedBatchNormalization
from nonlocal_keras.utils import (checked_bool, checked_choice, checked_epsilon, checked_get,
                                   checked_momentum, checked_sizes, is_positive_int)

# The official code (video-nonlocal-net, lib/core/config.py) initialises the
# block's convolutions with a Gaussian of std 0.01; the paper says MSRA.
OFFICIAL_KERNEL_INITIALIZER = {"class_name": "RandomNormal", "config": {"stddev": 0.01}}

_DEFAULT_POOL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}
# The sub-layers in a fixed order: a seeded initialiser gives each its own seed.
_PROJECTIONS = ("theta", "phi", "g", "w_z", "w_f")
_POSITION_AXES = {1: "(batch, length, channels)", 2: "(batch, height, width, channels)",
                  3: "(batch, time, height, width, channels)"}


@register_keras_serializable(package="nonlocal_keras")
class BaseNonLocal(layers.Layer):
    """Non-local block `z = x + BN(W_z y)` with `y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)`.

    Wang, Girshick, Gupta, He, "Non-local Neural Networks", CVPR 2018. Use the
    rank-specific subclasses `NonLocal1D`, `NonLocal2D` and `NonLocal3D`;
    `BaseNonLocal(rank=...)` is the same block (its config then holds
    `rank`, so that it saves and loads as they do), and the class to test
    for with `isinstance`.

    Args:
        rank: number of position axes (1, 2 or 3).
        mode: pairwise function: `"gaussian"`, `"embedded_gaussian"` (default),
            `"dot_product"` or `"concatenation"`.
        inter_channels: channels of theta, phi and g; `None` means `C // 2`.
        sub_sample: max-pool the input before phi and g (official order).
        pool_size: pooling window, an int or a tuple of `rank` ints; `None`
            means 2, (2, 2) or (1, 2, 2) by rank.
        use_bn: BatchNormalization after `W_z` with gamma initialised to 0;
            without it `W_z` itself is initialised to 0. Either way the block
            is the identity at initialisation.
        use_scale: divide the logits of the softmax modes by the square root of
            the compared embedding's channel count (the official code's
            `USE_SCALE`, which the paper does not mention).
        affinity: 3D only: `"spacetime"` (default), `"space"` (j runs over
            the query's own frame) or `"time"` (j runs over the query's own
            spatial cell across frames). Grouped affinities need the grouped
            axes to be divisible by the pool size.
        frames_per_group: 3D, `"spacetime"` only: j runs over the query's own
            group of this many consecutive frames (None: all frames), as the
            official `add_nonlocal_group` does at res3 of the frozen-BN
            non-local releases (groups of 4 frames). A multiple of the pool's
            frames; the input's frames must be a multiple of it.
        data_format: `"channels_last"` (default) or `"channels_first"`.
        kernel_initializer: for theta, phi, g, w_f and (with BN) `W_z`;
            default Gaussian std 0.01 as the official code (pass
            `"he_normal"` for the paper's MSRA initialisation).
        bias_initializer, kernel_regularizer, bias_regularizer: as for Keras
            convolutions, applied to every projection of the block.
        bn_momentum, bn_epsilon: of the BatchNormalization (official: 0.9,
            1e-5).
        chunk_size: memory-efficient execution. `"auto"` (default) keeps the
            plain path while one example's affinity has at most 2**24 entries
            (res4 and res3 of the paper stay plain) and above that processes
            the queries in slices of about 2**24 / N_k positions, recomputing
            each slice in the backward pass; an int forces slices of that many
            queries; `None` forces the plain path. All give the same outputs
            and gradients (exact, no approximation); chunked, peak memory grows
            with N instead of N^2 (a 32x56x56 clip fits in a few GB instead
            of more than 10). `return_attention_scores=True` materialises the
            whole affinity and so always takes the plain path.

    Sub-layers (created in `build`; the 1x1 convolutions are `Dense` layers
    acting on the channel axis, kernels `(C_in, C_out)`):
        `theta`, `phi` (both `None` in gaussian mode), `g`, `w_z`, `bn` (a
        `FusedBatchNormalization`; `None` without BN), `w_f` (concatenation
        only, kernel `(2 C_inner, 1)`).
        Where it does fewer multiply-adds (few keys, many channels: res4 of
        the paper), the block multiplies `theta`'s and `w_z`'s kernels into
        the other side of the attention products instead of calling those
        layers (`nonlocal_math.reassociates`): same weights, same result up
        to float rounding.

    Call arguments:
        inputs: `(batch, *positions, C)` (or channels first); integer inputs
            are cast to the compute dtype.
        training: BatchNormalization mode.
        return_attention_scores: also return the normalised affinity
            `(batch, N_q, N_k)`, or `(batch, groups, N_q, N_k)` for the
            grouped affinities (queries in input order, keys after pooling;
            `attention_scores_shape` gives it). It is computed, and returned,
            in float32 (float64 under a float64 policy), whatever the
            policy's 16-bit compute dtype.
        mask: boolean `(batch, *positions)`, True at valid positions; Keras
            passes the input's mask (`Embedding(mask_zero=True)`...). Masked
            positions are no keys (the softmax gives them no weight, the other
            modes divide by the count of valid keys), a pooled window is a
            key only when all its positions are valid (so a valid prefix
            gives the keys of the unpadded input, whose 'valid' pooling drops
            a last partial window), the BN's batch statistics skip them, and
            they come out unchanged. The output keeps the mask.
        attention_mask: boolean with the shape of the attention scores, as
            `MultiHeadAttention`'s: True where a query may attend to a
            (pooled) key; combined with `mask` by a logical and. A query with
            no allowed key gets y = 0.
    """

    def __init__(
        self,
        rank,
        mode="embedded_gaussian",
        inter_channels=None,
        sub_sample=True,
        pool_size=None,
        use_bn=True,
        use_scale=True,
        affinity="spacetime",
        frames_per_group=None,
        data_format=None,
        kernel_initializer=None,
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        chunk_size="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        if not all(keras.backend.is_float_dtype(d)
                   for d in (policy.compute_dtype, policy.variable_dtype)):
            # Found by a walk: "int32" was taken, then the first call failed in BatchNorm.
            raise ValueError("`dtype` must be a floating-point dtype or policy (the block "
                             f"computes a softmax). Received: dtype={kwargs.get('dtype')!r}")
        if not is_positive_int(rank) or rank not in _DEFAULT_POOL:
            raise ValueError(
                "`rank` must be 1, 2 or 3 (sequences, images, video). "
                f"Received: rank={rank!r}"
            )
        rank = int(rank)
        self.rank = rank
        self.mode = checked_choice("mode", mode, nonlocal_math.MODES)
        self.inter_channels = _check_inter_channels(inter_channels)
        self.sub_sample = checked_bool("sub_sample", sub_sample)
        self.pool_size = _check_pool_size(pool_size, rank)
        self.use_bn = checked_bool("use_bn", use_bn)
        self.use_scale = checked_bool("use_scale", use_scale)
        self.affinity = checked_choice("affinity", affinity, nonlocal_math.AFFINITIES)
        if rank != 3 and self.affinity != "spacetime":
            raise ValueError(
                "`affinity` other than 'spacetime' needs video input (NonLocal3D); "
                f"this layer has rank {rank}. Received: affinity={affinity!r}"
            )
        # None, and only None, means the default: '' or 0 are mistakes.
        self.data_format = checked_choice(
            "data_format",
            keras.config.image_data_format() if data_format is None else data_format,
            ("channels_last", "channels_first"),
        )
        self.kernel_initializer = checked_get(
            initializers, "kernel_initializer", kernel_initializer, OFFICIAL_KERNEL_INITIALIZER
        )
        # Dense's own default for None would be Glorot: a block then no identity at the start.
        self.bias_initializer = checked_get(initializers, "bias_initializer", bias_initializer,
                                            "zeros")
        _refuse_values("kernel_initializer", kernel_initializer, self.kernel_initializer)
        _refuse_values("bias_initializer", bias_initializer, self.bias_initializer)
        self.kernel_regularizer = checked_get(regularizers, "kernel_regularizer",
                                              kernel_regularizer)
        self.bias_regularizer = checked_get(regularizers, "bias_regularizer", bias_regularizer)
        self.bn_momentum = checked_momentum("bn_momentum", bn_momentum)
        self.bn_epsilon = checked_epsilon("bn_epsilon", bn_epsilon)
        self.chunk_size = nonlocal_math.check_chunk_size(chunk_size)
        self.frames_per_group = self._check_frames_per_group(frames_per_group)
        self.theta = self.phi = self.g = self.w_z = self.bn = self.w_f = None
        self.supports_masking = True
        self.input_spec = layers.InputSpec(ndim=rank + 2)

    def _check_frames_per_group(self, value):
        if value is None:
            return None
        if self.rank != 3 or self.affinity != "spacetime":
            raise ValueError(
                "`frames_per_group` groups the frames of a 'spacetime' affinity: it needs "
                f"NonLocal3D and affinity='spacetime'; this layer has rank {self.rank} and "
                f"affinity={self.affinity!r}. Received: frames_per_group={value!r}")
        pool_frames = self.effective_pool_size[0]
        if not is_positive_int(value) or value % pool_frames:
            raise ValueError(
                "`frames_per_group` must be None or a positive integer, a multiple of the "
                f"pool's frames ({pool_frames}). Received: frames_per_group={value!r}")
        return int(value)

    def _position_rules(self):
        rules = list(_position_rules(self.effective_pool_size, self.affinity))
        if self.frames_per_group is not None:
            rules.append((1, "multiple", self.frames_per_group, (
                f"frames_per_group={self.frames_per_group} needs the input's frames to be a "
                "multiple of it.")))
        return rules

    @property
    def effective_pool_size(self):
        """The pooling window applied before phi and g (all ones without sub-sampling)."""
        if not self.sub_sample:
            return (1,) * self.rank
        return self.pool_size or _DEFAULT_POOL[self.rank]

    def _channels_last_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f"{type(self).__name__} expects inputs of rank {self.rank + 2}, "
                f"{_POSITION_AXES[self.rank]} in channels_last. "
                f"Received: input_shape={input_shape}"
            )
        if self.data_format == "channels_first":
            input_shape = (input_shape[0],) + input_shape[2:] + (input_shape[1],)
        return input_shape

    def _policy_of(self, sublayer):
        """The dtype policy of the sub-layer named `sublayer` (None: the
        block's own), looked up by name where a config gave the block its
        sub-layers' policies (a quantized block's, see `get_config`). Given to
        them resolved: Keras' `Dense` reads some of its quantization from
        `dtype_policy` itself, and a map there saved no `kernel_scale`."""
        policy = self._dtype_policy
        if not isinstance(policy, dtype_policies.DTypePolicyMap):
            return policy
        return policy.default_policy if sublayer is None else policy[sublayer]

    def build(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        channels = shape[-1]
        if channels is None:
            raise ValueError(
                f"The channel axis of the input to {type(self).__name__} must be known. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.compute_output_shape(input_shape)
        channel_axis = -1 if self.data_format == "channels_last" else 1
        self.input_spec = layers.InputSpec(ndim=self.rank + 2, axes={channel_axis: channels})
        inner = self.inter_channels or max(channels // 2, 1)

        def projection(name, units, kernel_initializer=None, use_bias=True):
            index = _PROJECTIONS.index(name)
            layer = layers.Dense(
                units,
                use_bias=use_bias,
                kernel_initializer=_fresh(kernel_initializer or self.kernel_initializer, index),
                bias_initializer=_fresh(self.bias_initializer, index),
                kernel_regularizer=self.kernel_regularizer,
                bias_regularizer=self.bias_regularizer,
                dtype=self._policy_of(name),
                name=name,
            )
            return layer

        if self.mode != "gaussian":
            self.theta = projection("theta", inner)
            self.phi = projection("phi", inner)
            self.theta.build((None, channels))
            self.phi.build((None, channels))
        self.g = projection("g", inner)
        self.g.build((None, channels))
        self.w_z = projection(
            "w_z", channels, kernel_initializer=None if self.use_bn else "zeros"
        )
        self.w_z.build((None, inner))
        if self.use_bn:
            self.bn = FusedBatchNormalization(
                axis=-1,
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                gamma_initializer="zeros",
                dtype=self._policy_of("bn"),
                name="bn",
            )
            self.bn.build((None,) * (self.rank + 1) + (channels,))
        if self.mode == "concatenation":
            self.w_f = projection("w_f", 1, use_bias=False)
            self.w_f.build((None, 2 * inner))
        self.built = True

    def call(self, inputs, training=None, return_attention_scores=False, mask=None,
             attention_mask=None):
        x = inputs
        if not keras.backend.is_float_dtype(x.dtype):
            x = ops.cast(x, self.compute_dtype)  # integer input, as Dense takes it
        if self.data_format == "channels_first":
            x = ops.moveaxis(x, 1, -1)
        x = checked_sizes(x, self._position_rules(), inputs.shape)
        if mask is not None:
            mask = self._check_mask(mask, x)
        if attention_mask is not None:
            self._check_attention_mask(attention_mask, inputs.shape)
        response = nonlocal_math.nonlocal_response(
            x,
            self.theta,
            self.phi,
            self.g,
            self.w_z,
            mode=self.mode,
            pool_size=self.effective_pool_size,
            affinity=self.affinity,
            use_scale=self.use_scale,
            w_f=None if self.w_f is None else _kernel_of(self.w_f),
            return_attention_scores=return_attention_scores,
            chunk_size=self.chunk_size,
            mask=mask,
            attention_mask=attention_mask,
            frames_per_group=self.frames_per_group,
        )
        z, scores = response if return_attention_scores else (response, None)
        if self.bn is not None:
            # Batch statistics over the valid positions only (Keras' masked moments).
            z = self.bn(z, training=training, mask=mask)
        if mask is not None:
            # Invalid positions pass through unchanged.
            z = ops.where(mask[..., None], z, ops.zeros_like(z))
        outputs = x + z
        if self.data_format == "channels_first":
            outputs = ops.moveaxis(outputs, -1, 1)
        if return_attention_scores:
            return outputs, scores
        return outputs

    def _check_mask(self, mask, x):
        if not _shapes_match(mask.shape, x.shape[:-1]):
            raise ValueError(
                f"The mask of {type(self).__name__} must have the input's batch and "
                f"position axes {tuple(x.shape[:-1])}. Received: mask.shape={tuple(mask.shape)}"
            )
        return ops.cast(mask, "bool")

    def _check_attention_mask(self, attention_mask, input_shape):
        expected = self.attention_scores_shape(input_shape)
        shape = tuple(attention_mask.shape)
        if not _shapes_match(shape, expected):
            raise ValueError(
                f"`attention_mask` of {type(self).__name__} must have the attention scores' "
                f"shape {expected} (batch, [groups,] queries, pooled keys). "
                f"Received: attention_mask.shape={shape}")

    def compute_output_shape(self, input_shape):
        shape = self._channels_last_shape(input_shape)
        checked_sizes(keras.KerasTensor(shape), self._position_rules(), input_shape)
        return tuple(input_shape)

    def compute_output_spec(self, inputs, training=None, return_attention_scores=False,
                            mask=None, attention_mask=None):
        outputs = keras.KerasTensor(self.compute_output_shape(inputs.shape),
                                    dtype=self.compute_dtype)
        if not return_attention_scores:
            return outputs
        return outputs, keras.KerasTensor(self.attention_scores_shape(inputs.shape),
                                          nonlocal_math.affinity_dtype(self.compute_dtype))

    def attention_scores_shape(self, input_shape):
        """Shape of the attention scores (and of `attention_mask`) for an input shape.

        `(batch, N_q, N_k)` for `"spacetime"` and `(batch, groups, N_q, N_k)`
        for `"space"` / `"time"` / `frames_per_group`: N_q counts the input
        positions (of a group),
        N_k the pooled positions (of a group); None where a size is unknown.
        """
        shape = self._channels_last_shape(input_shape)
        positions = shape[1:-1]
        pooled = [None if n is None else n // p
                  for n, p in zip(positions, self.effective_pool_size)]

        def size(sizes):
            return None if None in sizes else math.prod(sizes)

        pool = self.effective_pool_size
        # "space" groups the frames of each pooled frame (`nonlocal_math._space`).
        frames = self.frames_per_group or (pool[0] if self.affinity == "space" else None)
        if frames is not None:
            groups = None if positions[0] is None else positions[0] // frames
            return (shape[0], groups, size([frames] + list(positions[1:])),
                    size([frames // pool[0]] + pooled[1:]))
        if self.affinity == "spacetime":
            return (shape[0], size(positions), size(pooled))
        return (shape[0], size(pooled[1:]), size([positions[0]] + list(pool[1:])), pooled[0])

    def get_config(self):
        config = super().get_config()
        quantized = {layer.name: layer.dtype_policy for layer in self._flatten_layers(
            include_self=False, recursive=False) if layer.quantization_mode}
        if quantized:
            # `model.quantize` quantizes the projections, not the block: the
            # block's own policy would rebuild them unquantized on loading,
            # and the saved int8 kernels and scales would not fit (keras-hub's
            # convention, a map of the sub-layers' policies; see `_policy_of`).
            # By name, not by path: a model's path may differ once loaded
            # (a Sequential's blocks lose its name).
            policies = dtype_policies.DTypePolicyMap(default_policy=self._policy_of(None))
            for path, policy in quantized.items():
                policies[path] = policy
            config["dtype"] = dtype_policies.serialize(policies)
        if type(self) is BaseNonLocal:
            # The subclasses fix the rank and do not take it as an argument.
            config["rank"] = self.rank
        config.update(
            {
                "mode": self.mode,
                "inter_channels": self.inter_channels,
                "sub_sample": self.sub_sample,
                "pool_size": self.pool_size,
                "use_bn": self.use_bn,
                "use_scale": self.use_scale,
                "affinity": self.affinity,
                "frames_per_group": self.frames_per_group,
                "data_format": self.data_format,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers.serialize(self.bias_regularizer),
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "chunk_size": self.chunk_size,
            }
        )
        if self.rank != 3 and type(self) is not BaseNonLocal:
            del config["frames_per_group"]  # video only: NonLocal1D/2D do not take it
        return config


def _fresh(initializer, index):
    """A copy of `initializer` for the sub-layer `_PROJECTIONS[index]`.

    A Keras initialiser returns the same values on every call. An unseeded
    one draws a new seed when copied, so a copy per sub-layer keeps theta, phi
    and g from starting identical; a seeded one would copy its seed too, so
    the first sub-layer keeps the seed and the others take one drawn from it
    and their index: distinct sub-layers, two blocks built with the same seed
    start equal, and blocks seeded 1, 2, ... share no sub-layer's start (with
    the seed plus the index, block 1's phi was block 2's theta).
    """
    initializer = initializers.get(initializer)
    if not isinstance(initializer, initializers.Initializer):
        # A function (or the one Keras makes of an array) has no seed to draw:
        # it gives what it gives, as to a `Dense`.
        return initializer
    config = initializer.get_config()
    arguments, seed = config, config.get("seed")
    if isinstance(seed, dict):  # a serialised keras.random.SeedGenerator
        arguments = seed.get("config", {})
        seed = arguments.get("seed")
    if index and isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        drawn = np.random.SeedSequence([int(seed) % 2**64, index]).generate_state(1)[0]
        arguments["seed"] = int(drawn)
    return type(initializer).from_config(config)


def _refuse_values(name, value, initializer=None):
    # Keras takes an array (or a NumPy number) as the values of one variable
    # of its shape, and a `Constant` broadcasts its value to the shape asked
    # for; the block's projections have several shapes. It failed in `build`,
    # naming no argument of the block. `initializer`: `value` as resolved.
    values = getattr(initializer, "value", None) if isinstance(
        initializer, initializers.Constant) else None
    if (isinstance(value, (np.ndarray, np.generic)) or keras.ops.is_tensor(value)
            or np.size(values) != 1):
        raise ValueError(f"`{name}` must be a Keras initializer (a `Constant` of one value), "
                         "its name or config, or a "
                         "function of (shape, dtype): the block's projections have several "
                         f"shapes, so no one array initialises them. Received: {name}={value!r}")


def _kernel_of(dense):
    """`dense`'s kernel as its call applies it (w_f's is multiplied, never called).

    A quantized `Dense` (`model.quantize`) holds raw int8 or packed int4
    values in `kernel` and scales them back inside its call, each mode its
    own way (per-channel or per-block scales; float8 keeps a float kernel
    but rounds it, and the input, to float8 in the call). Its output for the
    identity is its kernel as it computes it, whatever the mode, without
    copying any mode's arithmetic; the identity's rows lose nothing to the
    input's quantization (abs-max 1, a float8 value). A float `Dense` gives
    its kernel as it is (the float path is unchanged).
    """
    if not getattr(dense, "quantization_mode", None):
        return dense.kernel
    return dense(ops.eye(dense.input_spec.axes[-1], dtype=dense.compute_dtype))


def _shapes_match(shape, expected):
    """Same rank, and equal wherever both sizes are known."""
    return len(shape) == len(expected) and all(
        a is None or b is None or a == b for a, b in zip(shape, expected))


def _check_inter_channels(value):
    # The bound is a tensor axis's: above it the build failed in TensorFlow's
    # "Can't convert Python sequence with out-of-range integer", naming no argument.
    if value is not None and not (is_positive_int(value) and value < 2**31):
        raise ValueError(
            "`inter_channels` must be None (half the input channels) or an "
            f"integer from 1 to 2**31 - 1. Received: inter_channels={value!r}"
        )
    return None if value is None else int(value)


def _check_pool_size(value, rank):
    if value is None:
        return None
    sizes = (value,) * rank if is_positive_int(value) else value
    if (not isinstance(sizes, (tuple, list)) or len(sizes) != rank
            or not all(is_positive_int(p) for p in sizes)):
        raise ValueError(
            f"`pool_size` must be None, a positive integer or a tuple of {rank} "
            f"positive integers. Received: pool_size={value!r}"
        )
    return tuple(int(p) for p in sizes)


def _position_rules(pool_size, affinity):
    """`utils.checked_sizes` rules for channels-last inputs: the pool window
    fits every position axis, and the grouped affinities get whole windows."""
    for axis, pool in enumerate(pool_size):
        yield 1 + axis, "at_least", pool, (
            f"The pool size {pool} on position axis {axis} is larger than the "
            "input there; lower `pool_size` or set `sub_sample=False`." if pool > 1 else
            f"The input has no positions on position axis {axis}.")
        if (affinity == "space" and axis == 0) or (affinity == "time" and axis > 0):
            yield 1 + axis, "multiple", pool, (
                f"affinity={affinity!r} needs position axis {axis} to be a "
                f"multiple of the pool size there ({pool}).")
