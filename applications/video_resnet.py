"""C2D and I3D ResNets for video, with non-local blocks, as released officially.

The architecture follows the official Caffe2 release (facebookresearch/
video-nonlocal-net, `lib/models/resnet_video.py`, `resnet_helper.py`), which
produced the released weights; see PAPER.md section 3. Everything that varies
between the named models lives in the tables of `video_resnet_spec`; one
builder reads them, and `VideoResNet` exposes it for custom (small) networks:

    # The `make demo` size: 8x32x32 clips, no pool1 and no temporal pool2,
    # res2..res4 with 1 block each, one non-local block on the 8x4x4 map.
    model = VideoResNet((1, 1, 1), input_shape=(8, 32, 32, 3), classes=10,
                        width=16, pool1=False, pool2=False,
                        nonlocal_blocks={"res4": [0]})

Choices (where the paper, the issue or the official code are silent or differ):
- Channels last only (`(batch, T, H, W, C)`): every layer is given
  `data_format="channels_last"`, and the constructors raise a ValueError
  while the global image data format is `"channels_first"` (the clips and
  weights would not be what that setting promises).
- Every convolution is bias-free (a `VideoConv3D`: Keras' Conv3D, whose
  1x1x1 kernels run as one matrix product, faster on a CPU) and
  followed by BatchNormalization (epsilon 1e-5, momentum 0.9, as `Conv3dBN`
  in the official code; Keras' layer, trained with TensorFlow's fused kernel:
  `FusedBatchNormalization`); kernels are initialised with Caffe2's
  `MSRAFill` (He normal, fan out).
- Convolutions with a spatial stride pad symmetrically (explicit
  `ZeroPadding3D` + "valid"), as Caffe2 does; TensorFlow's "same" would pad
  only at the end and shift every window by one pixel against the released
  weights. Stride-1 convolutions use "same" (symmetric for odd kernels).
- pool1 is a 1x3x3 max pool with stride 1,2,2 and no padding, as in the
  official code (224 -> 112 -> 55; the paper's table says 56; the next strided
  convolution gives 28 either way). pool2 is 2x1x1 max, stride 2,1,1.
- `stem="8x8"` (default) has no other temporal down-sampling, as the official
  `resnet_video.py` (8 frames -> 4 at res3); `stem="32x2"` is the paper's
  Table 1 (`resnet_video_org.py`: conv1 temporal stride 2, pool1 2x3x3 stride
  2,2,2; 32 frames -> 4 at res3), which the released 32x2 models need.
- The stride sits in branch2b (the 3x3 convolution), the shortcut is a 1x1
  convolution + BN where the shape changes.
- `nonlocal_blocks` (an int, a stage name or `{stage: [block indices]}`) puts a
  `NonLocal3D` (official defaults) right after the listed residual blocks. The
  integer layouts are `video_resnet_spec.NONLOCAL_LAYOUTS`: they follow the official `LAYER_MOD`
  rule where the official code defines them. For ResNet-101 the official code
  has no 10-block setting: we use every block of res3 and every fourth block of
  res4 ending at its last (2, 6, ..., 22); the 1-block layout is "before the
  last block of res4" (index 21) as the paper says. A stage name (`"res3"`) is
  the paper's stage ablation: one block before the stage's last block (after
  the only block of a one-block stage).
- Head: global average pooling (fully convolutional: any T, H, W), dropout
  (0.5 as the official training) and a Dense classifier named `pred`
  (Gaussian std 0.01) that computes in float32 under mixed precision.
- Layer names are the official blob prefixes: `conv1`, `res_conv1_bn`, `pool1`,
  `res2_0_branch2a` (+ `_bn`), `res2_0_branch1` (shortcut), `pool2`,
  `res4_5_nonlocal` (blob prefix `nonlocal_conv4_5`), `pred`; the output of
  residual block `i` of stage `resN` is the layer `resN_i`.
"""

import numbers
import urllib.error

import keras
from keras import layers
from keras.saving import register_keras_serializable

from nonlocal_keras.applications import h5_weights
from nonlocal_keras.applications.video_resnet_conv import ConcatenatedZeroPadding3D, VideoConv3D
from nonlocal_keras.applications.video_resnet_spec import (
    DEPTHS,
    INFLATION_RULES,
    INFLATIONS,
    check_clip_tiles,
    check_head,
    check_input_shape,
    check_spec,
    clip_size_rules,
    grouped_affinity_layout,
    smallest_clip,
)
from nonlocal_keras.layers import FusedBatchNormalization, NonLocal3D
from nonlocal_keras.utils import checked_sizes

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
# Where a weights file keeps the classifier `pred` (Keras names a file's groups by layer type).
CLASSIFIER = "layers/dense/"
# Caffe2's MSRAFill: Gaussian with variance 2 / fan_out.
CONV_INITIALIZER = {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out",
                               "distribution": "untruncated_normal"}}


def VideoResNet(
    stage_blocks,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=400,
    classifier_activation="softmax",
    name="video_resnet",
    *,
    width=64,
    conv1_time=1,
    inflated_blocks=None,
    inflation="3x1x1",
    stage_strides=None,
    pool1=True,
    pool2=True,
    nonlocal_blocks=0,
    nonlocal_mode="embedded_gaussian",
    nonlocal_affinity="spacetime",
    dropout_rate=0.5,
    stem="8x8",
    nonlocal_use_bn=True,
    nonlocal_frames_per_group=None,
    affine_bn=False,
):
    """Builds a bottleneck video ResNet (C2D/I3D, optionally non-local).

    Args:
        stage_blocks: residual blocks per stage, 1 to 4 stages starting at
            res2, e.g. `(3, 4, 6, 3)` for ResNet-50.
        include_top, weights, input_tensor, input_shape, pooling, classes,
            classifier_activation, name: as in `keras.applications`.
            `input_shape` is `(T, H, W, C)`, any of T, H, W may be None
            (default `(None, None, None, 3)`); `weights` is None, `"imagenet"`
            (inflated from `keras.applications.ResNet50/101`; the classifier
            stays random) or a path (`.weights.h5`, or an official Caffe2
            `.pkl`).
        width: filters of res2's bottleneck (64 in the paper); stage `k`
            uses `width * 2**k` inside and 4 times that at its output.
        conv1_time: temporal kernel of conv1 (1 for C2D, 5 for I3D).
        inflated_blocks: `{stage: indices or "all"/"even"/"odd"}`, the
            residual blocks whose `inflation` convolution gets a temporal
            kernel of 3 (None: none, i.e. C2D).
        inflation: `"3x1x1"` (branch2a, the released models) or `"3x3x3"`
            (branch2b).
        stage_strides: spatial stride of each stage's first block; default
            1 for res2 and 2 for the others.
        pool1: the 1x3x3 max pool after conv1.
        pool2: the 2x1x1 temporal max pool after res2.
        nonlocal_blocks: 0, a count in `video_resnet_spec.NONLOCAL_LAYOUTS` (ResNet-50/101
            stage layouts only), a stage name (one block before that stage's
            last block; after it in a stage of one block) or
            `{stage: [block indices]}`.
        nonlocal_mode, nonlocal_affinity: `mode` and `affinity` of every
            `NonLocal3D`.
        dropout_rate: dropout before the classifier.
        stem: temporal down-sampling before res2: `"8x8"` (none; the official
            `resnet_video.py` of the released 8x8 models) or `"32x2"`
            (conv1 temporal stride 2, pool1 2x3x3 stride 2: the paper's
            Table 1 and `resnet_video_org.py`, the released 32x2 and 128x1
            models). Same weights either way.
        nonlocal_use_bn: `use_bn` of every `NonLocal3D` (False: no BN after
            `W_z`, which starts at zero: the official `NONLOCAL.USE_BN: False`).
        nonlocal_frames_per_group: `frames_per_group` of the blocks: None
            (all frames), an int (every block) or `{stage: frames}`. The
            official frozen-BN non-local releases (`i3d_nonlocal_32x4_...`,
            `..._128x1_...`) are `nonlocal_use_bn=False,
            nonlocal_frames_per_group={"res3": 4}`.
        affine_bn: the network's BatchNormalizations (not the non-local
            blocks') normalise with their moving statistics in training too,
            as fixed affine maps whose scale and offset learn
            (`FusedBatchNormalization(frozen_statistics=True)`): the official
            `MODEL.USE_AFFINE`, with which the frozen-BN releases were trained.

    Returns:
        A `keras.Model`.
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "The video ResNets take channels-last clips (batch, T, H, W, C) only; call "
            "keras.config.set_image_data_format('channels_last') before building one. "
            f"Received: image_data_format={keras.config.image_data_format()!r}")
    spec = check_spec(stage_blocks=stage_blocks, width=width, conv1_time=conv1_time,
                      inflated_blocks=inflated_blocks, inflation=inflation,
                      stage_strides=stage_strides, pool1=pool1, pool2=pool2,
                      nonlocal_blocks=nonlocal_blocks, nonlocal_mode=nonlocal_mode,
                      nonlocal_affinity=nonlocal_affinity, dropout_rate=dropout_rate, stem=stem,
                      nonlocal_use_bn=nonlocal_use_bn,
                      nonlocal_frames_per_group=nonlocal_frames_per_group, affine_bn=affine_bn)
    classes, weights = check_head(include_top, pooling, classes, weights, classifier_activation)
    inputs, x = _input(input_tensor, input_shape, spec)
    width = spec.width

    x = _conv_bn(x, width, (spec.conv1_time, 7, 7), (spec.conv1_time_stride, 2, 2), "conv1",
                 spec.affine_bn, bn_name="res_conv1_bn")
    if spec.pool1:
        pool_time = spec.pool1_time
        x = _max_pool((pool_time, 3, 3), (pool_time, 2, 2), "pool1")(x)
    for stage_index, stage in enumerate(spec.stages):
        inner = width * 2**stage_index
        for block in range(spec.blocks[stage]):
            time = 3 if block in spec.inflated.get(stage, ()) else 1
            stride = spec.strides[stage_index] if block == 0 else 1
            x = _bottleneck(x, inner, stride, time, spec.inflation, f"{stage}_{block}",
                            spec.affine_bn)
            if block in spec.nonlocal_blocks.get(stage, ()):
                x = NonLocal3D(mode=nonlocal_mode, affinity=nonlocal_affinity,
                               use_bn=spec.nonlocal_use_bn,
                               frames_per_group=spec.nonlocal_frames_per_group.get(stage),
                               name=f"{stage}_{block}_nonlocal")(x)
        if stage == "res2" and spec.pool2:
            x = _max_pool((2, 1, 1), (2, 1, 1), "pool2")(x)

    if include_top:
        x = layers.GlobalAveragePooling3D(name="pool5")(x)
        if dropout_rate:
            x = layers.Dropout(dropout_rate, name="pool5_dropout")(x)
        # float32 scores under mixed precision, so that averaging clips is exact.
        x = layers.Dense(classes, activation=classifier_activation, dtype="float32",
                         kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                         name="pred")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling3D(name="pool5")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling3D(name="pool5")(x)

    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs, x, name="video_resnet" if name in (None, "") else name)
    _load_weights(model, weights, spec, include_top)
    return model


def _max_pool(window, strides, name):
    # TensorFlow has no float16 MaxPool3D kernel on the CPU. A maximum is
    # exact in float32, and so are the casts to it and back: under a float16
    # compute dtype (float16, mixed_float16) the pools run in float32.
    compute_dtype = keras.config.dtype_policy().compute_dtype
    if compute_dtype == "float64" and keras.backend.backend() == "tensorflow":
        # Nor a float64 one; in float32 the values would be rounded.
        raise ValueError(
            "The video ResNets' max pools do not run in float64 on TensorFlow (it has no "
            "float64 MaxPool3D kernel; the non-local layers alone do run in float64): build "
            "them under another dtype policy, or with pool1=False and pool2=False "
            "(`VideoResNet`). Received: keras.config.dtype_policy()='float64'")
    float16 = compute_dtype == "float16"
    return layers.MaxPooling3D(window, strides=strides, name=name,
                               dtype="float32" if float16 else None)


def _conv_bn(x, filters, kernel, stride, name, affine_bn, relu=True, bn_name=None):
    """Conv3D (no bias) + BN (+ ReLU); an int `stride` is spatial only."""
    strides = (1, stride, stride) if isinstance(stride, int) else tuple(stride)
    strided = max(strides) > 1
    conv = VideoConv3D(filters, kernel, strides=strides,
                       padding="valid" if strided else "same", use_bias=False,
                       kernel_initializer=CONV_INITIALIZER, name=name)
    if strided and max(kernel) > 1:
        # Caffe2 pads both sides; "same" with stride 2 pads only the end. Before
        # the per-frame 2D path a Pad; before a Conv3D one the remapper leaves alone.
        padding = layers.ZeroPadding3D if conv._per_frame() else ConcatenatedZeroPadding3D
        x = padding(tuple(k // 2 for k in kernel), name=f"{name}_pad")(x)
    x = conv(x)
    x = FusedBatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                frozen_statistics=affine_bn, name=bn_name or f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _bottleneck(x, inner, stride, time, inflation, name, affine_bn):
    """1x1 -> 1x3x3 (stride) -> 1x1 (x4 channels), plus the shortcut."""
    kernels = {"branch2a": (1, 1, 1), "branch2b": (1, 3, 3)}
    if time > 1:
        branch = INFLATIONS[inflation]
        kernels[branch] = (time,) + kernels[branch][1:]
    filters = 4 * inner
    shortcut = x
    if x.shape[-1] != filters or stride != 1:
        shortcut = _conv_bn(x, filters, (1, 1, 1), stride, f"{name}_branch1", affine_bn,
                            relu=False)
    y = _conv_bn(x, inner, kernels["branch2a"], 1, f"{name}_branch2a", affine_bn)
    y = _conv_bn(y, inner, kernels["branch2b"], stride, f"{name}_branch2b", affine_bn)
    y = _conv_bn(y, filters, (1, 1, 1), 1, f"{name}_branch2c", affine_bn, relu=False)
    y = layers.Add(name=f"{name}_sum")([y, shortcut])
    return layers.ReLU(name=name)(y)


def C2DResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=400, classifier_activation="softmax", name=None,
                nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                nonlocal_affinity="spacetime", dropout_rate=0.5, stem="8x8",
                nonlocal_use_bn=True, nonlocal_frames_per_group=None,
                affine_bn=False):
    """C2D ResNet-50 (every kernel 1xkxk; time meets only in pool2), optionally NL.

    `nonlocal_blocks=5` is the released NL C2D. See `VideoResNet` for the arguments.
    """
    return _named_resnet(arch="c2d", depth=50, inflation="3x1x1", **locals())


def C2DResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None,
                 pooling=None, classes=400, classifier_activation="softmax", name=None,
                 nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                 nonlocal_affinity="spacetime", dropout_rate=0.5, stem="8x8",
                 nonlocal_use_bn=True, nonlocal_frames_per_group=None,
                 affine_bn=False):
    """C2D ResNet-101, optionally non-local. See `VideoResNet` for the arguments."""
    return _named_resnet(arch="c2d", depth=101, inflation="3x1x1", **locals())


def I3DResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=400, classifier_activation="softmax", name=None,
                nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                nonlocal_affinity="spacetime", dropout_rate=0.5, inflation="3x1x1",
                stem="8x8", nonlocal_use_bn=True, nonlocal_frames_per_group=None,
                affine_bn=False):
    """I3D ResNet-50 (conv1 5x7x7, every other block inflated), optionally NL.

    `nonlocal_blocks=5` is the released NL I3D. See `VideoResNet` for the arguments.
    """
    return _named_resnet(arch="i3d", depth=50, **locals())


def I3DResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None,
                 pooling=None, classes=400, classifier_activation="softmax", name=None,
                 nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                 nonlocal_affinity="spacetime", dropout_rate=0.5, inflation="3x1x1",
                 stem="8x8", nonlocal_use_bn=True, nonlocal_frames_per_group=None,
                 affine_bn=False):
    """I3D ResNet-101, optionally non-local. See `VideoResNet` for the arguments."""
    return _named_resnet(arch="i3d", depth=101, **locals())


def default_name(arch, depth, nonlocal_blocks=0, inflation="3x1x1"):
    """`nl5_i3d_resnet50`-style default model names."""
    if isinstance(nonlocal_blocks, dict):  # a layout of no block is none
        nonlocal_blocks = nonlocal_blocks if any(nonlocal_blocks.values()) else 0
    prefix = f"nl{int(nonlocal_blocks)}_" if isinstance(nonlocal_blocks, numbers.Integral) and \
        nonlocal_blocks else ("nl_" if nonlocal_blocks else "")
    variant = "_3x3x3" if arch == "i3d" and inflation == "3x3x3" else ""
    return f"{prefix}{arch}{variant}_resnet{depth}"


def _named_resnet(*, arch, depth, inflation, name, **kwargs):
    """`VideoResNet` with the stage blocks of `depth` and the inflation rule of `arch`."""
    rule = INFLATION_RULES[arch]
    return VideoResNet(
        DEPTHS[depth],
        name=name or default_name(arch, depth, kwargs["nonlocal_blocks"], inflation),
        conv1_time=rule["conv1_time"],
        inflated_blocks=rule["blocks"],
        inflation=inflation,
        **kwargs,
    )


def _input(input_tensor, input_shape, spec):
    """The input, and the input after a run-time check of the clip size."""
    input_shape = check_input_shape(input_tensor, input_shape, spec)
    if input_tensor is None:
        input_tensor = layers.Input(input_shape, name="clips")
    elif not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError("`input_tensor` must be a Keras tensor (`keras.Input(...)` or a "
                         f"layer's output). Received: input_tensor={input_tensor!r}")
    if None in input_shape[:3]:
        check = ClipSizeCheck(smallest_clip(spec, input_shape[-1]),
                              grouped_affinity_layout(spec), name="clip_size_check")
        return input_tensor, check(input_tensor)
    return input_tensor, input_tensor


@register_keras_serializable(package="nonlocal_keras")
class ClipSizeCheck(layers.Layer):
    """The identity, after checking that a clip is at least `smallest` (T, H, W, C).

    Put after an input of unknown size: a clip too small then fails with the
    message `VideoResNet` gives for a too small `input_shape`, instead of an
    error deep inside a pooling kernel. `grouped`
    (`video_resnet_spec.grouped_affinity_layout`) adds the check of the
    grouped affinities' tiling, as for a known `input_shape`, instead of an
    error naming a non-local block; it needs sizes known when the call is
    traced (eager, or a graph of known shape): a graph traced with unknown
    sizes still fails on the block's own assertion.
    """

    def __init__(self, smallest, grouped=None, **kwargs):
        super().__init__(**kwargs)
        self.smallest = tuple(int(s) for s in smallest)
        self.grouped = grouped
        self.supports_masking = True

    def call(self, inputs):
        inputs = checked_sizes(inputs, clip_size_rules(self.smallest), inputs.shape[1:])
        check_clip_tiles(inputs.shape[1:], self.grouped)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "smallest": self.smallest, "grouped": self.grouped}


def _load_weights(model, weights, spec, include_top):
    if weights is None:
        return
    if weights == "imagenet":
        if spec.depth is None:
            raise ValueError("weights='imagenet' needs the ResNet-50/101 stages with width 64. "
                             f"Received: weights={weights!r}")
        if model.input_shape[-1] != 3:  # as keras.applications, before a download
            raise ValueError("weights='imagenet' needs RGB clips (3 channels). "
                             f"Received: input_shape={model.input_shape[1:]}")
        from nonlocal_keras.applications.inflation import inflate_weights

        try:
            source = getattr(keras.applications, f"ResNet{spec.depth}")(
                include_top=False, weights="imagenet")
        except Exception as error:  # Keras' download raises a bare Exception
            if not isinstance(error.__context__, urllib.error.URLError):
                raise
            raise OSError(
                f"Keras' ImageNet ResNet{spec.depth} weights are not in its cache and cannot be "
                f"downloaded ({error}). Where there is no internet, copy that file into Keras' "
                "cache (~/.keras/models, or $KERAS_HOME/models) from a machine that has it, or "
                f"pass a .weights.h5 file. Received: weights={weights!r}") from None
        inflate_weights(source, model)
    elif weights.endswith(".pkl"):
        from nonlocal_keras.applications.caffe2_weights import load_caffe2_weights

        load_caffe2_weights(model, weights)
    else:
        try:
            found = h5_weights.layer_arrays(weights)
        except OSError as error:  # not an HDF5 file: h5py's words name neither
            raise ValueError(f"Cannot read the weights file ({error}). "
                             f"Received: weights={weights!r}") from None
        # Keras would drop what the network has no place for (a file with
        # non-local blocks into the network without them) without a word.
        # Without the top, a whole network's file gives the backbone (its
        # classifier, the one Dense layer, left out), as keras.applications' files do.
        detail = (h5_weights.mismatch(model, found, may_drop=() if include_top else (CLASSIFIER,))
                  or h5_weights.block_place_difference(model, weights))
        if detail:
            raise ValueError(f"The weights file is another network's (other `nonlocal_blocks`, "
                             f"depth, width or `classes`?): {detail}. Received: weights={weights!r}")
        model.load_weights(weights)
