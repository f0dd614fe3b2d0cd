"""Where the non-local block's training step goes, beside its matrix products alone.

    .venv/bin/python benchmarks/profile_block.py res3 float32
    .venv/bin/python benchmarks/profile_block.py res4 mixed_bfloat16 --inter-op-threads 2
    .venv/bin/python benchmarks/profile_block.py res3 float32 --top 30     # ops by name too

The two graphs of worker.py's `overhead` case (issue 15's "overhead <= 10%"): the block's
fwd+bwd as a `tf.function` (what `model.fit` runs on a CPU) and its products alone
(`matmuls_only`), batch 1, 2 intra-op threads. Times each (median of `--steps` calls, the two
alternating), traces `--trace` more calls of each with `tf.profiler` and prints the op time
a call: the products (every `MatMul`, `BatchMatMulV2` and fused `MatMul` kernel) per op type,
and every other op type. With one inter-op thread (the default) no two kernels share the
cores, so a graph's op times add up to its step; with two (the `overhead` case's setting)
independent kernels overlap and each one's time includes waiting for cores.
"""

import argparse
import collections
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (asks for oneDNN before TensorFlow loads)
import profile_step  # noqa: E402
import worker  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=("res4", "res3"))
    parser.add_argument("precision", choices=("float32", "mixed_bfloat16"))
    parser.add_argument("--inter-op-threads", type=common.positive_int, default=1)
    parser.add_argument("--steps", type=common.positive_int, default=10,
                        help="timed calls of each graph")
    parser.add_argument("--trace", type=common.positive_int, default=4,
                        help="profiled calls of each graph")
    parser.add_argument("--top", type=common.non_negative_int, default=0,
                        help="also the N slowest ops by name")
    return parser.parse_args(argv)


def is_product(kind):
    return "MatMul" in kind


def profile(call, calls):
    """{(op name, op type): seconds a call} over `calls` traced calls."""
    ops = collections.Counter()
    for name, kind, seconds in profile_step.trace(call, calls):
        ops[name, kind] += seconds / calls
    return ops


def _by_type(ops):
    kinds = collections.Counter()
    for (_, kind), seconds in ops.items():
        kinds[kind] += seconds
    return kinds


def _line(kinds):
    """The op types that took 0.01 ms a call or more, slowest first."""
    return ", ".join(f"{kind} {seconds * 1e3:.2f}" for kind, seconds in kinds.most_common()
                     if seconds >= 1e-5)


def main(argv=None):
    args = parse_args(argv)
    common.INTER_OP_THREADS = args.inter_op_threads
    case = {"shape": args.shape, "precision": args.precision, "compile": "graph"}
    calls = {"block": worker._block_calls(case)["fwdbwd"],
             "products alone": worker._matmuls_call(case)}
    times = common.alternate(calls, 3, args.steps)
    step = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.shape} {args.precision}, {args.inter_op_threads} inter-op thread(s): block "
          f"{step['block'] * 1e3:.1f} ms a step, products alone "
          f"{step['products alone'] * 1e3:.1f} ms ({step['block'] / step['products alone']:.3f}; "
          f"medians of {args.steps})")
    for name, call in calls.items():
        ops = profile(call, args.trace)
        kinds = _by_type(ops)
        products = collections.Counter({k: t for k, t in kinds.items() if is_product(k)})
        rest = collections.Counter({k: t for k, t in kinds.items() if not is_product(k)})
        print(f"{name}: op time {sum(kinds.values()) * 1e3:.1f} ms a step; products "
              f"{sum(products.values()) * 1e3:.1f} ms ({_line(products)}); the rest "
              f"{sum(rest.values()) * 1e3:.1f} ms")
        print(f"  the rest: {_line(rest)}")
        for (op, kind), seconds in ops.most_common(args.top):
            print(f"  {seconds * 1e3:7.2f} ms  {op} ({kind})")


if __name__ == "__main__":
    sys.exit(main())
