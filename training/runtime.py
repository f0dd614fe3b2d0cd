"""Distribution strategy and precision policy chosen by config flags."""

import json
import logging
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from nonlocal_keras import cpu
from nonlocal_keras.console import is_terminal, take_back_signals
from nonlocal_keras.training.errors import ConfigError

logger = logging.getLogger(__name__)


def keras_verbose(verbose, stream=None):
    """Keras' `verbose` for `runtime.verbose`: "auto" is the progress bar (1)
    when `stream` (default: stdout, where Keras writes) is a terminal, else one
    line an epoch (2). Keras redraws its bar with carriage returns, backspaces
    and colour codes even into a file or a pipe (it takes every POSIX process
    for an interactive one): 28 KB of them for one 125-step epoch of the demo
    in the log of a run under `nohup` or a batch scheduler."""
    if verbose != "auto":
        return verbose
    return 1 if is_terminal(sys.stdout if stream is None else stream) else 2


def memory_limit():
    """The most bytes of memory this process can have: the machine's, or its
    cgroup's limit where lower (a container, a batch scheduler's job); None
    where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as handle:
                limits.append(int(handle.read().strip()))  # "max": no limit, a ValueError
        except (OSError, ValueError):
            pass
    return min(limits) if limits else None


def make_strategy(name="auto", tpu=""):
    """A `tf.distribute.Strategy` by name.

    - `auto`: `mirrored` when GPUs are visible, else `default`.
    - `default`: the current (single-device) strategy.
    - `mirrored`: `MirroredStrategy` over all local GPUs; without GPUs, over
      every logical CPU device (which is how the tests exercise it).
    - `multi_worker`: `MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`.
    - `tpu`: `TPUStrategy` on the TPU named by `tpu` (empty: the local one).
    """
    if name == "auto":
        name = "mirrored" if tf.config.list_logical_devices("GPU") else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        check_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # Its coordination service takes SIGTERM over (see take_back_signals).
        take_back_signals()
        return _reducing_each_value(strategy)
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        except ValueError as error:  # no TPU of that name, or none here
            raise ConfigError(f"Cannot find the TPU ({error}). Received: runtime.tpu={tpu!r}") from None
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        "`strategy` must be auto, default, mirrored, multi_worker or tpu. "
        f"Received: strategy={name!r}")


def check_tf_config():
    """`TF_CONFIG` must be JSON (TensorFlow's own message is a JSONDecodeError
    traceback); without a cluster in it the process trains alone, as a cluster
    of one, which a `multi_worker` run whose variable was not exported to it
    did without a word."""
    text = os.environ.get("TF_CONFIG")
    if text is not None and not text.strip():
        # TensorFlow reads a set variable as JSON: an empty one failed with a
        # JSONDecodeError after the warning below said the process trains alone.
        del os.environ["TF_CONFIG"]
    try:
        config = json.loads(text if text and text.strip() else "{}")
    except ValueError as error:
        raise ConfigError(f"The environment variable TF_CONFIG is not JSON ({error}). "
                          f"Received: TF_CONFIG={text!r}") from None
    if not (isinstance(config, dict) and config.get("cluster")):
        logger.warning("runtime.strategy is multi_worker, but TF_CONFIG names no cluster (%s): "
                       "this process trains alone. Set TF_CONFIG in each worker's environment "
                       "(README: \"Several workers and hosts\").",
                       "it is not set" if text is None else f"TF_CONFIG={text!r}")
        return
    cluster, task = config["cluster"], config.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    try:  # as TensorFlow's resolver reads it ("0" and true too)
        index = int(task["index"])
    except (KeyError, TypeError, ValueError):
        index = None
    tasks = cluster.get(kind) if isinstance(cluster, dict) and isinstance(kind, str) else None
    if not isinstance(tasks, (list, dict)) or index is None or not 0 <= index < len(tasks):
        # TensorFlow's ValueError tracebacks ("task_id 5 exceeds the maximum id").
        named = ", ".join(f"{name} 0-{len(each) - 1}" for name, each in cluster.items()
                          if isinstance(each, (list, dict)) and each) \
            if isinstance(cluster, dict) else "none"
        raise ConfigError("TF_CONFIG's task must be one of its cluster's tasks, "
                          f"{{\"type\": ..., \"index\": ...}} (the cluster has {named}). "
                          f"Received: TF_CONFIG={text!r}")


def is_chief(resolver):
    """Whether the task a cluster resolver describes writes the run (every worker
    trains): the chief, else worker 0 of a cluster without one; any process
    outside a cluster."""
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return True
    kind, index = resolver.task_type, resolver.task_id
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)


def worker_share(strategy):
    """`(index, count)` of this process among the workers of a
    `MultiWorkerMirroredStrategy` (a chief first, as the strategy numbers
    them); `(0, 1)` for any other strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    tasks = [(kind, i) for kind in ("chief", "worker") for i in range(len(spec.get(kind, [])))]
    if (resolver.task_type, resolver.task_id) not in tasks:
        return 0, 1
    return tasks.index((resolver.task_type, resolver.task_id)), len(tasks)


def sum_over_workers(strategy, value):
    """The sum of every worker's NumPy array `value` (a collective: every worker
    calls it, with arrays of one shape and dtype)."""
    given = []

    def local(context):  # the first local replica holds this worker's value
        share = value if not given else np.zeros_like(value)
        given.append(True)
        return tf.constant(share)

    per_replica = strategy.experimental_distribute_values_from_function(local)
    return np.asarray(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


def _reducing_each_value(strategy):
    """`strategy`, whose `reduce` takes what Keras 3 hands it with several workers.

    Keras 3's TensorFlow trainer (3.15) calls the multi-worker strategy's
    `reduce` on a whole `(x, y)` batch when `fit` starts, and on each step's
    scalar metrics with `axis=0`; with more than one worker the strategy fails
    on both (a tuple; no axis 0 in a scalar). Here each value is reduced on its
    own, a scalar across replicas only. Every worker makes the same calls in
    the same order, so the collectives still match.
    """
    reduce = strategy.reduce

    def reduce_one(reduce_op, value, axis):
        local = strategy.experimental_local_results(value)[0]
        return reduce(reduce_op, value, None if local.shape.rank == 0 else axis)

    def reduce_each(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda v: reduce_one(reduce_op, v, axis), value)

    strategy.reduce = reduce_each
    return strategy


def set_precision(policy):
    """Set the global Keras dtype policy (`float32`, `mixed_float16`, `mixed_bfloat16`).

    Must run before the model is built. With `mixed_float16` the training code
    wraps the optimiser in `LossScaleOptimizer` (dynamic loss scaling), which
    float16 gradients need to avoid underflow; bfloat16 has float32's range
    and needs none.
    """
    if policy not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ValueError(
            "`precision` must be float32, mixed_float16 or mixed_bfloat16. "
            f"Received: precision={policy!r}")
    keras.mixed_precision.set_global_policy(policy)


def warn_if_slow_precision(policy, strategy, bfloat16_native=None):
    """Warn when `policy` is slower than float32 here: mixed precision on CPUs only.

    TensorFlow's float16 kernels on a CPU are slow, and on a CPU without
    bfloat16 instructions its bfloat16 ones convert to float32 and back: a C2D
    ResNet-50 training step took 32.6 s, against 2.3-2.9 s in float32, on an
    AVX2-only CPU (README "Training on a CPU"). Returns the message, or None.
    `bfloat16_native` defaults to what `/proc/cpuinfo` says.
    """
    if (policy == "float32" or tf.config.list_logical_devices("GPU")
            or isinstance(strategy, tf.distribute.TPUStrategy)):
        return None
    if policy == "mixed_float16":
        reason = "TensorFlow's float16 kernels are slow on the CPU"
    else:
        native = cpu.computes_in_bfloat16() if bfloat16_native is None else bfloat16_native
        if native is not False:
            return None
        reason = f"this CPU has no bfloat16 instructions ({', '.join(cpu.BFLOAT16_FLAGS)})"
    message = (f"runtime.precision={policy} without a GPU: {reason}, so float32 trains "
               "faster here (README, 'Training on a CPU').")
    logger.warning(message)
    return message
