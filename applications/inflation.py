"""Inflate a 2D keras.applications ResNet's weights into a video ResNet.

Layers are matched by structure: the video model's `res{s}_{i}_branch2a/2b/2c`
and `_branch1` are Keras' `conv{s}_block{i+1}_1/2/3_conv` and `_0_conv`, and
`conv1` is `conv1_conv`; every convolution of both sides must find its
partner, so a depth or width mismatch is an error that names the layer.

Keras' ResNet50/101 are "v1" (stride in the first 1x1 convolution) while the
official video models put the stride in the 3x3 convolution; the weights have
the same shapes and are copied as they are, as the official code does with
its own ImageNet models. The non-local blocks and the classifier keep their
initial values (the official Kinetics training starts them from scratch).
"""

import re

import keras
import numpy as np

_BRANCH_TO_KERAS = {"branch1": 0, "branch2a": 1, "branch2b": 2, "branch2c": 3}
_BLOCK_CONV = re.compile(r"^res(\d)_(\d+)_(branch1|branch2a|branch2b|branch2c)$")


def inflate_weights(source, target):
    """Copies `source`'s 2D ResNet weights into the video ResNet `target`, inflated.

    Each `t x k x k` kernel gets the `k x k` weights divided by `t` in each of
    its `t` planes, so that on a clip of identical frames every convolution
    gives the 2D answer away from the temporal borders. A source convolution's
    bias (Keras' ResNets have them, the video models do not) is folded into
    the following BatchNormalization's moving mean.

    Args:
        source: `keras.applications.ResNet50` or `ResNet101` (any
            `include_top`, channels last).
        target: a model from `nonlocal_keras.applications` with the same depth.

    Returns:
        The names of `target`'s layers with weights that were left as they
        were (non-local blocks, classifier).
    """
    source_layers = {layer.name: layer for layer in source.layers}
    used = set()
    untouched = []
    for layer in target.layers:
        if not isinstance(layer, keras.layers.Conv3D):
            if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
                untouched.append(layer.name)
            continue
        source_name = _source_conv_name(layer.name)
        source_conv = source_layers.get(source_name)
        if source_conv is None:
            raise ValueError(
                f"Layer {layer.name!r} of {target.name!r} has no counterpart in {source.name!r} "
                f"(expected a layer {source_name!r}): the two networks differ in depth.")
        bias = _inflate_kernel(source_conv, layer)
        bn_name = "res_conv1_bn" if layer.name == "conv1" else f"{layer.name}_bn"
        _copy_batch_norm(source_layers[source_name[:-len("conv")] + "bn"],
                         target.get_layer(bn_name), bias)
        used.add(source_name)
    unused = [layer.name for layer in source.layers
              if isinstance(layer, keras.layers.Conv2D) and layer.name not in used]
    if unused:
        raise ValueError(
            f"{len(unused)} convolutions of {source.name!r} have no counterpart in "
            f"{target.name!r}, the first {unused[0]!r}: the two networks differ in depth.")
    return untouched


def _source_conv_name(name):
    if name == "conv1":
        return "conv1_conv"
    match = _BLOCK_CONV.match(name)
    if match is None:
        return f"<none for {name}>"
    stage, block, branch = match.groups()
    return f"conv{stage}_block{int(block) + 1}_{_BRANCH_TO_KERAS[branch]}_conv"


def _inflate_kernel(source_conv, target_conv):
    """Sets the inflated kernel; returns the source bias (zeros without one)."""
    kernel = np.asarray(source_conv.kernel)
    time = target_conv.kernel.shape[0]
    if tuple(target_conv.kernel.shape[1:]) != kernel.shape:
        raise ValueError(
            f"Layer {target_conv.name!r} has a kernel {tuple(target_conv.kernel.shape)}, which "
            f"cannot be inflated from {source_conv.name!r}'s {kernel.shape}: the two networks "
            "differ in width.")
    target_conv.kernel.assign(np.repeat(kernel[None] / time, time, axis=0))
    if source_conv.use_bias:
        return np.asarray(source_conv.bias)
    return np.zeros(kernel.shape[-1], kernel.dtype)


def _copy_batch_norm(source_bn, target_bn, folded_bias):
    # BN(conv(x) + b) normalises with (mean - b): the bias moves into the mean.
    target_bn.gamma.assign(np.asarray(source_bn.gamma))
    target_bn.beta.assign(np.asarray(source_bn.beta))
    target_bn.moving_mean.assign(np.asarray(source_bn.moving_mean) - folded_bias)
    target_bn.moving_variance.assign(np.asarray(source_bn.moving_variance))
