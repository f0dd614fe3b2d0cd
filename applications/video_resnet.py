"""C2D and I3D ResNets for video, with non-local blocks, as released officially.

The architecture follows the official Caffe2 release (facebookresearch/
video-nonlocal-net, `lib/models/resnet_video.py`, `resnet_helper.py`), which
produced the released weights; see PAPER.md section 3. Everything that varies
between the named models lives in the tables below; one private builder reads
them and `VideoResNet` exposes the builder for custom (small) networks:

    # The `make demo` size: 8x32x32 clips, no pool1 and no temporal pool2,
    # res2..res4 with 1 block each, one non-local block on the 8x4x4 map.
    model = VideoResNet((1, 1, 1), input_shape=(8, 32, 32, 3), classes=10,
                        width=16, pool1=False, pool2=False,
                        nonlocal_blocks={"res4": [0]})

Choices (where the paper, the issue or the official code are silent or differ):
- Channels last only (`(batch, T, H, W, C)`); the global data format is never read.
- Every convolution is bias-free and followed by BatchNormalization
  (epsilon 1e-5, momentum 0.9, as `Conv3dBN` in the official code); kernels are
  initialised with Caffe2's `MSRAFill` (He normal, fan out).
- Convolutions with a spatial stride pad symmetrically (explicit
  `ZeroPadding3D` + "valid"), as Caffe2 does; TensorFlow's "same" would pad
  only at the end and shift every window by one pixel against the released
  weights. Stride-1 convolutions use "same" (symmetric for odd kernels).
- pool1 is a 1x3x3 max pool with stride 1,2,2 and no padding, as in the
  official code (224 -> 112 -> 55; the paper's table says 56; the next strided
  convolution gives 28 either way). pool2 is 2x1x1 max, stride 2,1,1.
- The stride sits in branch2b (the 3x3 convolution), the shortcut is a 1x1
  convolution + BN where the shape changes.
- `nonlocal_blocks` (an int, a stage name or `{stage: [block indices]}`) puts a
  `NonLocal3D` (official defaults) right after the listed residual blocks. The
  integer layouts are `NONLOCAL_LAYOUTS`: they follow the official `LAYER_MOD`
  rule where the official code defines them. For ResNet-101 the official code
  has no 10-block setting: we use every block of res3 and every fourth block of
  res4 ending at its last (2, 6, ..., 22); the 1-block layout is "before the
  last block of res4" (index 21) as the paper says. A stage name (`"res3"`) is
  the paper's stage ablation: one block before the stage's last block.
- Head: global average pooling (fully convolutional: any T, H, W), dropout
  (0.5 as the official training) and a Dense classifier named `pred`
  (Gaussian std 0.01) that computes in float32 under mixed precision.
- Layer names are the official blob prefixes: `conv1`, `res_conv1_bn`, `pool1`,
  `res2_0_branch2a` (+ `_bn`), `res2_0_branch1` (shortcut), `pool2`,
  `res4_5_nonlocal` (blob prefix `nonlocal_conv4_5`), `pred`; the output of
  residual block `i` of stage `resN` is the layer `resN_i`.
"""

import os

import keras
from keras import layers

from nonlocal_keras.layers import NonLocal3D

STAGES = ("res2", "res3", "res4", "res5")

# Residual blocks per stage (official BLOCK_CONFIG).
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

# Which residual blocks get a temporal kernel of 3 (official `obtain_arc`):
# a rule per stage, so that it holds for every depth.
INFLATION_RULES = {
    "c2d": {"conv1_time": 1, "blocks": {}},
    "i3d": {"conv1_time": 5,
            "blocks": {"res2": "all", "res3": "even", "res4": "even", "res5": "odd"}},
}

# Which convolution of an inflated block becomes 3xkxk.
INFLATIONS = {"3x1x1": "branch2a", "3x3x3": "branch2b"}

# Residual blocks followed by a non-local block, by depth and block count.
NONLOCAL_LAYOUTS = {
    50: {
        1: {"res4": (4,)},
        5: {"res3": (1, 3), "res4": (1, 3, 5)},
        10: {"res3": (0, 1, 2, 3), "res4": (0, 1, 2, 3, 4, 5)},
    },
    101: {
        1: {"res4": (21,)},
        5: {"res3": (1, 3), "res4": (6, 13, 20)},
        10: {"res3": (0, 1, 2, 3), "res4": (2, 6, 10, 14, 18, 22)},
    },
}

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
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
        nonlocal_blocks: 0, a count in `NONLOCAL_LAYOUTS` (ResNet-50/101
            stage layouts only), a stage name (one block before that stage's
            last block) or `{stage: [block indices]}`.
        nonlocal_mode, nonlocal_affinity: `mode` and `affinity` of every
            `NonLocal3D`.
        dropout_rate: dropout before the classifier.

    Returns:
        A `keras.Model`.
    """
    spec = _check_spec(stage_blocks, width, conv1_time, inflated_blocks, inflation,
                       stage_strides, pool1, pool2, nonlocal_blocks, dropout_rate)
    _check_head(include_top, pooling, classes, weights)
    inputs, x = _input(input_tensor, input_shape, spec)

    x = _conv_bn(x, width, (conv1_time, 7, 7), 2, "conv1", bn_name="res_conv1_bn")
    if spec["pool1"]:
        x = layers.MaxPooling3D((1, 3, 3), strides=(1, 2, 2), name="pool1")(x)
    for stage_index, stage in enumerate(spec["stages"]):
        inner = width * 2**stage_index
        for block in range(spec["blocks"][stage]):
            time = 3 if block in spec["inflated"].get(stage, ()) else 1
            stride = spec["strides"][stage_index] if block == 0 else 1
            x = _bottleneck(x, inner, stride, time, spec["inflation"], f"{stage}_{block}")
            if block in spec["nonlocal"].get(stage, ()):
                x = NonLocal3D(mode=nonlocal_mode, affinity=nonlocal_affinity,
                               name=f"{stage}_{block}_nonlocal")(x)
        if stage == "res2" and spec["pool2"]:
            x = layers.MaxPooling3D((2, 1, 1), strides=(2, 1, 1), name="pool2")(x)

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
    model = keras.Model(inputs, x, name=name)
    _load_weights(model, weights, spec)
    return model


def _conv_bn(x, filters, kernel, stride, name, relu=True, bn_name=None):
    """Conv3D (no bias) + BN (+ ReLU); `stride` is spatial."""
    pad = stride > 1 and max(kernel) > 1
    if pad:
        # Caffe2 pads both sides; "same" with stride 2 pads only the end.
        x = layers.ZeroPadding3D(tuple(k // 2 for k in kernel), name=f"{name}_pad")(x)
    x = layers.Conv3D(filters, kernel, strides=(1, stride, stride),
                      padding="valid" if pad or stride > 1 else "same", use_bias=False,
                      kernel_initializer=CONV_INITIALIZER, name=name)(x)
    x = layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                  name=bn_name or f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _bottleneck(x, inner, stride, time, inflation, name):
    """1x1 -> 1x3x3 (stride) -> 1x1 (x4 channels), plus the shortcut."""
    kernels = {"branch2a": (1, 1, 1), "branch2b": (1, 3, 3)}
    if time > 1:
        branch = INFLATIONS[inflation]
        kernels[branch] = (time,) + kernels[branch][1:]
    filters = 4 * inner
    shortcut = x
    if x.shape[-1] != filters or stride != 1:
        shortcut = _conv_bn(x, filters, (1, 1, 1), stride, f"{name}_branch1", relu=False)
    y = _conv_bn(x, inner, kernels["branch2a"], 1, f"{name}_branch2a")
    y = _conv_bn(y, inner, kernels["branch2b"], stride, f"{name}_branch2b")
    y = _conv_bn(y, filters, (1, 1, 1), 1, f"{name}_branch2c", relu=False)
    y = layers.Add(name=f"{name}_sum")([y, shortcut])
    return layers.ReLU(name=name)(y)


def C2DResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=400, classifier_activation="softmax", name=None,
                nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                nonlocal_affinity="spacetime", dropout_rate=0.5):
    """C2D ResNet-50 (every kernel 1xkxk; time meets only in pool2), optionally NL.

    `nonlocal_blocks=5` is the released NL C2D. See `VideoResNet` for the arguments.
    """
    return _named_resnet("c2d", 50, "3x1x1", include_top, weights, input_tensor, input_shape,
                         pooling, classes, classifier_activation, name, nonlocal_blocks,
                         nonlocal_mode, nonlocal_affinity, dropout_rate)


def C2DResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None,
                 pooling=None, classes=400, classifier_activation="softmax", name=None,
                 nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                 nonlocal_affinity="spacetime", dropout_rate=0.5):
    """C2D ResNet-101, optionally non-local. See `VideoResNet` for the arguments."""
    return _named_resnet("c2d", 101, "3x1x1", include_top, weights, input_tensor, input_shape,
                         pooling, classes, classifier_activation, name, nonlocal_blocks,
                         nonlocal_mode, nonlocal_affinity, dropout_rate)


def I3DResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=400, classifier_activation="softmax", name=None,
                nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                nonlocal_affinity="spacetime", dropout_rate=0.5, inflation="3x1x1"):
    """I3D ResNet-50 (conv1 5x7x7, every other block inflated), optionally NL.

    `nonlocal_blocks=5` is the released NL I3D. See `VideoResNet` for the arguments.
    """
    return _named_resnet("i3d", 50, inflation, include_top, weights, input_tensor, input_shape,
                         pooling, classes, classifier_activation, name, nonlocal_blocks,
                         nonlocal_mode, nonlocal_affinity, dropout_rate)


def I3DResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None,
                 pooling=None, classes=400, classifier_activation="softmax", name=None,
                 nonlocal_blocks=0, nonlocal_mode="embedded_gaussian",
                 nonlocal_affinity="spacetime", dropout_rate=0.5, inflation="3x1x1"):
    """I3D ResNet-101, optionally non-local. See `VideoResNet` for the arguments."""
    return _named_resnet("i3d", 101, inflation, include_top, weights, input_tensor, input_shape,
                         pooling, classes, classifier_activation, name, nonlocal_blocks,
                         nonlocal_mode, nonlocal_affinity, dropout_rate)


def default_name(arch, depth, nonlocal_blocks=0, inflation="3x1x1"):
    """`nl5_i3d_resnet50`-style model names (also the Caffe2 CLI's `--arch` base)."""
    prefix = f"nl{nonlocal_blocks}_" if isinstance(nonlocal_blocks, int) and nonlocal_blocks else (
        "nl_" if nonlocal_blocks else "")
    variant = "_3x3x3" if arch == "i3d" and inflation == "3x3x3" else ""
    return f"{prefix}{arch}{variant}_resnet{depth}"


def _named_resnet(arch, depth, inflation, include_top, weights, input_tensor, input_shape,
                  pooling, classes, classifier_activation, name, nonlocal_blocks, nonlocal_mode,
                  nonlocal_affinity, dropout_rate):
    rule = INFLATION_RULES[arch]
    return VideoResNet(
        DEPTHS[depth],
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name or default_name(arch, depth, nonlocal_blocks, inflation),
        conv1_time=rule["conv1_time"],
        inflated_blocks=rule["blocks"],
        inflation=inflation,
        nonlocal_blocks=nonlocal_blocks,
        nonlocal_mode=nonlocal_mode,
        nonlocal_affinity=nonlocal_affinity,
        dropout_rate=dropout_rate,
    )


def _check_spec(stage_blocks, width, conv1_time, inflated_blocks, inflation, stage_strides,
                pool1, pool2, nonlocal_blocks, dropout_rate):
    blocks = tuple(stage_blocks) if isinstance(stage_blocks, (list, tuple)) else ()
    if not 1 <= len(blocks) <= len(STAGES) or not all(_is_int(n) and n >= 1 for n in blocks):
        raise ValueError("`stage_blocks` must be 1 to 4 positive integers (res2, res3, ...). "
                         f"Received: stage_blocks={stage_blocks!r}")
    stages = STAGES[:len(blocks)]
    if not _is_int(width) or width < 1:
        raise ValueError(f"`width` must be a positive integer. Received: width={width!r}")
    if not _is_int(conv1_time) or conv1_time < 1 or conv1_time % 2 == 0:
        raise ValueError("`conv1_time` must be a positive odd integer. "
                         f"Received: conv1_time={conv1_time!r}")
    if inflation not in INFLATIONS:
        raise ValueError(f"`inflation` must be one of {', '.join(map(repr, INFLATIONS))}. "
                         f"Received: inflation={inflation!r}")
    strides = (1,) + (2,) * (len(blocks) - 1) if stage_strides is None else stage_strides
    if (not isinstance(strides, (list, tuple)) or len(strides) != len(blocks)
            or not all(_is_int(s) and s >= 1 for s in strides)):
        raise ValueError(f"`stage_strides` must be {len(blocks)} positive integers, one per "
                         f"stage. Received: stage_strides={stage_strides!r}")
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate!r}")
    stage_sizes = dict(zip(stages, blocks))
    return {
        "stages": stages,
        "blocks": stage_sizes,
        "depth": next((d for d, b in DEPTHS.items() if b == blocks and width == 64), None),
        "strides": tuple(strides),
        "conv1_time": conv1_time,
        "inflation": inflation,
        "inflated": _block_sets("inflated_blocks", inflated_blocks or {}, stage_sizes),
        "nonlocal": _nonlocal_layout(nonlocal_blocks, blocks, stage_sizes),
        "pool1": bool(pool1),
        "pool2": bool(pool2),
    }


def _nonlocal_layout(nonlocal_blocks, blocks, stage_sizes):
    value = nonlocal_blocks
    if value is None or (_is_int(value) and value == 0):
        return {}
    if isinstance(value, str) and value in stage_sizes:
        return {value: {max(stage_sizes[value] - 2, 0)}}
    if _is_int(value):
        depth = next((d for d, b in DEPTHS.items() if b == blocks), None)
        layouts = NONLOCAL_LAYOUTS.get(depth, {})
        if value not in layouts:
            raise ValueError(
                "`nonlocal_blocks` as a count must be 0, 1, 5 or 10 and needs the "
                "ResNet-50/101 stage blocks; otherwise give `{stage: [block indices]}`. "
                f"Received: nonlocal_blocks={value!r} with stage_blocks={blocks}")
        value = layouts[value]
    if not isinstance(value, dict):
        raise ValueError(
            "`nonlocal_blocks` must be 0, 1, 5, 10, a stage name "
            f"({', '.join(stage_sizes)}) or a dict {{stage: [block indices]}}. "
            f"Received: nonlocal_blocks={nonlocal_blocks!r}")
    return _block_sets("nonlocal_blocks", value, stage_sizes)


def _block_sets(argument, value, stage_sizes):
    """`{stage: indices or "all"/"even"/"odd"}` -> `{stage: set of indices}`, checked."""
    if not isinstance(value, dict):
        raise ValueError(f"`{argument}` must be a dict {{stage: [block indices]}}. "
                         f"Received: {argument}={value!r}")
    rules = {"all": lambda i: True, "even": lambda i: i % 2 == 0, "odd": lambda i: i % 2 == 1}
    result = {}
    for stage, indices in value.items():
        if stage not in stage_sizes:
            raise ValueError(
                f"Unknown stage {stage!r} in `{argument}`; this network has "
                f"{', '.join(stage_sizes)}. Received: {argument}={value!r}")
        size = stage_sizes[stage]
        if isinstance(indices, str) and indices in rules:
            indices = [i for i in range(size) if rules[indices](i)]
        if isinstance(indices, (list, tuple, set)) and all(_is_int(i) for i in indices):
            bad = [i for i in indices if not 0 <= i < size]
            if not bad:
                result[stage] = set(indices)
                continue
            raise ValueError(
                f"Block index {bad[0]} of {stage} in `{argument}` is out of range: {stage} "
                f"has {size} residual blocks (0 to {size - 1}). Received: {argument}={value!r}")
        raise ValueError(
            f"`{argument}[{stage!r}]` must be a list of block indices or 'all', 'even', "
            f"'odd'. Received: {argument}={value!r}")
    return result


def _check_head(include_top, pooling, classes, weights):
    if pooling not in (None, "avg", "max"):
        raise ValueError("`pooling` must be None, 'avg' or 'max'. "
                         f"Received: pooling={pooling!r}")
    if include_top and (not _is_int(classes) or classes < 1):
        raise ValueError("With `include_top=True`, `classes` must be a positive integer. "
                         f"Received: classes={classes!r}")
    if not include_top and classes != 400:
        raise ValueError("`classes` only applies with `include_top=True` (the classifier). "
                         f"Received: classes={classes!r}, include_top={include_top!r}")
    if not (weights in (None, "imagenet") or (isinstance(weights, str) and os.path.isfile(weights))):
        raise ValueError("`weights` must be None, 'imagenet' or the path of a weights file "
                         f"(.weights.h5 or an official Caffe2 .pkl). Received: weights={weights!r}")


def _input(input_tensor, input_shape, spec):
    if input_shape is None:
        input_shape = (tuple(input_tensor.shape[1:]) if input_tensor is not None
                       else (None, None, None, 3))
    input_shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if (input_shape is None or len(input_shape) != 4 or not _is_int(input_shape[-1])
            or not all(d is None or (_is_int(d) and d >= 1) for d in input_shape)):
        raise ValueError("`input_shape` must be (frames, height, width, channels), "
                         "channels known, None allowed elsewhere. "
                         f"Received: input_shape={input_shape!r}")
    smallest_time = 2 if spec["pool2"] else 1
    smallest_space = next(s for s in range(1, 1 << 16) if _spatial_size_fits(s, spec))
    frames, height, width = input_shape[:3]
    if ((frames is not None and frames < smallest_time)
            or any(s is not None and not _spatial_size_fits(s, spec) for s in (height, width))):
        raise ValueError(
            "`input_shape` is too small for this network: the smallest allowed is "
            f"({smallest_time}, {smallest_space}, {smallest_space}, {input_shape[-1]}). "
            f"Received: input_shape={input_shape}")
    if input_tensor is None:
        inputs = layers.Input(input_shape, name="clips")
    elif keras.backend.is_keras_tensor(input_tensor):
        inputs = input_tensor
    else:
        inputs = layers.Input(tensor=input_tensor, shape=input_shape, name="clips")
    return inputs, inputs


def _spatial_size_fits(size, spec):
    """Whether a height/width survives conv1, pool1 and the non-local pooling."""
    size = (size - 1) // 2 + 1  # conv1: 7x7, stride 2, padding 3
    if spec["pool1"]:
        if size < 3:
            return False
        size = (size - 3) // 2 + 1
    for stage, stride in zip(spec["stages"], spec["strides"]):
        size = (size - 1) // stride + 1  # 3x3, padding 1
        if spec["nonlocal"].get(stage) and size < 2:  # 1x2x2 pool before phi and g
            return False
    return True


def _load_weights(model, weights, spec):
    if weights is None:
        return
    if weights == "imagenet":
        if spec["depth"] is None:
            raise ValueError("weights='imagenet' needs the ResNet-50/101 stages with width 64. "
                             f"Received: weights={weights!r}")
        from nonlocal_keras.applications.inflation import inflate_weights

        source = getattr(keras.applications, f"ResNet{spec['depth']}")(
            include_top=False, weights="imagenet")
        inflate_weights(source, model)
    elif weights.endswith(".pkl"):
        from nonlocal_keras.applications.caffe2_weights import load_caffe2_weights

        load_caffe2_weights(model, weights)
    else:
        model.load_weights(weights)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)
