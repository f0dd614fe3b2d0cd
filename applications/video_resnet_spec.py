"""The video ResNets' architecture tables, and the checks that turn arguments into a spec.

`video_resnet.VideoResNet` builds from the `VideoResNetSpec` that `check_spec`
returns; every argument is checked here, before any layer exists, with a
message that names the argument and the value received.
"""

import dataclasses
import numbers
import os
import types

import keras

from nonlocal_keras import nonlocal_math
from nonlocal_keras.utils import checked_bool, checked_choice, checked_sizes, is_positive_int

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

# Temporal down-sampling before res2. "8x8": the official `resnet_video.py`
# (the released 8x8 models): none. "32x2": `resnet_video_org.py`, the paper's
# Table 1 (the released 32x2 and 128x1 models): conv1 temporal stride 2 and
# pool1 2x3x3 with stride 2, 2, 2. The weights have the same shapes.
STEMS = {
    "8x8": {"conv1_time_stride": 1, "pool1_time": 1},
    "32x2": {"conv1_time_stride": 2, "pool1_time": 2},
}

# The pool window of the networks' non-local blocks (NonLocal3D's default).
NONLOCAL_POOL = (1, 2, 2)

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


@dataclasses.dataclass(frozen=True)
class VideoResNetSpec:
    """A checked video ResNet architecture, what the builder reads.

    Attributes:
        stages: stage names, `("res2", ...)`.
        blocks: `{stage: residual blocks}`.
        width: filters of res2's bottleneck.
        depth: 50 or 101 for the ResNet-50/101 layouts at width 64, else None.
        strides: spatial stride of each stage's first block.
        conv1_time, conv1_time_stride: conv1's temporal kernel and stride.
        pool1, pool1_time: whether pool1 exists, and its temporal window.
        pool2: whether the temporal pool after res2 exists.
        inflation: `"3x1x1"` or `"3x3x3"`.
        inflated: `{stage: set of block indices}` with a temporal kernel.
        nonlocal_blocks: `{stage: set of block indices}` followed by a
            non-local block.
        nonlocal_affinity: the blocks' `affinity`.
        nonlocal_use_bn: the blocks' `use_bn`.
        nonlocal_frames_per_group: `{stage: frames}`, the `frames_per_group`
            of the stage's blocks (stages not named: all frames).
        affine_bn: the BNs' `frozen_statistics`.
    """

    stages: tuple
    blocks: dict
    width: int
    depth: object
    strides: tuple
    conv1_time: int
    conv1_time_stride: int
    pool1: bool
    pool1_time: int
    pool2: bool
    inflation: str
    inflated: dict
    nonlocal_blocks: dict
    nonlocal_affinity: str
    nonlocal_use_bn: bool = True
    nonlocal_frames_per_group: dict = dataclasses.field(default_factory=dict)
    affine_bn: bool = False


def check_spec(*, stage_blocks, width, conv1_time, inflated_blocks, inflation, stage_strides,
               pool1, pool2, nonlocal_blocks, nonlocal_mode, nonlocal_affinity, dropout_rate,
               stem, nonlocal_use_bn=True, nonlocal_frames_per_group=None, affine_bn=False):
    """`VideoResNet`'s architecture arguments, checked, as a `VideoResNetSpec`
    (NumPy integers become ints: Keras' layers take Python ones only)."""
    blocks = tuple(stage_blocks) if isinstance(stage_blocks, (list, tuple)) else ()
    if not 1 <= len(blocks) <= len(STAGES) or not all(is_positive_int(n) for n in blocks):
        raise ValueError("`stage_blocks` must be 1 to 4 positive integers (res2, res3, ...). "
                         f"Received: stage_blocks={stage_blocks!r}")
    stages = STAGES[:len(blocks)]
    if not is_positive_int(width):
        raise ValueError(f"`width` must be a positive integer. Received: width={width!r}")
    if not is_positive_int(conv1_time) or conv1_time % 2 == 0:
        raise ValueError("`conv1_time` must be a positive odd integer. "
                         f"Received: conv1_time={conv1_time!r}")
    checked_choice("inflation", inflation, INFLATIONS)
    checked_choice("stem", stem, STEMS)
    strides = (1,) + (2,) * (len(blocks) - 1) if stage_strides is None else stage_strides
    if (not isinstance(strides, (list, tuple)) or len(strides) != len(blocks)
            or not all(is_positive_int(s) for s in strides)):
        raise ValueError(f"`stage_strides` must be {len(blocks)} positive integers, one per "
                         f"stage. Received: stage_strides={stage_strides!r}")
    if (not isinstance(dropout_rate, numbers.Real) or isinstance(dropout_rate, bool)
            or not 0 <= dropout_rate < 1):
        raise ValueError("`dropout_rate` must be a number in [0, 1). "
                         f"Received: dropout_rate={dropout_rate!r}")
    # Checked here, not only by each NonLocal3D: without blocks a typo passed,
    # with them the error named the layer's `mode`, which the caller never wrote.
    checked_choice("nonlocal_mode", nonlocal_mode, nonlocal_math.MODES)
    checked_choice("nonlocal_affinity", nonlocal_affinity, nonlocal_math.AFFINITIES)
    for argument, value in (("pool1", pool1), ("pool2", pool2),
                            ("nonlocal_use_bn", nonlocal_use_bn), ("affine_bn", affine_bn)):
        checked_bool(argument, value)
    blocks = tuple(int(n) for n in blocks)
    stage_sizes = dict(zip(stages, blocks))
    layout = _nonlocal_layout(nonlocal_blocks, blocks, stage_sizes)
    return VideoResNetSpec(
        stages=stages,
        blocks=stage_sizes,
        width=int(width),
        depth=next((d for d, b in DEPTHS.items() if b == blocks and width == 64), None),
        strides=tuple(int(s) for s in strides),
        conv1_time=int(conv1_time),
        **STEMS[stem],
        pool1=bool(pool1),
        pool2=bool(pool2),
        inflation=inflation,
        inflated=_block_sets("inflated_blocks", inflated_blocks or {}, stage_sizes),
        nonlocal_blocks=layout,
        nonlocal_affinity=nonlocal_affinity,
        nonlocal_use_bn=bool(nonlocal_use_bn),
        nonlocal_frames_per_group=_checked_frame_groups(nonlocal_frames_per_group, layout,
                                                        nonlocal_affinity),
        affine_bn=bool(affine_bn),
    )


def _checked_frame_groups(value, layout, affinity):
    """`nonlocal_frames_per_group` (None, an int for every block, or
    `{stage: frames}`) as `{stage: frames}` of stages with blocks."""
    if value is None:
        return {}
    stages = [stage for stage in layout if layout[stage]]
    if _is_int(value) and not stages:
        raise ValueError("`nonlocal_frames_per_group` groups the frames of the non-local blocks; "
                         "this network has none (nonlocal_blocks). "
                         f"Received: nonlocal_frames_per_group={value!r}")
    groups = dict.fromkeys(stages, value) if _is_int(value) else value
    if not isinstance(groups, dict) or not all(is_positive_int(n) for n in groups.values()):
        raise ValueError("`nonlocal_frames_per_group` must be None, a positive integer or a "
                         "dict {stage: frames} (e.g. {'res3': 4}, the official frozen-BN "
                         f"releases). Received: nonlocal_frames_per_group={value!r}")
    for stage, frames in groups.items():
        if stage not in stages:
            raise ValueError(
                f"`nonlocal_frames_per_group` names {stage!r}, which has no non-local blocks "
                f"(these have: {', '.join(stages) or 'none'}). "
                f"Received: nonlocal_frames_per_group={value!r}")
        if frames % NONLOCAL_POOL[0]:  # a multiple of the blocks' pooled frames
            raise ValueError(f"`nonlocal_frames_per_group` must be multiples of "
                             f"{NONLOCAL_POOL[0]}. Received: nonlocal_frames_per_group={value!r}")
    if groups and affinity != "spacetime":
        raise ValueError("`nonlocal_frames_per_group` groups the frames of the 'spacetime' "
                         f"affinity. Received: nonlocal_frames_per_group={value!r}, "
                         f"nonlocal_affinity={affinity!r}")
    return {stage: int(frames) for stage, frames in groups.items()}


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
            named = f"res{stage}" if _is_int(stage) else None
            hint = f" (stages are named: {named!r})" if named in stage_sizes else ""
            raise ValueError(
                f"Unknown stage {stage!r} in `{argument}`; this network has "
                f"{', '.join(stage_sizes)}{hint}. Received: {argument}={value!r}")
        size = stage_sizes[stage]
        if isinstance(indices, str) and indices in rules:
            indices = [i for i in range(size) if rules[indices](i)]
        if isinstance(indices, (list, tuple, set)) and all(_is_int(i) for i in indices):
            bad = [i for i in indices if not 0 <= i < size]
            twice = [i for n, i in enumerate(indices) if i in list(indices)[:n]]
            if not (bad or twice):
                result[stage] = {int(i) for i in indices}
                continue
            if twice:  # a typo for another block, which would have none
                raise ValueError(f"Block index {twice[0]} of {stage} in `{argument}` is listed "
                                 f"twice. Received: {argument}={value!r}")
            raise ValueError(
                f"Block index {bad[0]} of {stage} in `{argument}` is out of range: {stage} "
                f"has {size} residual blocks (0 to {size - 1}). Received: {argument}={value!r}")
        raise ValueError(
            f"`{argument}[{stage!r}]` must be a list of block indices or 'all', 'even', "
            f"'odd'. Received: {argument}={value!r}")
    return result


def check_head(include_top, pooling, classes, weights, classifier_activation=None):
    """The keras.applications head arguments; returns `(classes, weights)` with
    `classes` an int and `weights` a string (a path may be a `pathlib.Path`)."""
    checked_bool("include_top", include_top)
    try:
        keras.activations.get(classifier_activation)
    except ValueError:  # Keras' words name no argument
        raise ValueError("`classifier_activation` must be None, a Keras activation's name or "
                         f"a callable. Received: classifier_activation={classifier_activation!r}"
                         ) from None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if pooling not in (None, "avg", "max"):
        raise ValueError("`pooling` must be None, 'avg' or 'max'. "
                         f"Received: pooling={pooling!r}")
    if include_top and not is_positive_int(classes):
        raise ValueError("With `include_top=True`, `classes` must be a positive integer. "
                         f"Received: classes={classes!r}")
    if not include_top and classes != 400:
        raise ValueError("`classes` only applies with `include_top=True` (the classifier). "
                         f"Received: classes={classes!r}, include_top={include_top!r}")
    if include_top and pooling is not None:  # keras.applications ignores it
        raise ValueError("`pooling` only applies with `include_top=False`; the classifier "
                         "always averages (pool5). "
                         f"Received: pooling={pooling!r}, include_top={include_top!r}")
    is_file = isinstance(weights, str) and os.path.isfile(weights)
    if not (weights in (None, "imagenet") or is_file):
        raise ValueError("`weights` must be None, 'imagenet' or the path of a weights file "
                         f"(.weights.h5 or an official Caffe2 .pkl). Received: weights={weights!r}")
    return (int(classes) if include_top else classes), weights



def check_input_shape(input_tensor, input_shape, spec):
    """The `(T, H, W, C)` input shape, checked against the smallest clip the network takes.

    With `input_tensor`, its shape is the network's: `input_shape` may only
    repeat it (None where it leaves a size open), as in keras.applications.
    """
    given = input_shape
    if input_tensor is not None and hasattr(input_tensor, "shape"):
        shape = tuple(input_tensor.shape[1:])
        if len(shape) != 4:
            raise ValueError("`input_tensor` must be a batch of clips (batch, frames, height, "
                             "width, channels). "
                             f"Received: input_tensor.shape={tuple(input_tensor.shape)}")
        if input_shape is not None and not (
                isinstance(input_shape, (list, tuple)) and len(input_shape) == len(shape)
                and all(a is None or a == b for a, b in zip(input_shape, shape))):
            raise ValueError("`input_shape` must agree with `input_tensor`'s shape "
                             f"{shape}. Received: input_shape={given!r}")
        input_shape = shape
    elif input_shape is None:
        input_shape = (None, None, None, 3)
    input_shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if (input_shape is None or len(input_shape) != 4 or not _is_int(input_shape[-1])
            or not all(d is None or is_positive_int(d) for d in input_shape)):
        raise ValueError("`input_shape` must be (frames, height, width, channels), "
                         "channels known, None allowed elsewhere. "
                         f"Received: input_shape={given if given is not None else input_shape!r}")
    input_shape = tuple(None if d is None else int(d) for d in input_shape)
    checked_sizes(keras.KerasTensor((None,) + input_shape),
                  clip_size_rules(smallest_clip(spec, input_shape[-1])), input_shape)
    _check_grouped_affinity(input_shape, spec)
    return input_shape


def smallest_clip(spec, channels):
    """The smallest `(T, H, W, C)` that survives conv1, the pools and the
    non-local blocks' windows (every stage is monotone in the size), and that
    the grouped affinities and frame groups tile ("space" and frame groups the
    frames, "time" the height and width: the smallest named then is one that
    works)."""
    needs = _block_needs(spec)

    def smallest(sizes_of, need):
        return next(n for n in range(1, 1 << 16) if _fits(sizes_of(n, spec), need))

    frames = smallest(_temporal_sizes, needs["frames"])
    space = smallest(_spatial_sizes, needs["space"])
    return (frames, space, space, channels)


def clip_size_rules(smallest):
    """`utils.checked_sizes` rules for `(batch, T, H, W, C)` clips."""
    message = ("`input_shape` is too small for this network: the smallest allowed is "
               f"{tuple(smallest)}.")
    return [(1 + axis, "at_least", size, message) for axis, size in enumerate(smallest[:3])]


def _temporal_sizes(size, spec):
    """A clip length at each stage `{stage: frames}`, None if conv1, pool1 or
    pool2 does not take it."""
    size = (size - 1) // spec.conv1_time_stride + 1  # padded by conv1_time // 2
    if spec.pool1 and spec.pool1_time > 1:
        if size < spec.pool1_time:
            return None
        size //= spec.pool1_time
    sizes = {}
    for stage in spec.stages:
        sizes[stage] = size
        if stage == "res2" and spec.pool2:
            if size < 2:
                return None
            size //= 2
    return sizes


def _spatial_sizes(size, spec):
    """A height/width at each stage `{stage: size}`, None if pool1 does not take it."""
    size = (size - 1) // 2 + 1  # conv1: 7x7, stride 2, padding 3
    if spec.pool1:
        if size < 3:
            return None
        size = (size - 3) // 2 + 1
    sizes = {}
    for stage, stride in zip(spec.stages, spec.strides):
        size = (size - 1) // stride + 1  # 3x3, padding 1
        sizes[stage] = size
    return sizes


def _block_needs(spec):
    """What the non-local blocks need of their input's size at each stage, by
    clip axis: `{"frames"|"space": {stage: (at least, a multiple of)}}`: the
    pool window, whole windows for the grouped affinities ("space": frames,
    "time": height and width), whole groups for `nonlocal_frames_per_group`."""
    pool_frames, pool_space = NONLOCAL_POOL[0], NONLOCAL_POOL[1]
    frames_multiple = pool_frames if spec.nonlocal_affinity == "space" else 1
    space_multiple = pool_space if spec.nonlocal_affinity == "time" else 1
    needs = {"frames": {}, "space": {}}
    for stage in spec.nonlocal_blocks:
        if not spec.nonlocal_blocks[stage]:
            continue
        group = spec.nonlocal_frames_per_group.get(stage)
        needs["frames"][stage] = (group, group) if group else (pool_frames, frames_multiple)
        needs["space"][stage] = (pool_space, space_multiple)
    return needs


def _fits(sizes, need):
    """Whether the stage sizes exist and meet `need` (one axis of `_block_needs`)."""
    return sizes is not None and all(
        sizes[stage] >= least and sizes[stage] % multiple == 0
        for stage, (least, multiple) in need.items())


def _check_grouped_affinity(input_shape, spec):
    """The grouped affinities need whole pool windows where the blocks are
    (`base_nonlocal._position_rules`): "space" on the frames, "time" on the
    height and width; frame groups need whole groups. Checked here, for known
    sizes, so that the message names the arguments the caller wrote instead
    of a layer deep inside (a size too small is `clip_size_rules`' to say)."""
    needs = _block_needs(spec)
    axes = ((0, "frames", _temporal_sizes, needs["frames"]),
            (1, "height", _spatial_sizes, needs["space"]),
            (2, "width", _spatial_sizes, needs["space"]))
    for axis, name, sizes_of, need in axes:
        size = input_shape[axis]
        sizes = None if size is None else sizes_of(size, spec)
        if sizes is None or _fits(sizes, need):
            continue
        stage = next(s for s, (_, multiple) in need.items() if sizes[s] % multiple)
        multiple = need[stage][1]
        below = next((n for n in range(size - 1, 0, -1) if _fits(sizes_of(n, spec), need)), None)
        above = next((n for n in range(size + 1, size + (1 << 12))
                      if _fits(sizes_of(n, spec), need)), None)
        near = " and ".join(str(n) for n in (below, above) if n is not None)
        if axis == 0 and stage in spec.nonlocal_frames_per_group:
            argument = f"nonlocal_frames_per_group={spec.nonlocal_frames_per_group!r}"
            why = f"the non-local blocks at {stage} take groups of {multiple} frames"
        else:
            argument = f"nonlocal_affinity={spec.nonlocal_affinity!r}"
            why = (f"the non-local blocks need their input's {name} to be a multiple of the "
                   f"pool window ({multiple})")
        given = f"{size} frames give" if axis == 0 else f"a {name} of {size} gives"
        sizes_word = "frame counts" if axis == 0 else f"{name} sizes"
        raise ValueError(
            f"`input_shape` does not suit {argument}: {why}, and {given} {sizes[stage]} at "
            f"{stage}. The {sizes_word} that work nearest to {size}: {near}. "
            f"Received: input_shape={input_shape}, {argument}")


def grouped_affinity_layout(spec):
    """What `_check_grouped_affinity` reads of `spec`, as a JSON-able dict
    for `ClipSizeCheck`'s config (None where it has nothing to check): with
    input sizes left open the check has to wait for the clip."""
    stages = [stage for stage in spec.stages if spec.nonlocal_blocks.get(stage)]
    if (spec.nonlocal_affinity == "spacetime" and not spec.nonlocal_frames_per_group
            or not stages):
        return None
    return {"nonlocal_affinity": spec.nonlocal_affinity, "nonlocal_stages": stages,
            "nonlocal_frames_per_group": dict(spec.nonlocal_frames_per_group),
            "stages": list(spec.stages), "strides": list(spec.strides),
            "conv1_time_stride": spec.conv1_time_stride, "pool1": spec.pool1,
            "pool1_time": spec.pool1_time, "pool2": spec.pool2}


def check_clip_tiles(clip_shape, layout):
    """The grouped-affinity check of `check_input_shape` on a clip's
    `(T, H, W, C)` (None where unknown, then unchecked), for a
    `grouped_affinity_layout`: the same words as for an `input_shape`."""
    if layout is None:
        return
    fields = {"nonlocal_frames_per_group": {}, **layout}  # saved before frame groups: none
    stages = fields.pop("nonlocal_stages")
    spec = types.SimpleNamespace(**fields, nonlocal_blocks={stage: (0,) for stage in stages})
    _check_grouped_affinity(tuple(clip_shape), spec)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

