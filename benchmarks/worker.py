"""Runs one benchmark case in this (fresh) process and prints one JSON line.

Called by run_all.py as `python benchmarks/worker.py '<case json>'`, under a
memory cap, so that its peak RSS (ru_maxrss) is the case's own and an out of
memory error ends only this process. Cases:

    {"kind": "keras", "shape": "res4", "precision": "float32"|"mixed_bfloat16",
     "compile": "eager"|"graph"|"xla", "chunk_size": "auto"|null|int,
     "passes": ["fwd", "fwdbwd"],
     "warmup": 2, "repeats": 10}
    {"kind": "mmcv"|"pytorchvideo", "shape": ..., "passes": ..., ...}
    {"kind": "matmul", "size": 4096, "dtype": "float32", ...}
    {"kind": "matmuls_only"|"overhead", "shape": ..., "precision": ..., ...}
    {"kind": "model", "batch": 2, "frames": 8, "size": 112, ...}

Forward is inference (BN with moving statistics, no gradient recorded);
fwd+bwd is a training-mode forward and the gradients of sum(output) with
respect to the input and every weight.
"""

import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

THREADS = str(common.THREADS)
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS"):
    os.environ[var] = THREADS
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"


def _rss_mb():
    """Current resident memory (the baseline a case's peak is to be read against)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def _time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times),
            "repeats": repeats, "warmup": warmup}


def _tensorflow():
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(common.THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(common.INTER_OP_THREADS)
    except RuntimeError:  # TensorFlow already runs in this process (profile_step): its threads stay
        pass
    return tf


def sgd(learning_rate=0.01):
    """The SGD that `nonlocal-train` steps with (training/optim.py: on TensorFlow one
    fused kernel a variable), momentum 0.9 and no L2: the peers' torch.optim.SGD update."""
    from nonlocal_keras.training.optim import SGDWithL2

    return SGDWithL2(l2=0.0, learning_rate=learning_rate, momentum=0.9)


def keras_block(case):
    fns = _block_calls(case)
    result = {"rss_before_mb": _rss_mb()}
    result.update({p: _time(fns[p], case["warmup"], case["repeats"]) for p in case["passes"]})
    return result


def _block_calls(case):
    """{"fwd": call, "fwdbwd": call} running our block as the case says."""
    tf = _tensorflow()
    import keras

    from nonlocal_keras.layers import NonLocal3D

    channels, (t, h, w), inner, pool = common.SHAPES[case["shape"]]
    policy = case.get("precision", "float32")
    layer = NonLocal3D(inter_channels=inner, pool_size=pool, dtype=policy,
                       chunk_size=case.get("chunk_size", "auto"))
    dtype = keras.mixed_precision.Policy(policy).compute_dtype
    x = tf.cast(tf.random.normal((common.BATCH, t, h, w, channels)), dtype)
    layer.build(x.shape)
    # Make the BN gamma non-zero so gradients flow through the whole block.
    layer.bn.gamma.assign(tf.ones_like(layer.bn.gamma))

    def forward(x):
        return layer(x, training=False)

    def train(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), tf.float32))
        return tape.gradient(loss, [x] + [v.value for v in layer.trainable_weights])

    # graph: tf.function without XLA, what model.fit runs on a CPU (Keras
    # turns jit_compile="auto" off there); xla: jit_compile=True.
    compile_ = case.get("compile", "eager")
    if compile_ != "eager":
        forward = tf.function(forward, jit_compile=compile_ == "xla")
        train = tf.function(train, jit_compile=compile_ == "xla")

    def run(fn):
        def call():
            out = fn(x)
            # Wait for the values (async eager kernels): read one number back.
            first = out[0] if isinstance(out, list) else out
            float(tf.reduce_sum(tf.cast(first, tf.float32)))
        return call

    return {"fwd": run(forward), "fwdbwd": run(train)}


def torch_block(case):
    import torch

    torch.set_num_threads(common.THREADS)
    try:
        torch.set_num_interop_threads(common.THREADS)
    except RuntimeError:
        pass
    channels, (t, h, w), inner, pool = common.SHAPES[case["shape"]]
    if case["kind"] == "mmcv":
        from mmcv.cnn.bricks import NonLocal3d

        # mmcv pools *after* phi and g (sub_sample=True: MaxPool3d (1, 2, 2)).
        block = NonLocal3d(channels, sub_sample=True, reduction=channels // inner,
                           use_scale=True, norm_cfg=dict(type="BN3d"),
                           mode="embedded_gaussian")
        bn = block.conv_out.bn
    else:
        from pytorchvideo.layers.nonlocal_net import create_nonlocal

        # PyTorchVideo pools *before* phi and g, as the official code.
        block = create_nonlocal(dim_in=channels, dim_inner=inner, pool_size=pool,
                                instantiation="softmax")
        bn = block.norm
    with torch.no_grad():
        bn.weight.fill_(1.0)
    x = torch.randn(common.BATCH, channels, t, h, w)

    def forward():
        block.eval()
        with torch.no_grad():
            block(x)

    def train():
        block.train()
        xg = x.detach().requires_grad_(True)
        loss = block(xg).sum()
        torch.autograd.grad(loss, [xg] + list(block.parameters()))

    fns = {"fwd": forward, "fwdbwd": train}
    result = {"rss_before_mb": _rss_mb()}
    result.update({p: _time(fns[p], case["warmup"], case["repeats"]) for p in case["passes"]})
    return result


def matmul(case):
    tf = _tensorflow()
    n = case["size"]
    a = tf.cast(tf.random.normal((n, n)), case["dtype"])
    b = tf.cast(tf.random.normal((n, n)), case["dtype"])

    product = tf.matmul
    if case.get("jit"):
        product = tf.function(tf.matmul, jit_compile=True)

    def call():
        float(tf.reduce_sum(tf.cast(product(a, b)[:1, :1], tf.float32)))

    result = _time(call, case["warmup"], case["repeats"])
    result["gflops"] = 2 * n**3 / result["median_s"] / 1e9
    return {"matmul": result}


def matmuls_only(case):
    return {"fwdbwd": _time(_matmuls_call(case), case["warmup"], case["repeats"])}


def overhead(case):
    """The block as a tf.function and its matmuls alone (`matmuls_only`), fwd+bwd,
    in one process and alternately, each pair run back to back: other
    processes on the cores then slow both alike, and the per-pair ratios are
    what issue 15's "overhead <= 10%" is judged on."""
    calls = {"block": _block_calls(dict(case, compile="graph"))["fwdbwd"],
             "matmuls": _matmuls_call(case)}
    times = common.alternate(calls, case["warmup"], case["repeats"])
    ratios = [b / m for b, m in zip(times["block"], times["matmuls"])]
    out = {name: {"median_s": statistics.median(t), "min_s": min(t), "repeats": len(t),
                  "warmup": case["warmup"]} for name, t in times.items()}
    out["ratio"] = {"median": statistics.median(ratios), "min": min(ratios),
                    "max": max(ratios), "of_medians": out["block"]["median_s"]
                    / out["matmuls"]["median_s"]}
    return out


def _matmuls_call(case):
    """The block's matrix products alone, fwd+bwd, as a call that waits for them."""
    tf = _tensorflow()
    train, inputs = matmuls_step(case)

    def call():
        loss, grads = train(*inputs)
        float(loss + tf.reduce_sum(tf.cast(grads[0][:1], "float32")))

    return call


def matmuls_step(case):
    """`(train, inputs)`: the block's matrix products alone as a tf.function
    (no softmax, pooling, BN or bias), `train(*inputs)` returning the sum of
    the output and its gradients with respect to every input, in the order
    and the dtypes this package uses at the shape and precision. Under
    mixed_bfloat16 that is theta, phi, g, the aggregation, W_z and the logits'
    gradient in bfloat16 and the logits in float32 (`nonlocal_math.nonlocal_response`,
    `bfloat16_attention`), so the operands of the logits and the affinity are
    cast, as the block does; under float32 those casts are no-ops. The
    ceiling for any implementation of the block in TensorFlow on this
    machine, since the rest only adds time. `inputs` is `(x, pooled, w_theta,
    w_phi, w_g, w_z)`."""
    tf = _tensorflow()
    from nonlocal_keras import nonlocal_math

    channels, (t, h, w), inner, (pt, ph, pw) = common.SHAPES[case["shape"]]
    precision = case.get("precision", "float32")
    low = "float32" if precision == "float32" else "bfloat16"
    n_q, n_k = common.positions(case["shape"])
    reassociated = nonlocal_math.reassociates(channels, inner, n_q, n_k, n_q * n_k)
    # Under mixed precision theta's product stays in bfloat16 (not reassociated).
    keys_reassociated = reassociated and precision == "float32"
    normal = tf.random.normal
    x, pooled = tf.cast(normal((n_q, channels)), low), tf.cast(normal((n_k, channels)), low)
    weights = [normal((channels, inner)) * 0.03 for _ in range(3)] + [normal((inner, channels))]

    @tf.function
    def train(x, pooled, *weights):
        with tf.GradientTape() as tape:
            tape.watch([x, pooled, *weights])
            # The policy's variables are float32, cast to the compute dtype on use.
            w_theta, w_phi, w_g, w_z = (tf.cast(v, low) for v in weights)
            keys, values = pooled @ w_phi, pooled @ w_g
            if keys_reassociated:
                affinity = x @ tf.matmul(w_theta, keys, transpose_b=True)
            else:
                affinity = _affinity(x @ w_theta, keys, low)
            if reassociated:
                out = affinity @ (values @ w_z)
            else:
                out = affinity @ values @ w_z
            loss = tf.reduce_sum(tf.cast(out, "float32"))
        # The loss is returned so that the forward's last product runs: the
        # gradient of sum(out) does not need out, and grappler drops what no
        # output needs (the block computes it: it is the block's output).
        return loss, tape.gradient(loss, [x, pooled, *weights])

    return train, (x, pooled, *weights)


def _affinity(queries, keys, low):
    """The logits `queries keys^T` computed in float32 and returned in `low`,
    their gradient's two products in `low`: the block's order and dtypes
    (`nonlocal_math.bfloat16_attention` under mixed_bfloat16)."""
    tf = _tensorflow()

    @tf.custom_gradient
    def product(queries, keys):
        logits = tf.matmul(tf.cast(queries, "float32"), tf.cast(keys, "float32"),
                           transpose_b=True)

        def grad(d_affinity):
            return (tf.matmul(d_affinity, keys),
                    tf.matmul(d_affinity, queries, transpose_a=True))

        return tf.cast(logits, low), grad

    return product(queries, keys)


def model(case):
    tf = _tensorflow()
    import keras

    try:
        from nonlocal_keras.applications import C2DResNet50
    except ImportError as error:
        return {"skipped": f"nonlocal_keras.applications.C2DResNet50 unavailable: {error}"}
    batch, frames, size = case["batch"], case["frames"], case["size"]
    net = C2DResNet50(input_shape=(frames, size, size, 3), classes=400,
                      nonlocal_blocks=case.get("nonlocal_blocks", 5))
    net.compile(optimizer=sgd(), loss="sparse_categorical_crossentropy",
                jit_compile=case.get("jit", False))
    x = tf.random.normal((batch, frames, size, size, 3))
    y = tf.zeros((batch,), tf.int32)
    result = _time(lambda: net.train_on_batch(x, y), case["warmup"], case["repeats"])
    result["clips_per_s"] = batch / result["median_s"]
    return {"train_step": result}


def main():
    case = json.loads(sys.argv[1])
    kind = case["kind"]
    runner = {"keras": keras_block, "mmcv": torch_block, "pytorchvideo": torch_block,
              "matmul": matmul, "matmuls_only": matmuls_only, "overhead": overhead,
              "model": model}[kind]
    result = runner(case)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
