"""The video ResNets' convolution: Conv3D, with 1x1x1 kernels run as a matrix product
and 1xkxk kernels as a 2D convolution of every frame; and the padding of a Conv3D."""

from keras import layers, ops
from keras.saving import register_keras_serializable


@register_keras_serializable(package="nonlocal_keras")
class VideoConv3D(layers.Conv3D):
    """`keras.layers.Conv3D` that runs pointwise and per-frame kernels as cheaper ops.

    A 1x1x1 kernel (two of the three convolutions of every bottleneck, and
    the strided shortcuts) maps each position's channels by the same matrix:
    it is the product of the `(positions, C_in)` input and the `(C_in,
    C_out)` kernel, which is what this layer computes then, on every
    `strides`-th position (a 1x1x1 window needs no padding, so "same" and
    "valid" take the same positions). Why: on a CPU, TensorFlow's oneDNN
    Conv3D kernels compute the kernel gradient of these convolutions several
    times slower than the matrix product does under bfloat16 (profile in
    benchmarks/README.md).

    A 1xkxk kernel with no stride over time (C2D's spatial convolutions,
    I3D's non-inflated ones) sees one frame at a time: the layer folds the
    frames into the batch and runs a 2D convolution. Why: on an AVX2 CPU
    (no AVX-512) oneDNN's Conv3D gradients of these layers ran at a third of
    the forward's rate, its Conv2D ones did not (C2D R50 float32 step 7-14%
    shorter, `benchmarks/ab_step.py`). The values are the convolution's up
    to float rounding; every other kernel or setting is Keras' own code.
    Same arguments, weights and config as `keras.layers.Conv3D`.
    """

    def _pointwise(self):
        return (tuple(self.kernel_size) == (1, 1, 1) and self.groups == 1
                and self.data_format == "channels_last")

    def _per_frame(self):
        return (self.kernel_size[0] == 1 and self.strides[0] == 1 and self.groups == 1
                and self.data_format == "channels_last" and min(self.kernel_size[1:]) > 1)

    def convolution_op(self, inputs, kernel):
        if self._per_frame():
            shape = ops.shape(inputs)
            # A reshape, not kernel[0]: the gradient of an index writes the
            # kernel's gradient into a new zero tensor (StridedSliceGrad).
            kernel = ops.reshape(kernel, kernel.shape[1:])
            outputs = ops.conv(ops.reshape(inputs, (-1, *shape[2:])), kernel,
                               strides=self.strides[1:], padding=self.padding,
                               dilation_rate=self.dilation_rate[1:])
            return ops.reshape(outputs, (shape[0], shape[1], *ops.shape(outputs)[1:]))
        if not self._pointwise():
            return super().convolution_op(inputs, kernel)
        if any(stride > 1 for stride in self.strides):
            inputs = _subsample(inputs, self.strides)
        channels = inputs.shape[-1]
        shape = ops.shape(inputs)
        outputs = ops.matmul(ops.reshape(inputs, (-1, channels)),
                             ops.reshape(kernel, (channels, self.filters)))
        return ops.reshape(outputs, (*shape[:-1], self.filters))


@register_keras_serializable(package="nonlocal_keras")
class ConcatenatedZeroPadding3D(layers.ZeroPadding3D):
    """`keras.layers.ZeroPadding3D` computed as concatenations with zeros: the
    same values, arguments and config.

    Why: on a CPU, TensorFlow's graph rewriter (Grappler's remapper) fuses a
    Pad into the Conv3D after it, and in a training graph loses the Pad node
    that the convolution's input gradient still reads (through a ShapeN). It
    then prints `E ... remapper failed: ... missing node '.../Pad'` (once a
    run, through absl's log, which `TF_CPP_MIN_LOG_LEVEL` does not silence)
    and leaves the whole graph as written. It does not fuse a concatenation.
    The video ResNets pad this way before a strided convolution that runs as
    Conv3D (I3D's conv1, the 32x2 stems' conv1); before the per-frame ones
    (`VideoConv3D`'s 2D path, behind a reshape) the Pad stays: one copy of a
    larger tensor, where this makes one per padded axis.
    """

    def call(self, inputs):
        axes = (2, 3, 4) if self.data_format == "channels_first" else (1, 2, 3)
        x = inputs
        for axis, (before, after) in zip(axes, self.padding):
            if before or after:
                shape = ops.shape(x)
                parts = [ops.zeros((*shape[:axis], before, *shape[axis + 1:]), x.dtype), x,
                         ops.zeros((*shape[:axis], after, *shape[axis + 1:]), x.dtype)]
                x = ops.concatenate(parts, axis=axis)
        return x


def _subsample(x, strides):
    """`x[:, ::st, ::sh, ::sw, :]`, as a slice of whole runs of channels.

    Each strided axis of size n is padded at the end to a multiple m of its
    stride s and viewed as `(m / s, s)`, and the last one's `s` is folded into
    the channels: taking index 0 of each `s` and the first C channels is then
    a slice that copies runs of C (or more) numbers, where the strided slice
    gathers single ones, and its gradient is a pad. C2D R50 float32 step on
    TensorFlow, AVX2-only EPYC: the subsampling's op time 130 -> 54 ms, the
    step 3% shorter (`benchmarks/README.md`). Unknown sizes keep the strided
    slice.
    """
    sizes = x.shape[1:4]
    if None in sizes:
        return x[:, ::strides[0], ::strides[1], ::strides[2], :]
    channels = x.shape[-1]
    padded = [-(-n // s) * s for n, s in zip(sizes, strides)]
    if padded != list(sizes):
        x = ops.pad(x, [(0, 0)] + [(0, m - n) for m, n in zip(padded, sizes)] + [(0, 0)])
    (mt, mh, mw), (st, sh, sw) = padded, strides
    batch = ops.shape(x)[0]
    x = ops.reshape(x, (batch, mt // st, st, mh // sh, sh, mw // sw, sw * channels))
    # A slice, not indexing: TensorFlow differentiates it with a Pad (contiguous
    # runs again), a strided slice with a scatter into zeros.
    x = ops.slice(x, (0,) * 7, (batch, mt // st, 1, mh // sh, 1, mw // sw, channels))
    return ops.reshape(x, (batch, mt // st, mh // sh, mw // sw, channels))
