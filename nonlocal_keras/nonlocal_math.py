"""The non-local operation, written once with `keras.ops`.

Both Keras front ends use this module: the Keras 3 layers in
`nonlocal_keras.layers` and the `tf_keras` shell of the Mask R-CNN backbone.
Everything here works on channels-last tensors `(batch, *positions, channels)`
of rank 3 (sequences), 4 (images) or 5 (video) and on every Keras 3 backend.

    y_i = 1/C(x) * sum_j f(x_i, x_j) g(x_j)

The affinity f and its normaliser C are computed in `affinity_dtype`: float32
for float16, bfloat16 and float32, so that mixed precision cannot overflow the
logits, and float64 for float64, which a float32 affinity would round.

Memory: the plain path holds the whole `(N_q, N_k)` affinity (10 GB in
float32 for a 32x56x56 clip pooled 1x2x2). With `chunk_size` the queries are
processed in slices of that many rows, exactly (each row of the affinity
depends on its own query only), and every slice is wrapped in `keras.remat`
so that the backward pass recomputes the slice's affinity instead of keeping
it: peak memory is then `chunk_size * N_k` floats plus O(N) tensors, forward
and backward, on every backend (`tf.recompute_grad`, `jax.checkpoint`,
`torch.utils.checkpoint`). Fused attention kernels were not used: Keras's
`dot_product_attention` has a flash path only on GPUs, and it cannot express
the dot-product and concatenation modes.
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from nonlocal_keras import cpu
from nonlocal_keras.utils import is_positive_int

MODES = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
SOFTMAX_MODES = ("gaussian", "embedded_gaussian")
AFFINITIES = ("spacetime", "space", "time")

# chunk_size="auto" chunks when one example's affinity (per group) has more
# elements than this (64 MB in float32: res3 with batch 1, 9.8M, stays plain),
# in chunks of about AUTO_CHUNK_ELEMENTS affinity entries each: big enough that
# a chunk is a full-speed matmul, small enough that the softmax and its
# gradient temporaries stay in the low hundreds of MB.
AUTO_MAX_AFFINITY = 2**24
AUTO_CHUNK_ELEMENTS = 2**24


def max_pool(x, pool_size):
    """Non-overlapping max pooling (stride = window, 'valid'), channels last.

    Always through the backend's 1D/2D pooling op, whose gradient is one
    kernel that routes each window's gradient to its maximum (as Caffe2 and
    PyTorch do). A 3D window is pooled as 2D over (H, W) with the frames in
    the batch, then as 2D over (T, H * W): TensorFlow has no float16
    MaxPool3D on the CPU, but has every dtype in 2D.
    """
    if all(p == 1 for p in pool_size):
        return x
    if pools_in_float32(x.dtype):
        # Exact: widening to float32 keeps every value, and the maximum with it.
        return ops.cast(max_pool(ops.cast(x, "float32"), pool_size), x.dtype)
    if len(pool_size) < 3:
        return ops.max_pool(x, pool_size, strides=pool_size, padding="valid")
    batch, frames, height, width, channels = ops.shape(x)
    pt, ph, pw = pool_size
    if ph > 1 or pw > 1:
        x = ops.reshape(x, (-1, height, width, channels))
        x = ops.max_pool(x, (ph, pw), strides=(ph, pw), padding="valid")
        height, width = ops.shape(x)[1:3]
    if pt > 1:
        x = ops.reshape(x, (batch, frames, -1, channels))
        x = ops.max_pool(x, (pt, 1), strides=(pt, 1), padding="valid")
        frames = ops.shape(x)[1]
    return ops.reshape(x, (batch, frames, height, width, channels))


def pools_in_float32(dtype, flags=None):
    """Whether `max_pool` pools `dtype` as float32: bfloat16 on TensorFlow's CPU
    kernels where oneDNN does not take bfloat16 (`cpu.onednn_takes_bfloat16`).
    There the bfloat16 max pool and its gradient are Eigen's, fwd+bwd 1.8-2.1x
    the time of a cast to float32, oneDNN's float32 kernels and a cast back
    (AVX2-only EPYC, 2 cores: res4's 8x14x14x1024 8.9 vs 5.0 ms, res3's 16.0
    vs 8.8 ms; with oneDNN off, Eigen's float32 kernels still 8-13% faster).
    `flags`: the CPU's, read (once) when None."""
    if (keras.backend.backend() != "tensorflow"
            or keras.backend.standardize_dtype(dtype) != "bfloat16"):
        return False
    if flags is not None:
        return not cpu.onednn_takes_bfloat16(flags)
    return _eigen_pools_bfloat16()


@functools.cache
def _eigen_pools_bfloat16():
    import tensorflow as tf

    return (cpu.onednn_takes_bfloat16() is False
            and not tf.config.list_logical_devices("GPU"))


@functools.cache
def _amx():
    """Whether TensorFlow's bfloat16 products run on this CPU's AMX tiles
    (`amx_bf16`), with no GPU to take them. There oneDNN's matmul runs
    bfloat16 on the tiles (`brg_matmul:..._amx` in `ONEDNN_VERBOSE`), but its
    inner product, which Grappler makes of a 2D product and its bias, does
    not (`x64:gemm:jit`): res3's W_z (6272 x 256 x 512) took 3.5x the time of
    the product alone, and a batched product (which is not fused) with the
    bias added after 1.5x."""
    import tensorflow as tf

    return "amx_bf16" in (cpu.cpu_flags() or ()) and not tf.config.list_logical_devices("GPU")


def masked_max_pool(x, mask, pool_size):
    """`max_pool` and the windows that are keys; `(pooled, pooled_mask)`.

    `mask` is a boolean `(batch, *positions)` (None: every position valid,
    and the pooled mask is None too). A window is a key only when every one
    of its positions is valid: for a valid prefix along each pooled axis that
    is exactly the 'valid' pooling of the unpadded input, which drops a last
    partial window (as the official code's floor does), so padding an input
    and masking the padding changes no key. A kept window then holds valid
    positions only and needs no fill value; a masked window gives a zero,
    never used, which keeps phi and g finite there (0 * a finite value cannot
    make a NaN in the products).
    """
    if mask is None:
        return max_pool(x, pool_size), None
    mask = ops.cast(mask, "bool")
    # A min-pool of the mask, as the max-pool of its negation.
    invalid = ops.cast(ops.logical_not(mask), "float32")[..., None]
    pooled_mask = max_pool(invalid, pool_size)[..., 0] < 0.5
    pooled = max_pool(x, pool_size)
    return ops.where(pooled_mask[..., None], pooled, ops.zeros_like(pooled)), pooled_mask


def _lowest(dtype):
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype == "bfloat16":
        return -3.3895313892515355e38
    return float(np.finfo(dtype).min)


def affinity_dtype(*dtypes):
    """The dtype of the affinity for operands of `dtypes`: the widest of them
    and float32 (float64 stays float64; the 16-bit dtypes widen to float32)."""
    given = {keras.backend.standardize_dtype(d) for d in dtypes}
    return "float64" if "float64" in given else "float32"


def pairwise_affinity(theta, phi, mode, w_f=None, key_bias=None, valid=None):
    """Normalised affinity `f(x_i, x_j) / C(x)`, in `affinity_dtype`.

    Args:
        theta: `(..., N_q, C)` query embeddings.
        phi: `(..., N_k, C)` key embeddings, already scaled for the softmax
            modes' `use_scale` (see `nonlocal_response`).
        mode: one of `MODES`.
        w_f: `(2 * C, 1)` weights of the concatenation mode's projection.
        key_bias: `(..., 1, N_k)` added to every query's logits, or None (the
            reassociated order's share of theta's bias, see `reassociates`).
        valid: 1/0 (any float dtype) broadcastable to `(..., N_q, N_k)`:
            which pairs may attend; None for all of them.

    Returns:
        `(..., N_q, N_k)` weights (float32, or float64 for float64 operands)
        that sum to one over `j` in the softmax modes and are divided by
        `N_k` in the others. With `valid`,
        excluded pairs weigh 0, the softmax runs over the allowed keys and
        the other modes divide by the number of allowed keys; a query with
        no allowed key gets all-zero weights (so y_i = 0).
    """
    f = affinity_logits(theta, phi, mode, w_f=w_f, key_bias=key_bias)
    if valid is None:
        if mode in SOFTMAX_MODES:
            return softmax(f)
        return f / ops.cast(ops.shape(phi)[-2], f.dtype)
    valid = ops.cast(valid, f.dtype)
    allowed = valid > 0.5
    if mode in SOFTMAX_MODES:
        # A finite fill, not -inf: a row with no allowed key stays finite
        # (uniform), and the product with `valid` then zeroes it.
        f = ops.where(allowed, f, ops.full_like(f, _lowest("float32")))
        return softmax(f) * valid
    count = ops.sum(ops.broadcast_to(valid, ops.shape(f)), axis=-1, keepdims=True)
    return ops.where(allowed, f, ops.zeros_like(f)) / ops.maximum(count, 1.0)


def softmax(logits):
    """`ops.softmax(logits, axis=-1)`, without Keras' warning for one key.

    With a single key (a sequence of 2-3 positions pooled by 2, one frame
    under affinity='time') Keras warns that a softmax over a size-1 axis is
    always 1 and asks whether a sigmoid was meant: about a softmax the user
    never wrote. `exp(f - f)` is what the softmax computes there (exp(f -
    max f) over its sum, itself): the same 1 (NaN for a non-finite logit)
    and the same zero gradient.
    """
    if logits.shape[-1] == 1:
        return ops.exp(logits - logits)
    return ops.softmax(logits, axis=-1)


def affinity_logits(theta, phi, mode, w_f=None, key_bias=None):
    """`f(x_i, x_j)` before normalisation, `(..., N_q, N_k)` in
    `affinity_dtype` (see `pairwise_affinity` for the arguments)."""
    dtype = affinity_dtype(theta.dtype, phi.dtype)
    theta = ops.cast(theta, dtype)
    phi = ops.cast(phi, dtype)
    if mode == "concatenation":
        # w_f^T [theta_i, phi_j] = w_theta^T theta_i + w_phi^T phi_j: the same
        # value as concatenating every pair, without the (N_q, N_k, 2C) tensor.
        # Products with one column, as sums: Keras' torch matmul gives float32
        # for float64 operands.
        channels = theta.shape[-1]
        w_f = ops.cast(w_f[:, 0], dtype)
        from_query = ops.sum(theta * w_f[:channels], axis=-1, keepdims=True)
        from_key = ops.sum(phi * w_f[channels:], axis=-1, keepdims=True)
        f = ops.relu(from_query + ops.swapaxes(from_key, -1, -2))
    else:
        f = matmul_transposed(theta, phi)
        if key_bias is not None:
            f = f + key_bias
    return f


def matmul_transposed(a, b):
    """`a @ swapaxes(b, -1, -2)` without writing a transposed copy of `b`.

    TensorFlow: one (Batch)MatMul with `transpose_b`, whose gradients are two
    such products with transpose flags; an einsum's gradients are einsums
    (oneDNN's `_MklEinsum`), which were the slowest kernels of the block's
    fwd+bwd in a profile at res4. The other backends: an einsum, which they
    lower to a matmul with the transpose folded into the kernel.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.linalg.matmul(a, b, transpose_b=True)
    return ops.einsum("...qc,...kc->...qk", a, b)


def dense(t, kernel, bias=None, transpose=False):
    """`t @ kernel (+ bias)` (or `kernel^T`) for a 2D kernel, on the last axis of `t`.

    On TensorFlow the leading axes are folded into the rows of one 2D
    product (a broadcast batched product would differentiate the kernel as
    one product per batch entry plus a sum), the transpose is a flag of the
    product, not a copy of the kernel, and the bias is a `BiasAdd` right on
    the product, which Grappler fuses with it into one oneDNN kernel (Keras'
    `Dense` reshapes in between, which keeps them apart: one more pass over
    the output). In bfloat16 the bias is added as a broadcast sum instead:
    the gradient of `BiasAdd` (TensorFlow 2.20's `BiasAddGrad` on the CPU)
    sums the rows in bfloat16, where a sum's gradient (`Sum`) adds them in
    float32: over 6272 rows of a mostly positive gradient it gave 1072
    instead of 6396 (tests/test_perf_overhead.py). And on AMX the product is
    a batch of one (see `_amx`).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        shape = tf.shape(t)
        rows = tf.reshape(t, (-1, t.shape[-1]))
        units = kernel.shape[0 if transpose else -1]
        low = t.dtype == tf.bfloat16
        if low and bias is not None and _amx():
            # Reshaped, not indexed with None, whose gradient is a copy.
            rows, kernel = tf.expand_dims(rows, 0), tf.expand_dims(kernel, 0)
        out = tf.linalg.matmul(rows, kernel, transpose_b=transpose)
        if bias is not None:
            out = out + bias if low else tf.nn.bias_add(out, bias)
        return tf.reshape(out, tf.concat([shape[:-1], [units]], 0))
    out = ops.matmul(t, ops.transpose(kernel) if transpose else kernel)
    return out if bias is None else out + bias


def project(layer, t):
    """`layer(t)` for one of the block's Keras `Dense` projections, through
    `dense` (see there); anything else (a `tf_keras` layer, LoRA, a
    quantized kernel) is called as it is."""
    if (type(layer) is not keras.layers.Dense or layer.lora_enabled
            or layer.quantization_mode or layer.activation is not keras.activations.linear):
        return layer(t)
    dtype = layer.compute_dtype
    bias = None if layer.bias is None else ops.cast(layer.bias, dtype)
    return dense(ops.cast(t, dtype), ops.cast(layer.kernel, dtype), bias)


def aggregate(affinity, g):
    """`y_i = sum_j affinity_ij g_j`, in the dtype of `g`."""
    return ops.matmul(ops.cast(affinity, g.dtype), g)


def softmax_aggregate(logits, values):
    """`aggregate(softmax(logits), values)`, differentiated through y on TensorFlow.

    The softmax's gradient needs each query's `s_i = sum_j A_ij dA_ij`, with
    `dA = dy V^T` the affinity's gradient. TensorFlow's own gradient forms
    `A * dA` and sums it: two passes over the `(N_q, N_k)` affinity. Since
    `sum_j A_ij (dy_i . v_j) = dy_i . y_i`, the same value comes from the
    block's output, `N_q x C` numbers (FlashAttention's trick): fewer when
    the values have fewer channels than there are keys (res3: 256 < 1568).
    So the custom gradient is used only then (static sizes), and on the other
    backends this is plain `aggregate(softmax(logits), values)`. The row sums
    are subtracted inside the product that forms `dA`, as one more column:
    `[dy, -s] [V, 1]^T = dA - s 1^T`, which spares a pass over the affinity
    for one column more in a product that has `C` of them. Under bfloat16
    `dA` leaves its product in bfloat16 anyway, and the affinity's gradient
    is formed from the weights as rounded for the aggregation, so the
    backward keeps no float32 copy of the affinity (4 bytes an entry;
    `benchmarks/ab_memory.py`). Not under float16, whose narrower exponent
    range could flush the product's small entries to zero.
    """
    channels, num_keys = values.shape[-1], logits.shape[-1]
    if (keras.backend.backend() != "tensorflow" or channels is None or num_keys is None
            or channels >= num_keys):
        return aggregate(softmax(logits), values)
    import tensorflow as tf

    @tf.custom_gradient
    def attend(logits, values):
        weights = tf.nn.softmax(logits)
        low = tf.cast(weights, values.dtype)
        y = tf.linalg.matmul(low, values)
        # Under bfloat16 the closure below must not hold the float32 weights:
        # not keeping them alive until the backward is the memory saved.
        exact = None if values.dtype == tf.bfloat16 else weights

        def grad(dy):
            d_values = tf.linalg.matmul(low, dy, transpose_a=True)
            centred = _centred(dy, y, values, logits.dtype)
            if exact is None:
                return tf.cast(low * centred, logits.dtype), d_values
            return exact * tf.cast(centred, logits.dtype), d_values

        return y, grad

    return attend(logits, values)


def _centred(dy, y, values, dtype):
    """`dA - s 1^T` in the dtype of `dy`: `dA = dy V^T` the affinity's gradient and
    `s_i = dy_i . y_i` (summed in `dtype`) the softmax's row sums, as one product
    `[dy, -s] [V, 1]^T` (see `softmax_aggregate`)."""
    import tensorflow as tf

    rows = tf.reduce_sum(tf.cast(dy, dtype) * tf.cast(y, dtype), -1, keepdims=True)
    left = [dy, tf.cast(-rows, dy.dtype)]
    right = [values, tf.ones_like(values[..., :1])]
    padding = -(values.shape[-1] + 1) % 32
    if dy.dtype == tf.bfloat16 and padding and _amx():
        # AMX tiles take 32 bfloat16 columns: a product over 257 took 1.3x
        # the time of one over 256, over 288 (zeros, which add nothing) 1.08x.
        left.append(tf.zeros(tf.concat([tf.shape(dy)[:-1], [padding]], 0), dy.dtype))
        right.append(tf.zeros(tf.concat([tf.shape(values)[:-1], [padding]], 0), values.dtype))
    return tf.linalg.matmul(tf.concat(left, -1), tf.concat(right, -1), transpose_b=True)


def bfloat16_attention(queries, keys, values):
    """`softmax_aggregate` of the float32 logits `queries keys^T`, for bfloat16
    values on TensorFlow, with the logits' two gradient products in bfloat16.

    The forward is that of `affinity_logits` and `softmax_aggregate`: logits
    and softmax in float32, the weights rounded to bfloat16 for the
    aggregation. The logits' gradient leaves the product that forms it in
    bfloat16 in any case (the values' channels: see `softmax_aggregate`;
    else the affinity's gradient `dy V^T`), so its products with the keys and
    the queries run in bfloat16 too, on the operands rounded to bfloat16
    (the queries are bfloat16 already; the keys, scaled in float32, are exact
    where the scale is a power of two), instead of in float32 from a float32
    copy: at res3 (6272 queries, 1568 keys, 256 channels) the two took 23 ms
    instead of 51 (Xeon with AMX, 2 threads), and the copy 4 ms. The
    gradients stay within bfloat16's rounding (tests/test_perf_overhead.py).
    """
    import tensorflow as tf

    channels, num_keys = values.shape[-1], keys.shape[-2]
    from_output = None not in (channels, num_keys) and channels < num_keys

    @tf.custom_gradient
    def attend(queries, keys, values):
        weights = tf.nn.softmax(matmul_transposed(tf.cast(queries, "float32"),
                                                  tf.cast(keys, "float32")))
        low = tf.cast(weights, values.dtype)
        y = tf.linalg.matmul(low, values)
        # Not kept for the backward where it needs none: the memory
        # `softmax_aggregate` saves.
        exact = None if from_output else weights

        def grad(dy):
            d_values = tf.linalg.matmul(low, dy, transpose_a=True)
            if exact is None:
                d_logits = low * _centred(dy, y, values, "float32")
            else:
                d_weights = tf.cast(tf.linalg.matmul(dy, values, transpose_b=True), "float32")
                d_logits = tf.cast(exact * (d_weights - tf.reduce_sum(
                    exact * d_weights, -1, keepdims=True)), low.dtype)
            d_queries = tf.linalg.matmul(d_logits, tf.cast(keys, low.dtype))
            d_keys = tf.linalg.matmul(d_logits, tf.cast(queries, low.dtype), transpose_a=True)
            return tf.cast(d_queries, queries.dtype), tf.cast(d_keys, keys.dtype), d_values

        return y, grad

    return attend(queries, keys, values)


def reassociates(channels, inner, num_queries, num_keys, entries):
    """Whether the reassociated order does fewer multiply-adds than the plain one.

    The block's two ends are matrix products that can be grouped either way,
    with the same value (up to rounding):

        logits = (X W_theta) K^T        = X (W_theta K^T)
        W_z y  = (A V) W_z              = A (V W_z)

    X is `(N_q, C)`, K and V are `(N_k, C_inner)`, A is the affinity; the
    biases follow (see `nonlocal_response`). Per end, the plain order costs
    `N_q C C_inner + E C_inner` and the reassociated one `N_k C_inner C + E C`,
    where E is the number of affinity entries (summed over groups). With few
    keys and many channels (res4: 1568 queries, 392 keys, 1024 channels) the
    reassociated order does 27% fewer per end (22% of the whole block); with
    many keys (res3) the plain one wins. Unknown sizes keep the plain order.
    (`nonlocal_response` also keeps it for quantized projections.)
    """
    if None in (channels, inner, num_queries, num_keys, entries):
        return False
    plain = num_queries * channels * inner + entries * inner
    return num_keys * inner * channels + entries * channels < plain


def nonlocal_response(
    x,
    theta,
    phi,
    g,
    w_z,
    mode,
    pool_size,
    affinity="spacetime",
    use_scale=True,
    w_f=None,
    return_attention_scores=False,
    chunk_size=None,
    mask=None,
    attention_mask=None,
    frames_per_group=None,
):
    """`W_z y` of a non-local block: its response before the BN and the residual.

    Args:
        x: channels-last input `(batch, *positions, channels)`.
        theta, phi, g, w_z: the block's 1x1 convolutions, as `Dense` layers
            acting on the channel axis (`theta` and `phi` are ignored in
            `"gaussian"` mode, which compares the raw input with itself). When
            `reassociates` says so (and none is quantized), their kernels and
            biases are used directly instead of calling them, in the cheaper
            order.
        mode: one of `MODES`.
        pool_size: tuple, one entry per position axis. The input is max-pooled
            with it *before* `phi` and `g`, as in the official code.
        affinity: `"spacetime"`, or for video `"space"` (j runs over the query's
            own frame) or `"time"` (j runs over the query's own spatial cell).
        use_scale: divide the softmax modes' logits by the square root of the
            compared embeddings' channel count.
        w_f: `(2 * C_inner, 1)` weights of the concatenation mode, a float
            tensor (`BaseNonLocal` dequantizes a quantized `w_f` first).
        return_attention_scores: also return the normalised affinity:
            `(batch, N_q, N_k)` for `"spacetime"`, and
            `(batch, groups, N_q_group, N_k_group)` for `"space"` / `"time"`.
            This materialises the whole affinity, so it always takes the plain
            path whatever `chunk_size` says.
        chunk_size: `None` (default here): the plain path, one affinity of
            `(N_q, N_k)` per group. An int: queries in slices of that many
            positions (of a group's queries for `"space"` / `"time"`), each
            recomputed in the backward pass; same result, memory
            `chunk_size * N_k`. `"auto"`: chunk when a group's affinity has
            more than `AUTO_MAX_AFFINITY` entries, in slices of about
            `AUTO_CHUNK_ELEMENTS` entries. Chunking needs the number of
            queries known when tracing; otherwise the plain path is used.
        mask: boolean `(batch, *positions)`, the valid positions, or None.
            A pooled window is a key only when all its positions are valid
            (see `masked_max_pool`). (Invalid queries are computed as any
            other: the caller discards them.)
        attention_mask: boolean with the shape of the attention scores (see
            `return_attention_scores`): which (query, pooled key) pairs may
            attend, combined with `mask` by a logical and.
        frames_per_group: video, `"spacetime"` only: j runs over the
            query's own group of this many consecutive frames (a multiple of
            the pool's frames, dividing the input's), the official
            `add_nonlocal_group`; the attention scores are then grouped as
            for `"space"`. None: all frames.

    Returns:
        `W_z y` with the shape of `x`, and the attention scores when asked for.
    """
    pooled, key_mask = masked_max_pool(x, mask, pool_size)
    embedded = mode != "gaussian"
    keys = project(phi, pooled) if embedded else pooled
    values = project(g, pooled)
    inner = keys.shape[-1]
    logits_dtype = affinity_dtype(keys.dtype)
    keys = ops.cast(keys, logits_dtype)
    if mode in SOFTMAX_MODES and use_scale:
        # On the keys: N_k * C multiplies instead of N_q * N_k on the logits.
        keys = keys * (1.0 / math.sqrt(inner))
    # A quantized projection's `kernel` holds raw int8/int4 values, which only
    # its own call scales back (float8 rounds in the call): the reassociated
    # order, which multiplies theta's and W_z's kernels itself, would skip that.
    quantized = any(getattr(layer, "quantization_mode", None)
                    for layer in (theta, phi, g, w_z) if layer is not None)
    reassociate = not quantized and reassociates(
        x.shape[-1], values.shape[-1], _size(x.shape[1:-1]), _size(pooled.shape[1:-1]),
        _affinity_entries(x.shape[1:-1], pooled.shape[1:-1], affinity, frames_per_group),
    )
    # The logits are in `logits_dtype` in either order, but theta(x) runs in
    # the compute dtype: under mixed precision its product is the cheaper one
    # to keep.
    reassociate_keys = (reassociate and embedded and mode != "concatenation"
                        and keras.backend.standardize_dtype(x.dtype) == logits_dtype)
    queries = x if reassociate_keys or not embedded else project(theta, x)
    # Where each row of the affinity sums to one (a softmax, no masked keys),
    # W_z's bias rides on the values: A (V W_z + 1 b_z^T) = A V W_z + b_z,
    # added to N_k rows instead of N_q (and summed over N_k for its gradient).
    bias_in_values = (reassociate and w_z.bias is not None and mode in SOFTMAX_MODES
                      and mask is None and attention_mask is None)
    if reassociate:
        # The affinity weighs the rows of V: A (V W_z) + b_z = (A V) W_z + b_z.
        bias = ops.cast(w_z.bias, values.dtype) if bias_in_values else None
        values = dense(values, ops.cast(w_z.kernel, values.dtype), bias)

    grouping = _GROUPINGS[affinity] if frames_per_group is None else _frame_groups(
        frames_per_group)
    q, group_keys, restore = grouping(queries, keys, pool_size)
    k, v = group_keys(keys), group_keys(values)
    valid = _valid_pairs(key_mask, attention_mask, group_keys, q, k)
    key_bias = None
    if reassociate_keys:
        # (x_i W_theta + b_theta) . k_j = x_i . (k_j W_theta^T) + b_theta . k_j
        if theta.bias is not None:
            bias = ops.cast(theta.bias, logits_dtype)[:, None]
            key_bias = ops.swapaxes(ops.matmul(k, bias), -1, -2)
        k = dense(k, ops.cast(theta.kernel, logits_dtype), transpose=True)
    chunk = None
    if not return_attention_scores:
        chunk = resolve_chunk_size(chunk_size, q.shape[-2], k.shape[-2])
    weights = None
    if chunk is not None:
        y = _chunked(q, k, v, chunk, mode, w_f, key_bias, valid)
    elif return_attention_scores:
        weights = pairwise_affinity(q, k, mode, w_f=w_f, key_bias=key_bias, valid=valid)
        y = aggregate(weights, v)
    else:
        y = _attend(q, k, v, mode, w_f=w_f, key_bias=key_bias, valid=valid)
    y, weights = restore(y, weights)
    if not reassociate:
        y = project(w_z, y)
    elif w_z.bias is not None and not bias_in_values:
        y = y + ops.cast(w_z.bias, y.dtype)
    if return_attention_scores:
        return y, weights
    return y


def _attend(q, k, v, mode, w_f=None, key_bias=None, valid=None):
    """`aggregate(pairwise_affinity(...), v)`: the plain path and each chunk.
    The softmax modes without a mask go through `softmax_aggregate`, whose
    gradient takes the softmax's row sums from the output, or under
    bfloat16 on TensorFlow through `bfloat16_attention`."""
    if mode in SOFTMAX_MODES and valid is None:
        if (keras.backend.backend() == "tensorflow" and key_bias is None
                and keras.backend.standardize_dtype(v.dtype) == "bfloat16"):
            return bfloat16_attention(q, k, v)
        return softmax_aggregate(affinity_logits(q, k, mode, key_bias=key_bias), v)
    return aggregate(pairwise_affinity(q, k, mode, w_f=w_f, key_bias=key_bias, valid=valid), v)


def _valid_pairs(key_mask, attention_mask, group_keys, q, k):
    """float32 1/0 of the allowed pairs (exact in any float dtype),
    broadcastable to the grouped affinity."""
    valid = None
    if key_mask is not None:
        grouped = group_keys(ops.cast(key_mask, "float32")[..., None])
        valid = ops.swapaxes(grouped, -1, -2)  # (groups, 1, N_k)
    if attention_mask is not None:
        # The scores' layout is (batch, [groups,] N_q, N_k), in the groups'
        # order: merging its leading axes gives the grouped affinity's.
        pairs = ops.cast(ops.cast(attention_mask, "bool"), "float32")
        pairs = ops.reshape(pairs, (-1, ops.shape(q)[-2], ops.shape(k)[-2]))
        valid = pairs if valid is None else valid * pairs
    return valid


def _size(positions):
    return None if None in positions else math.prod(positions)


def _affinity_entries(query_positions, key_positions, affinity, frames_per_group=None):
    """Entries of the whole affinity (all groups), from static sizes or None."""
    n_q, n_k = _size(query_positions), _size(key_positions)
    if n_q is None or n_k is None:
        return None
    groups = {"spacetime": 1, "space": key_positions[0],
              "time": _size(key_positions[1:])}[affinity]
    if frames_per_group is not None:
        groups = query_positions[0] // frames_per_group
    return n_q * n_k // groups


def check_chunk_size(chunk_size):
    """`chunk_size` if it is None, "auto" or a positive int; ValueError otherwise."""
    if chunk_size is None or chunk_size == "auto":
        return chunk_size
    if not is_positive_int(chunk_size):
        raise ValueError(
            "`chunk_size` must be None (plain path), 'auto' or an integer >= 1. "
            f"Received: chunk_size={chunk_size!r}"
        )
    # An int, not a NumPy integer: the layer's config must go through json.
    return int(chunk_size)


def resolve_chunk_size(chunk_size, num_queries, num_keys):
    """The query slice length to use, or None for the plain path."""
    check_chunk_size(chunk_size)
    if chunk_size is None or num_queries is None or num_keys is None:
        return None
    if chunk_size == "auto":
        if num_queries * num_keys <= AUTO_MAX_AFFINITY:
            return None
        chunk_size = max(1, AUTO_CHUNK_ELEMENTS // num_keys)
    return chunk_size if chunk_size < num_queries else None


def _chunked(q, k, v, chunk, mode, w_f, key_bias, valid=None):
    # The same two functions as the plain path, on slices of the queries. A
    # Python loop over static slices rather than ops.map/scan: each slice is
    # then one plain keras.remat region on every backend, whereas the
    # gradient of a backend loop keeps every iteration's intermediates unless
    # the loop body is checkpointed by that backend's own means.
    # w_f enters as a tensor (a copy of the variable): handed the variable
    # itself, tf.recompute_grad returns its gradient both as an input's and
    # as a watched variable's, and the two add up to twice the true value.
    # Extras are positional: what remat differentiates is its positional inputs.
    # A per-query `valid` (from an attention mask) is sliced with the queries.
    extra = {"w_f": None if w_f is None else ops.copy(w_f), "key_bias": key_bias,
             "valid": valid}
    extra = {name: t for name, t in extra.items() if t is not None}
    per_query = valid is not None and valid.shape[-2] != 1

    def one_chunk(q_chunk, k, v, *tensors):
        return _attend(q_chunk, k, v, mode, **dict(zip(extra, tensors)))

    one_chunk = keras.remat(one_chunk)
    num_queries = q.shape[-2]
    ys = []
    for start in range(0, num_queries, chunk):
        rows = slice(start, start + chunk)
        tensors = [t[..., rows, :] if name == "valid" and per_query else t
                   for name, t in extra.items()]
        ys.append(one_chunk(q[..., rows, :], k, v, *tensors))
    return ops.concatenate(ys, axis=-2)


def _flatten_positions(t):
    shape = ops.shape(t)
    if all(isinstance(size, int) for size in shape[1:-1]):
        # The batch as -1: with a batch of 0, a -1 among the positions is
        # ambiguous (JAX divided by zero, PyTorch refused).
        return ops.reshape(t, (-1, math.prod(shape[1:-1]), shape[-1]))
    return ops.reshape(t, (shape[0], -1, shape[-1]))


# Each grouping returns the grouped queries, the function that groups every
# key-side tensor (keys, values, the key mask) alike, and `restore`, which
# brings y (and the weights, when there are any) back to the input's layout.

def _spacetime(queries, keys, pool_size):
    shape = ops.shape(queries)

    def restore(y, weights):
        return ops.reshape(y, tuple(shape[:-1]) + (ops.shape(y)[-1],)), weights

    return _flatten_positions(queries), _flatten_positions, restore


def _space(queries, keys, pool_size):
    # Group by pooled frame: frames [t * pt, (t + 1) * pt) share keys frame t.
    return _frame_groups(pool_size[0])(queries, keys, pool_size)


def _frame_groups(frames_per_group):
    """The grouping of consecutive `frames_per_group` input frames (a
    multiple of the pool's frames): spacetime inside each group."""

    def grouping(queries, keys, pool_size):
        batch, frames, height, width, _ = ops.shape(queries)
        key_frames = frames_per_group // pool_size[0]
        groups = ops.shape(keys)[1] // key_frames
        key_positions = key_frames * ops.shape(keys)[2] * ops.shape(keys)[3]

        def group(t, positions):
            return ops.reshape(t, (-1, positions, ops.shape(t)[-1]))

        def restore(y, weights):
            y = ops.reshape(y, (batch, frames, height, width, ops.shape(y)[-1]))
            if weights is None:  # the chunked path has no affinity to return
                return y, None
            n_q, n_k = ops.shape(weights)[-2:]
            return y, ops.reshape(weights, (batch, groups, n_q, n_k))

        return (group(queries, frames_per_group * height * width),
                lambda t: group(t, key_positions), restore)

    return grouping


def _time(queries, keys, pool_size):
    # Group by pooled spatial cell: the query (t, h, w) sees the keys of cell
    # (h // ph, w // pw) in every pooled frame.
    batch, frames, height, width, _ = ops.shape(queries)
    _, pooled_frames, cells_h, cells_w, _ = ops.shape(keys)
    _, ph, pw = pool_size

    def group_queries(t):
        c = ops.shape(t)[-1]
        t = ops.reshape(t, (batch, frames, cells_h, ph, cells_w, pw, c))
        t = ops.transpose(t, (0, 2, 4, 1, 3, 5, 6))
        return ops.reshape(t, (-1, frames * ph * pw, c))

    def group_keys(t):
        t = ops.transpose(t, (0, 2, 3, 1, 4))
        return ops.reshape(t, (-1, pooled_frames, ops.shape(t)[-1]))

    def restore(y, weights):
        c = ops.shape(y)[-1]
        y = ops.reshape(y, (batch, cells_h, cells_w, frames, ph, pw, c))
        y = ops.transpose(y, (0, 3, 1, 4, 2, 5, 6))
        y = ops.reshape(y, (batch, frames, height, width, c))
        if weights is None:
            return y, None
        n_q, n_k = ops.shape(weights)[-2:]
        return y, ops.reshape(weights, (batch, cells_h * cells_w, n_q, n_k))

    return group_queries(queries), group_keys, restore


_GROUPINGS = {"spacetime": _spacetime, "space": _space, "time": _time}
