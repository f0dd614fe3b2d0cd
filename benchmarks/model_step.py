"""Whole-model training step, ours against PyTorchVideo and mmaction2 (issue 15).

    .venv/bin/python benchmarks/model_step.py [--rounds 2] [--lock /tmp/nonlocal_bench.lock]
    .venv/bin/python benchmarks/model_step.py --quick            # tiny shapes, one round
    .venv/bin/python benchmarks/model_step.py --only "NL-I3D"    # a subset, README untouched
                                                   # and results/model_step.json too

One training step = forward, backward and an SGD update (momentum 0.9) of a
batch of 2 clips of 8x224x224, 400 classes, on 2 threads (TF intra/inter-op,
torch). Ours: `C2DResNet50` / `I3DResNet50` (0 or the paper's 5 non-local
blocks), `compile(SGD, sparse categorical cross-entropy)` + `train_on_batch`,
which is what `model.fit` runs on a CPU (no XLA), in float32 and under
`mixed_bfloat16`. Peers (`pip install -e ".[bench]"`): PyTorchVideo's hub
builders `c2d_r50` / `i3d_r50` for the plain models, mmaction2's `ResNet3d` +
`I3DHead` with the same 5 non-local blocks for the NL ones, in float32 and
under `torch.autocast("cpu", torch.bfloat16)`.

Every case runs in a fresh process capped with RLIMIT_AS (run_all.run_case:
this script with one JSON argument is the worker); its peak RSS is recorded.
Each round runs every case, in reverse order every other round, so that ours
and the peer swap places; the table holds medians over rounds. With `--lock`
each round holds that flock (and releases it between rounds). The same
analytic FLOP count (from our Keras model's layers) serves ours and the peer
of a row, and `tf.matmul` of 4096x4096 in float32 and bfloat16, measured in the
same run, gives the machine's rate; ours' share is of the rate its own process
measures right before and after its steps, their mean (the 2 cores' speed moved
by up to 2x within a run on a shared machine, so a rate taken minutes earlier
judged a case by another machine's speed). Results: benchmarks/results/model_step.json
and the README between <!-- model-step:start/end --> (full runs with both peers
installed only).
"""

import argparse
import fcntl
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import types
from datetime import datetime, timezone
from importlib import util

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from nonlocal_keras import cpu  # noqa: E402

# name: (architecture, non-local blocks, peer)
MODELS = {
    "C2D R50": ("c2d", 0, "pytorchvideo"),
    "I3D R50": ("i3d", 0, "pytorchvideo"),
    "NL-C2D R50 (5 blocks)": ("c2d", 5, "mmaction2"),
    "NL-I3D R50 (5 blocks)": ("i3d", 5, "mmaction2"),
}
PRECISIONS = ("float32", "bfloat16")
PEER_NAMES = {"pytorchvideo": "PyTorchVideo", "mmaction2": "mmaction2"}
GOALS = {"float32": 0.65, "bfloat16": 0.55}
FULL = dict(batch=2, frames=8, size=224, classes=400, warmup=1, repeats=3, matmul=4096)
# The work of a step does not depend on it. Under bfloat16 the loss still
# turns NaN in some runs, ours and the peers', at 1e-4 as at 0.01 (ours: a kernel
# comes out of one step non-finite, not a divergence); the table marks them.
LEARNING_RATE = 1e-4
DEFAULT_OUT = os.path.join(HERE, "results", "model_step.json")
SETUP_CFG = os.path.join(os.path.dirname(HERE), "setup.cfg")
SUBSET_OUT = os.path.join(tempfile.gettempdir(), "nonlocal_bench_model_step_subset.json")
QUICK = dict(batch=2, frames=4, size=32, classes=10, warmup=1, repeats=1, matmul=1024)

# mmaction2's per-block flags for ResNet-50 (3, 4, 6, 3 blocks), the same
# blocks as ours (video_resnet_spec: i3d inflates res2 all, res3/res4 even,
# res5 odd; the 5 non-local blocks after res3 1, 3 and res4 1, 3, 5);
# tests/test_benchmarks_model_step.py checks them against our spec.
MMACTION_I3D_INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
MMACTION_NONLOCAL_5 = ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0))


def describe(case):
    if case["impl"] == "matmul":
        return f"matmul {case['size']}^2 " + " and ".join(PRECISIONS)
    return f"{case['model']} {case['precision']} {case['impl']}"


def cases(settings, only=None):
    """The matmul rates (always measured), then ours and the peer of each row."""
    out = [dict(impl="matmul", size=settings["matmul"], warmup=1, repeats=5)]
    shape = {k: settings[k] for k in ("batch", "frames", "size", "classes", "warmup", "repeats",
                                      "matmul")}
    for model, (_, _, peer) in MODELS.items():
        for precision in PRECISIONS:
            for impl in ("ours", peer):
                case = dict(shape, impl=impl, model=model, precision=precision)
                if not only or re.search(only, describe(case)):
                    out.append(case)
    return out


def installed(impl):
    needs = {"ours": "tensorflow", "matmul": "tensorflow", "pytorchvideo": "pytorchvideo",
             "mmaction2": "mmaction"}[impl]
    return util.find_spec(needs) is not None


# --- FLOPs --------------------------------------------------------------------

def step_flops(net):
    """FLOPs (2 x multiply-adds) of one clip's training step of a Keras video ResNet.

    Forward: every Conv3D and Dense (output elements x kernel volume x input
    channels) and each NonLocal3D's five matrix products in the plain order
    the paper and the peers use (theta on every position, phi and g on the
    pooled ones, logits, aggregation, W_z), whatever order this package picks
    (`nonlocal_math.reassociates`): one count per architecture. BN, ReLU,
    adds, pooling and softmax are left out. A backward costs two forwards
    (input and weight gradients), except that the first convolution needs no
    input gradient: step = 3 x forward - conv1's forward.
    """
    import keras

    from nonlocal_keras.layers import NonLocal3D

    forward, first = 0, None
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv3D):
            macs = (math.prod(layer.output.shape[1:]) * math.prod(layer.kernel_size)
                    * layer.input.shape[-1] // layer.groups)
            first = macs if first is None else first
        elif isinstance(layer, keras.layers.Dense):
            macs = layer.units * layer.input.shape[-1]
        elif isinstance(layer, NonLocal3D):
            if layer.mode != "embedded_gaussian" or layer.affinity != "spacetime":
                raise ValueError(f"Only the embedded Gaussian space-time block is counted. "
                                 f"Received: mode={layer.mode!r}, affinity={layer.affinity!r}")
            *positions, channels = layer.input.shape[1:]
            inner = layer.theta.units
            n_q = math.prod(positions)
            n_k = math.prod(p // w for p, w in zip(positions, layer.effective_pool_size))
            macs = 2 * n_q * channels * inner + 2 * n_k * channels * inner + 2 * n_q * n_k * inner
        else:
            continue
        forward += macs
    return 2 * (3 * forward - first)


# --- the worker (one case in this process) ------------------------------------

def _ours(case):
    import worker

    if case["precision"] == "bfloat16":
        cpu.fuse_pointwise_ops()  # what nonlocal-train asks for, before TensorFlow's first op
    tf = worker._tensorflow()
    import keras

    from nonlocal_keras.applications import C2DResNet50, I3DResNet50

    def matmul_rate():
        return worker.matmul({"size": case["matmul"], "dtype": case["precision"], "warmup": 1,
                              "repeats": 5})["matmul"]["gflops"]

    before = matmul_rate()
    if case["precision"] == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    arch, blocks, _ = MODELS[case["model"]]
    build = C2DResNet50 if arch == "c2d" else I3DResNet50
    size, batch = case["size"], case["batch"]
    net = build(input_shape=(case["frames"], size, size, 3), classes=case["classes"],
                nonlocal_blocks=blocks)
    # Keras' default jit_compile="auto" is what model.fit gets: off on a CPU.
    net.compile(optimizer=worker.sgd(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    x = tf.random.normal((batch, case["frames"], size, size, 3))
    y = tf.random.uniform((batch,), 0, case["classes"], tf.int32)
    losses = []
    step = worker._time(lambda: losses.append(float(net.train_on_batch(x, y))),
                        case["warmup"], case["repeats"])
    after = matmul_rate()
    return {"train_step": step, "losses": losses, "jit_compile": bool(net.jit_compile),
            "tf_xla_flags": os.environ.get("TF_XLA_FLAGS"),
            "matmul_gflops_before_after": [before, after],
            "matmul_gflops_beside": (before + after) / 2,
            "gflop_per_clip": step_flops(net) / 1e9,
            "trainable_params": sum(math.prod(w.shape) for w in net.trainable_weights)}


def _pytorchvideo(arch, case):
    if util.find_spec("torchvision") is None:
        # pytorchvideo.models imports torchvision.ops.RoIAlign for its detection
        # head only; PyPI's torchvision wheels need CUDA torch (the CPU wheel
        # here has no torchvision), so an empty stand-in is enough for c2d/i3d.
        vision, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.RoIAlign, vision.ops = None, ops
        sys.modules.update({"torchvision": vision, "torchvision.ops": ops})
    from pytorchvideo.models.hub import resnet

    # The head pools the whole (T/2, H/32, W/32) map: (4, 7, 7) at 8x224x224.
    pool = (case["frames"] // 2, case["size"] // 32, case["size"] // 32)
    return getattr(resnet, f"{arch}_r50")(model_num_class=case["classes"],
                                          head_pool_kernel_size=pool)


def _mmaction2(arch, case):
    # mmaction2 1.2.0's wheel lacks mmaction/models/localizers/drn, which
    # mmaction/models/__init__ imports through localizers: an empty stand-in
    # for the localizers package (unused here) lets the backbones import.
    sys.modules.setdefault("mmaction.models.localizers",
                           types.ModuleType("mmaction.models.localizers"))
    import torch
    from mmaction.models.backbones.resnet3d import ResNet3d
    from mmaction.models.heads.i3d_head import I3DHead

    i3d = arch == "i3d"
    # The 8x8 stem, as ours: no temporal stride in conv1 or pool1.
    backbone = ResNet3d(
        depth=50, pretrained=None, pretrained2d=False, conv1_kernel=(5 if i3d else 1, 7, 7),
        conv1_stride_t=1, pool1_stride_t=1, inflate=MMACTION_I3D_INFLATE if i3d else (0, 0, 0, 0),
        inflate_style="3x1x1", non_local=MMACTION_NONLOCAL_5, zero_init_residual=False,
        non_local_cfg=dict(sub_sample=True, use_scale=True, mode="embedded_gaussian",
                           norm_cfg=dict(type="BN3d", requires_grad=True)))
    backbone.init_weights()
    head = I3DHead(num_classes=case["classes"], in_channels=2048, dropout_ratio=0.5)
    head.init_weights()
    return torch.nn.Sequential(backbone, head)


def _peer(case):
    import torch

    torch.set_num_threads(common.THREADS)
    torch.set_num_interop_threads(common.THREADS)
    import worker

    arch, _, _ = MODELS[case["model"]]
    net = (_pytorchvideo if case["impl"] == "pytorchvideo" else _mmaction2)(arch, case)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=0.9)
    size, batch = case["size"], case["batch"]
    x = torch.randn(batch, 3, case["frames"], size, size)
    y = torch.randint(0, case["classes"], (batch,))
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case["precision"] == "bfloat16"):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    return {"train_step": worker._time(step, case["warmup"], case["repeats"]), "losses": losses,
            "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad)}


def run_worker(case):
    import resource

    import worker  # first: it sets the thread counts before TensorFlow or torch starts

    if case["impl"] == "matmul":
        # Both precisions in one process: one TensorFlow start fewer.
        result = {"matmul": {p: worker.matmul(dict(case, dtype=p))["matmul"] for p in PRECISIONS}}
    else:
        result = (_ours if case["impl"] == "ours" else _peer)(case)
        # Recorded, not fatal: the time of a step is still its time.
        result["finite_losses"] = all(math.isfinite(loss) for loss in result["losses"])
        result["clips_per_s"] = case["batch"] / result["train_step"]["median_s"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# --- the driver ---------------------------------------------------------------

def run_round(selected, order, cap_bytes, timeout, lock, label):
    import run_all

    handle = open(lock, "a") if lock else None
    if handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        load_before = os.getloadavg()
        results = {}
        for index in order:
            case = selected[index]
            if not installed(case["impl"]):
                result = {"status": "skipped", "skipped": f"{case['impl']} is not installed"}
            else:
                result = run_all.run_case(case, cap_bytes, timeout,
                                          script=os.path.abspath(__file__))
            results[index] = result
            print(f"[{label}] {describe(case)}: {_summary(result)}", flush=True)
        return [results[i] for i in range(len(selected))], [load_before, os.getloadavg()]
    finally:
        if handle:
            handle.close()


def _summary(result):
    if result["status"] != "ok":
        return result.get("skipped") or result.get("message") or result.get("tail", result["status"])
    if "matmul" in result:
        return ", ".join(f"{p} {v['gflops']:.0f} GFLOP/s" for p, v in result["matmul"].items())
    beside = result.get("matmul_gflops_beside")
    return (f"{result['clips_per_s']:.2f} clips/s ({result['train_step']['median_s']:.2f} s a step), "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
            + (f"; tf.matmul before and after it {beside:.0f} GFLOP/s (mean)" if beside else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 when every case ran (or was skipped: not installed), 1 when a "
               "case failed (a timeout, out of memory, an error), 2 for a usage error (found "
               "before any measuring), 130 on Ctrl-C.")
    parser.add_argument("--quick", action="store_true",
                        help="4x32x32 clips, 10 classes, one round, 1 warm-up + 1 timed step")
    parser.add_argument("--rounds", type=common.positive_int, help="default 2 (1 with --quick)")
    parser.add_argument("--only", type=common.regex,
                        help="regex on the case name, e.g. 'NL-I3D.*bfloat16'; "
                             "the matmul rates are always measured; without --out the results "
                             "go to a file of their own in the temporary folder, not to "
                             "results/model_step.json")
    parser.add_argument("--lock", help="flock this file during each round")
    parser.add_argument("--mem-cap-gb", type=common.positive_float, default=16.0)
    parser.add_argument("--timeout", type=common.positive_float, default=600,
                        help="seconds per case")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/model_step.json; "
                                      "none with --quick)")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the README section from --out without measuring "
                             "(with --no-readme: print it only)")
    args = parser.parse_args(argv)
    if args.render_only:
        out = args.out or DEFAULT_OUT
        try:
            with open(out) as f:
                record = json.load(f)
            record["table"] = markdown(record)
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"argument --out: cannot read a results record from {out!r}: {error!r}")
        print(record["table"])
        if args.no_readme:
            return 0
        common.write_json(out, record)
        return _write_readme(record["table"])
    out = args.out
    if not out and not args.quick:
        # A subset is not the whole table: results/model_step.json keeps the last full run.
        out = SUBSET_OUT if args.only else DEFAULT_OUT
    if out:
        common.check_output(parser, "--out", out)

    settings = dict(QUICK if args.quick else FULL)
    settings["rounds"] = args.rounds or (1 if args.quick else 2)
    selected = cases(settings, args.only)
    if len(selected) == 1 and args.only:  # the matmul rates alone
        parser.error(f"argument --only: no case matches {args.only!r}")
    started = time.perf_counter()
    record = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "threads": common.THREADS, "settings": settings,
              "quick": args.quick, "only": args.only, "loads": [], "cases": []}
    rounds = []
    for number in range(settings["rounds"]):
        order = list(range(len(selected)))
        if number % 2:
            order.reverse()
        results, loads = run_round(selected, order, int(args.mem_cap_gb * 2**30), args.timeout,
                                   args.lock, f"{number + 1}/{settings['rounds']}")
        rounds.append(results)
        record["loads"].append(loads)
        record["cases"] = [{"case": case, "name": describe(case), "rounds": [r[i] for r in rounds]}
                           for i, case in enumerate(selected)]
        record["total_wall_s"] = time.perf_counter() - started
        record["table"] = markdown(record)
        if out:  # after every round: a run cut short keeps the rounds it finished
            common.write_json(out, record)
    table = record["table"]
    print(table)
    missing = not_installed(record)
    if missing and not (args.quick or args.only or args.no_readme):
        # The README's table is the comparison with the peers: a run without
        # them would replace it with empty columns.
        print(f"README.md untouched: {', '.join(missing)} not installed "
              "(pip install -e \".[bench]\"); --render-only writes this run into it")
    elif not (args.quick or args.only or args.no_readme):
        _write_readme(table)
    failed = [c["name"] for c in record["cases"]
              if any(r["status"] not in ("ok", "skipped") for r in c["rounds"])]
    print(f"total {record['total_wall_s']:.0f} s" + (f"; failed: {failed}" if failed else "")
          + (f"; results in {out}" if out else ""))
    return 1 if failed else 0


def machine():
    """common.machine() and the version of mmaction2 (None when not installed):
    the table's header names it from here."""
    from importlib import metadata

    info = common.machine()
    try:
        info["mmaction2"] = metadata.version("mmaction2")
    except metadata.PackageNotFoundError:
        info["mmaction2"] = None
    return info


def not_installed(record):
    """The implementations a run skipped because they are not installed, sorted."""
    return sorted({c["case"]["impl"] for c in record["cases"] for r in c["rounds"]
                   if r["status"] == "skipped" and "not installed" in r.get("skipped", "")})


def _write_readme(table):
    import run_all

    run_all.rewrite_readme(table, marker="model-step")
    print("README.md: model-step section rewritten")
    return 0


# --- the report ---------------------------------------------------------------

def _values(entry, key):
    """Per-round values of `key` of the ok rounds: "clips_per_s", "gflop_per_clip", or a
    precision for the matmul rate."""
    out = []
    for result in entry["rounds"] if entry else ():
        if result["status"] != "ok":
            continue
        out.append(result["matmul"][key]["gflops"] if key in PRECISIONS else result.get(key))
    return [v for v in out if v is not None]


def summarise(record):
    """{(model, precision): {...}} from the recorded rounds: medians over rounds."""
    entries = {(c["case"].get("model"), c["case"].get("precision"), c["case"]["impl"]): c
               for c in record["cases"]}
    rate = {p: _values(entries.get((None, None, "matmul")), p) for p in PRECISIONS}
    rate = {p: statistics.median(v) if v else None for p, v in rate.items()}
    flops = {}
    for (model, _, impl), entry in entries.items():
        if impl == "ours" and _values(entry, "gflop_per_clip"):
            flops[model] = _values(entry, "gflop_per_clip")[0]
    rows = {}
    for model, (_, _, peer) in MODELS.items():
        for precision in PRECISIONS:
            row = {"peer_name": PEER_NAMES[peer], "gflop_per_clip": flops.get(model), "rate": rate[precision]}
            for impl, key in (("ours", "ours"), (peer, "peer")):
                entry = entries.get((model, precision, impl))
                if entry is None:
                    continue
                values = _values(entry, "clips_per_s")
                status = entry["rounds"][0]["status"] if entry["rounds"] else "not run"
                ok = [r for r in entry["rounds"] if r["status"] == "ok"]
                row[key] = {"clips_per_s": statistics.median(values) if values else None,
                            "nan": any(not r.get("finite_losses", True) for r in ok),
                            "params": next((r["trainable_params"] for r in ok
                                            if "trainable_params" in r), None),
                            "range": (min(values), max(values)) if values else None,
                            "status": status if not values else "ok",
                            "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=None)}
                speed = row[key]["clips_per_s"]
                beside = [(r["clips_per_s"], r["matmul_gflops_beside"]) for r in ok
                          if r.get("matmul_gflops_beside")]
                every_round = bool(beside) and len(beside) == len(values)
                if speed and row["gflop_per_clip"] and (every_round or row["rate"]):
                    row[key]["gflops"] = speed * row["gflop_per_clip"]
                    if every_round:  # each round's speed against the rate beside it
                        row[key]["share"] = statistics.median(
                            c * row["gflop_per_clip"] / g for c, g in beside)
                        row[key]["rate_beside"] = [g for _, g in beside]
                    else:
                        row[key]["share"] = row[key]["gflops"] / row["rate"]
            if "ours" in row or "peer" in row:
                rows[(model, precision)] = row
    return rows, rate


def _speed(cell):
    if not cell:
        return "not run"
    if cell["clips_per_s"] is None:
        return cell["status"]
    low, high = cell["range"]
    spread = f" ({low:.2f}-{high:.2f})" if high - low >= 0.005 else ""
    return f"{cell['clips_per_s']:.2f}{spread}" + (" (NaN loss)" if cell["nan"] else "")


def _rate(cell):
    if not cell or "share" not in cell:
        return "-"
    return f"{cell['gflops']:.0f} ({cell['share']:.0%})"


def bench_pin(package):
    """The version setup.cfg's bench extra pins `package` to with `==`, or None
    (no setup.cfg, no pin, or a range: a range names no one version)."""
    import configparser

    config = configparser.ConfigParser(interpolation=None)
    try:
        config.read(SETUP_CFG)
    except configparser.Error:
        return None
    extra = config.get("options.extras_require", "bench", fallback="")
    for line in extra.splitlines():
        found = re.fullmatch(rf"{re.escape(package)}\s*==\s*([\w.+!]+)", line.strip())
        if found:
            return found.group(1)
    return None


def _mmaction2_version(record):
    """The header's mmaction2: the version the run recorded, else the bench
    extra's exact pin, said as such. Runs before machine() recorded it
    (results/model_step.json of 2026-12-04) measured the extra's mmaction2,
    pinned to 1.2.0 since before the first of them; a run that measured no
    mmaction2 gets no version."""
    machine = record["machine"]
    if "mmaction2" in machine:
        return machine["mmaction2"]
    measured = any(r["status"] == "ok" for c in record["cases"]
                   if c["case"].get("impl") == "mmaction2" for r in c["rounds"])
    pin = bench_pin("mmaction2") if measured else None
    return f"{pin} (the bench extra's pin; not recorded by this run)" if pin else (
        "version not recorded")


def _bfloat16_xla(record):
    """The header's words on how ours ran under bfloat16: with the pointwise XLA
    flags nonlocal-train asks for (recorded from 2026-12-07), with other
    TF_XLA_FLAGS, or, in runs that recorded none, nothing."""
    flags = {r["tf_xla_flags"] for c in record["cases"]
             if c["case"].get("impl") == "ours" and c["case"].get("precision") == "bfloat16"
             for r in c["rounds"] if r["status"] == "ok" and "tf_xla_flags" in r}
    if flags == {cpu.FUSE_POINTWISE_FLAGS}:
        return (" (TensorFlow's pointwise ops compiled by XLA, as `nonlocal-train` asks "
                "for: `nonlocal_keras.cpu.fuse_pointwise_ops`)")
    if flags == {None}:
        return " (TF_XLA_FLAGS unset: no XLA)"
    if flags:
        return f" (TF_XLA_FLAGS: {', '.join(repr(f) for f in sorted(flags, key=str))})"
    return ""


def markdown(record):
    rows, rate = summarise(record)
    m, s = record["machine"], record["settings"]
    loads = "; ".join(f"{b[0]:.1f} / {a[0]:.1f}" for b, a in record["loads"])
    rates = ", ".join(f"{p} {rate[p]:.0f} GFLOP/s" for p in PRECISIONS if rate[p])
    beside = {p: [g for (_, precision), row in rows.items() if precision == p
                  for g in row.get("ours", {}).get("rate_beside", ())] for p in PRECISIONS}
    beside = "; ".join(f"{p} {min(v):.0f}-{max(v):.0f}" for p, v in beside.items() if v)
    lines = [
        f"Measured by `python benchmarks/model_step.py` on {record['started']}: "
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count')} cores (avx512f: {m.get('avx512f')}, "
        f"avx512_bf16: {m.get('avx512_bf16')}, amx_bf16: {m.get('amx_bf16')}); "
        f"TF_ENABLE_ONEDNN_OPTS={m.get('TF_ENABLE_ONEDNN_OPTS')}; {record['threads']} threads; "
        f"TensorFlow {m.get('tensorflow')}, Keras {m.get('keras')}, torch {m.get('torch')}, "
        f"pytorchvideo {m.get('pytorchvideo')}, "
        f"mmaction2 {_mmaction2_version(record)}, mmcv-lite {m.get('mmcv-lite')}. "
        f"Load average (1 min) before / after each round: {loads}. "
        f"`tf.matmul` {s['matmul']}x{s['matmul']} (median over rounds): {rates}.",
        "",
        f"Training step (forward, backward, SGD with momentum 0.9) on a batch of {s['batch']} "
        f"clips of {s['frames']}x{s['size']}x{s['size']}, {s['classes']} classes: clips/s, "
        f"median over {s['rounds']} round(s) (min-max in brackets) of each case's median of "
        f"{s['repeats']} steps after {s['warmup']} warm-up steps, every case a fresh process, "
        "the order reversed every other round. bfloat16: Keras `mixed_bfloat16` for ours"
        f"{_bfloat16_xla(record)}, "
        "`torch.autocast(\"cpu\", torch.bfloat16)` for the peers. GFLOP per clip: our analytic "
        "count (`model_step.step_flops`: convolutions, the classifier and the non-local blocks' "
        "products in the plain order, fwd+bwd = 3 x fwd less conv1's input gradient), the same "
        "for ours and the peer; GFLOP/s = that x clips/s, and its share of the matmul rate of "
        "the same precision"
        + (": ours' of the rate its own process measured right before and after its steps "
           "(their mean; the median "
           f"over rounds of each round's share; those rates, GFLOP/s: {beside}), the peer's of "
           "the round's rate above" if beside else "")
        + ". \"NaN loss\": the loss of that case became NaN during its steps "
        f"(learning rate {LEARNING_RATE:g} on one random batch; the losses are in the JSON).",
        "",
        "| model | precision | ours clips/s | peer | peer clips/s | ours/peer | GFLOP per clip "
        "| ours GFLOP/s (share) | peer GFLOP/s (share) | peak RSS MB ours / peer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, precision), row in rows.items():
        ours, peer = row.get("ours"), row.get("peer")
        ratio = "-"
        if ours and peer and ours["clips_per_s"] and peer["clips_per_s"]:
            ratio = f"{ours['clips_per_s'] / peer['clips_per_s']:.2f}x"
        flops = f"{row['gflop_per_clip']:.1f}" if row["gflop_per_clip"] else "-"
        rss = " / ".join(f"{c['peak_rss_mb']:,.0f}" if c and c["peak_rss_mb"] else "-"
                         for c in (ours, peer))
        lines.append(f"| {model} | {precision} | {_speed(ours)} | {row['peer_name']} | "
                     f"{_speed(peer)} | {ratio} | {flops} | {_rate(ours)} | {_rate(peer)} | {rss} |")
    params = [f"{model} {row['ours']['params']:,} / {row['peer']['params']:,}"
              for (model, precision), row in rows.items() if precision == "float32"
              and row.get("ours", {}).get("params") and row.get("peer", {}).get("params")]
    if params:
        lines += ["", "Trainable parameters, ours / peer: " + "; ".join(params) + "."]
    nan = {p: [key for (_, precision), row in rows.items() if precision == p
               for key in ("ours", "peer") if row.get(key, {}).get("nan")] for p in PRECISIONS}
    if any(nan.values()):
        counts = "; ".join(f"{p}: ours in {v.count('ours')}, the peers in {v.count('peer')} of "
                           f"{len(MODELS)} models" for p, v in nan.items())
        lines += ["", f"The loss became NaN in some round ({counts}); such a step is timed "
                  "like any other."]
    lines += ["", "Goal of issue 15 (ours: >= 65% of the float32 matmul rate, >= 55% of the "
              "bfloat16 rate), judged from the figures above:", "",
              "| model | float32 share | bfloat16 share | verdict |", "|---|---|---|---|"]
    for model in MODELS:
        shares = {p: rows.get((model, p), {}).get("ours", {}).get("share") for p in PRECISIONS}
        if all(v is None for v in shares.values()):
            continue
        cells = [f"{shares[p]:.0%}" if shares[p] is not None else "not measured"
                 for p in PRECISIONS]
        if any(shares[p] is not None and shares[p] < GOALS[p] for p in PRECISIONS):
            verdict = "missed"
        else:
            verdict = "met" if None not in shares.values() else "not judged (a precision is missing)"
        lines.append(f"| {model} | {cells[0]} | {cells[1]} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        run_worker(json.loads(sys.argv[1]))  # one case, from run_all.run_case
    else:
        common.run_cli(main)
