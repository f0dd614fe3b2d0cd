"""Peak memory of the block's tf.function fwd+bwd: a git revision's nonlocal_math against this tree's.

    .venv/bin/python benchmarks/ab_memory.py SHAPE PRECISION REVISION [BATCH] [ROUNDS]

Peak RSS is a whole process's, so each version runs in a fresh process
(the same layer and input as `ab_block.py`, traced, then three steps);
rounds alternate which goes first. Prints, per version, the median over
rounds of the peak RSS and of its rise during the steps (the peak minus
the RSS before the first step: what training the block adds).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ab_block  # noqa: E402  (sets the thread counts and the backend)


def child(which, shape, precision, revision, batch):
    from nonlocal_keras import nonlocal_math

    layer, x = ab_block.block_and_input(shape, precision, batch)
    module = ab_block.old_module(revision) if which == "old" else nonlocal_math
    step = ab_block.traced(layer, x, module)
    before = ab_block.worker._rss_mb()
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "rise_mb": peak - before}))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ab_block.add_block_arguments(parser)
    parser.add_argument("batch", metavar="BATCH", nargs="?", type=ab_block.common.positive_int,
                        default=8, help="clips a step (default 8)")
    parser.add_argument("rounds", metavar="ROUNDS", nargs="?", type=ab_block.common.positive_int,
                        default=2, help="processes of each version (default 2)")
    args = parser.parse_args(argv)
    ab_block.common.check_revision(parser, args.revision, [ab_block.MATH])
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # what the parent below starts, checked there
        which, shape, precision, revision, batch = argv[1:6]
        return child(which, shape, precision, revision, int(batch))
    args = parse_args(argv)
    shape, precision, revision = args.shape, args.precision, args.revision
    batch, rounds = str(args.batch), args.rounds
    found = {"old": [], "new": []}
    for r in range(rounds):
        for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
            run = subprocess.run(
                [sys.executable, __file__, "--child", which, shape, precision, revision, batch],
                capture_output=True, text=True)
            if run.returncode != 0:
                last = (run.stderr.strip().splitlines() or ["no message"])[-1]
                sys.exit(f"ab_memory.py: the {which} version's process failed "
                         f"(exit {run.returncode}): {last}")
            found[which].append(json.loads(run.stdout.strip().splitlines()[-1]))
    for which in ("old", "new"):
        peak = statistics.median(m["peak_mb"] for m in found[which])
        rise = statistics.median(m["rise_mb"] for m in found[which])
        label = f"old ({revision})" if which == "old" else "new"
        print(f"{shape} {precision} batch {batch}, {label}: peak RSS {peak:,.0f} MB, "
              f"rise during the steps {rise:,.0f} MB (medians of {rounds})")


if __name__ == "__main__":
    main()
