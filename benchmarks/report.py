"""Turns the recorded cases into the README table and the goal check.

    .venv/bin/python benchmarks/report.py                      # results/latest.json
    .venv/bin/python benchmarks/report.py RECORD --out table.md

Prints the markdown that run_all.py writes into the README between
<!-- benchmarks:start/end --> (the table and the goals of issues 5 and 15,
judged from the recorded figures only) from a results record of run_all.py,
or writes it to --out; it measures nothing and leaves the README alone
(`run_all.py --render-only` rewrites it).
"""

import argparse
import os

import common

DEFAULT_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                              "latest.json")

PEERS = {"mmcv": "mmcv `NonLocal3d`", "pytorchvideo": "PyTorchVideo `NonLocal`"}
# How our block is run: eagerly, as a tf.function without XLA (what model.fit
# runs on a CPU, where Keras turns jit_compile="auto" off), and with XLA.
COMPILE_NAMES = {"eager": "eager", "graph": "tf.function", "xla": "XLA"}


def describe(case):
    kind = case["kind"]
    if kind == "matmul":
        return f"matmul {case['size']}^2 {case['dtype']} {'XLA' if case.get('jit') else 'eager'}"
    if kind == "matmuls_only":
        return (f"{case['shape']} the block's matmuls alone, "
                f"{case.get('precision', 'float32')} tf.function fwdbwd")
    if kind == "overhead":
        return (f"{case['shape']} overhead: tf.function block vs its matmuls alone, "
                f"{case.get('precision', 'float32')}, alternating, fwdbwd")
    if kind == "model":
        name = "NL-C2D" if case.get("nonlocal_blocks") else "C2D"
        return (f"{name} R50 train step, batch {case['batch']}, "
                f"{case['frames']}x{case['size']}x{case['size']}")
    passes = "+".join(case["passes"])
    if kind in PEERS:
        return f"{case['shape']} {kind} float32 {passes}"
    chunk = case.get("chunk_size", "auto")
    mode = COMPILE_NAMES[case.get("compile", "eager")]
    return (f"{case['shape']} nonlocal-keras {case.get('precision', 'float32')} {mode} "
            f"chunk_size={chunk} {passes}")


def summary(result):
    if result["status"] != "ok":
        return result.get("message") or result.get("skipped") or result["status"]
    parts = [f"{k} {v['median_s'] * 1e3:.1f} ms" for k, v in result.items()
             if isinstance(v, dict) and "median_s" in v]
    return ", ".join(parts) + f", peak RSS {result['peak_rss_mb']:.0f} MB"


def _get(record, **match):
    # Unnamed keys must hold their defaults (float32, eager, chunk_size="auto").
    match = {**_DEFAULTS, **match}
    for entry in record["cases"]:
        case = entry["case"]
        if all(case.get(k, _DEFAULTS.get(k)) == v for k, v in match.items()):
            return entry["result"]
    return None


_DEFAULTS = {"precision": "float32", "compile": "eager", "chunk_size": "auto"}


def _ms(result, key):
    if result is None:
        return "not run"
    if result["status"] != "ok":
        return result.get("message") or result.get("skipped") or result["status"]
    if key not in result:
        return "-"
    return f"{result[key]['median_s'] * 1e3:,.0f}"


def _median(result, key):
    if result and result["status"] == "ok" and key in result:
        return result[key]["median_s"]
    return None


def _rate(record, dtype):
    """The machine's matmul rate: the fastest run, eager or XLA, the best it
    showed (a median taken while other processes share the cores would
    understate it and flatter every share computed against it)."""
    rates = []
    for jit in (False, True):
        result = _get(record, kind="matmul", dtype=dtype, jit=jit)
        if result and result["status"] == "ok":
            m = result["matmul"]
            rates.append(m["gflops"] * m["median_s"] / m["min_s"])
    return max(rates, default=None)


def _block_rows(record, shape, rate):
    flops = common.block_flops(shape)
    peers = {p: _median(_get(record, kind=p, shape=shape), "fwdbwd") for p in PEERS}
    rows = []
    for precision in ("float32", "mixed_bfloat16"):
        for compile_, mode in COMPILE_NAMES.items():
            rows += _our_row(record, shape, precision, compile_, mode, peers, rate)
    for peer, label in PEERS.items():
        result = _get(record, kind=peer, shape=shape)
        t = _median(result, "fwdbwd")
        share = f"{3 * flops / t / 1e9 / rate:.0%}" if t and rate else "-"
        rows.append([shape, label, "float32", _ms(result, "fwd"), _ms(result, "fwdbwd"),
                     _rss(result), "", "", share])
    return rows


def _our_row(record, shape, precision, compile_, mode, peers, rate):
    result = _get(record, kind="keras", shape=shape, precision=precision, compile=compile_)
    if result is None:
        return []
    t = _median(result, "fwdbwd")
    ratios = [f"{t / peers[p]:.2f}" if t and peers[p] else "-" for p in PEERS]
    flops = common.block_flops(shape, precision=precision)
    if precision != "float32":
        rate = _rate(record, "bfloat16")
    share = f"{3 * flops / t / 1e9 / rate:.0%}" if t and rate else "-"
    return [[shape, f"nonlocal-keras, {mode}", precision, _ms(result, "fwd"),
             _ms(result, "fwdbwd"), _rss(result), *ratios, share]]


def _rss(result):
    if result and result["status"] == "ok":
        return f"{result['peak_rss_mb']:,.0f}"
    return "-"


def _res2_rows(record):
    rows = []
    for chunk, name in (("auto", "nonlocal-keras, eager, chunked (chunk_size='auto')"),
                        (None, "nonlocal-keras, eager, plain (chunk_size=None)")):
        result = _get(record, kind="keras", shape="res2", chunk_size=chunk)
        if result is not None:
            rows.append(["res2", name, "float32", _ms(result, "fwd"), _ms(result, "fwdbwd"),
                         _rss(result), "", "", ""])
    for peer, label in PEERS.items():
        result = _get(record, kind=peer, shape="res2")
        if result is not None:
            rows.append(["res2", label, "float32", _ms(result, "fwd"), _ms(result, "fwdbwd"),
                         _rss(result), "", "", ""])
    return rows


def _long_rows(record):
    rows = []
    chunked_f = _get(record, kind="keras", shape="long_clip", passes=["fwd"])
    chunked_b = _get(record, kind="keras", shape="long_clip", passes=["fwdbwd"])
    naive = _get(record, kind="keras", shape="long_clip", chunk_size=None)
    rows.append(["long_clip", "nonlocal-keras, eager, chunked (chunk_size='auto')",
                 "float32", _ms(chunked_f, "fwd"), _ms(chunked_b, "fwdbwd"),
                 f"{_rss(chunked_f)} / {_rss(chunked_b)}", "", "", ""])
    rows.append(["long_clip", "nonlocal-keras, eager, plain (chunk_size=None)", "float32",
                 _ms(naive, "fwd"), "not run", _rss(naive), "", "", ""])
    for peer, label in PEERS.items():
        result = _get(record, kind=peer, shape="long_clip")
        rows.append(["long_clip", label, "float32", _ms(result, "fwd"), "not run",
                     _rss(result), "", "", ""])
    return rows


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goals(record):
    """(goal, measured, verdict) rows, computed from the record only."""
    rate = _rate(record, "float32")
    out = []
    for shape in ("res4", "res3"):
        peers = {p: _median(_get(record, kind=p, shape=shape), "fwdbwd") for p in PEERS}
        faster_peer = min((t for t in peers.values() if t), default=None)
        speedups, shares, bf16 = {}, {}, {}
        ours = common.block_flops(shape, precision="float32")
        for compile_, mode in COMPILE_NAMES.items():
            t = _median(_get(record, kind="keras", shape=shape, compile=compile_), "fwdbwd")
            t16 = _median(_get(record, kind="keras", shape=shape, compile=compile_,
                               precision="mixed_bfloat16"), "fwdbwd")
            if t and faster_peer:
                speedups[mode] = faster_peer / t
            if t and rate:
                shares[mode] = 3 * ours / t / 1e9 / rate
            if t and t16:
                bf16[mode] = t / t16
        measured = ", ".join(f"{m} {s:.2f}x" for m, s in speedups.items()) or "no data"
        if faster_peer and rate:
            # How close to the matmul rate 1.5x over the faster peer takes,
            # with the multiply-adds this package does at this shape.
            needed = 1.5 * 3 * ours / faster_peer / 1e9 / rate
            measured += (f" (1.5x takes {needed:.0%} of the matmul rate on this shape's "
                         f"{3 * ours / 1e9:.1f} GFLOP)")
        out.append((f"{shape}: fwd+bwd >= 1.5x faster than the faster peer (float32)",
                    measured, _verdict({m: s >= 1.5 for m, s in speedups.items()})))
        measured = ", ".join(f"{m} {s:.0%}" for m, s in shares.items()) or "no data"
        alone = _median(_get(record, kind="matmuls_only", shape=shape), "fwdbwd")
        if alone and rate:
            measured += (f" (the block's matmuls alone, without softmax, pooling, BN and "
                         f"biases: {3 * ours / alone / 1e9 / rate:.0%}, {alone * 1e3:.0f} ms)")
        out.append((f"{shape}: fwd+bwd >= 90% of the float32 matmul rate", measured,
                    _verdict({m: s >= 0.9 for m, s in shares.items()})))
        out.append((f"{shape}: mixed_bfloat16 fwd+bwd faster than float32",
                    ", ".join(f"{m} {s:.2f}x" for m, s in bf16.items()) or "no data",
                    _verdict({m: s > 1.0 for m, s in bf16.items()})))
    out += [_overhead_goal(record, shape, precision) for shape in ("res4", "res3")
            for precision in ("float32", "mixed_bfloat16")]
    out.append(_res2_memory(record))
    out.append(_memory_goal(record))
    return out


def _overhead_goal(record, shape, precision):
    """Issue 15, item 3: the block as a tf.function against its own products
    (`matmuls_only`, same order and dtypes), fwd+bwd. Judged on the paired
    `overhead` case (both timed alternately in one process) when there is
    one, else on the two separate cases."""
    goal = (f"{shape}: {precision} tf.function fwd+bwd <= 1.10 x the block's matmuls "
            "alone (issue 15)")
    paired = _get(record, kind="overhead", shape=shape, precision=precision)
    if paired and paired["status"] == "ok":
        r = paired["ratio"]
        measured = (f"{paired['block']['median_s'] * 1e3:.1f} / "
                    f"{paired['matmuls']['median_s'] * 1e3:.1f} ms (medians, alternating in "
                    f"one process); per-pair ratio median {r['median']:.3f} "
                    f"(range {r['min']:.2f}-{r['max']:.2f})")
        return goal, measured, "met" if r["median"] <= 1.10 else "missed"
    block = _median(_get(record, kind="keras", shape=shape, precision=precision,
                         compile="graph"), "fwdbwd")
    alone = _median(_get(record, kind="matmuls_only", shape=shape, precision=precision),
                    "fwdbwd")
    if not (block and alone):
        return goal, "no data", "not measured"
    ratio = block / alone
    measured = f"{block * 1e3:.1f} / {alone * 1e3:.1f} ms = {ratio:.3f}"
    return goal, measured, "met" if ratio <= 1.10 else "missed"


def _res2_memory(record):
    goal = "res2 (plain path fits): chunked peak < 1/4 of the plain path's, fwd+bwd"
    chunked = _get(record, kind="keras", shape="res2")
    plain = _get(record, kind="keras", shape="res2", chunk_size=None)
    if not (chunked and plain and chunked["status"] == plain["status"] == "ok"):
        return goal, "no data", "not measured"
    a, b = chunked["peak_rss_mb"], plain["peak_rss_mb"]
    base = chunked.get("rss_before_mb") or 0
    measured = (f"process peak {a:,.0f} vs {b:,.0f} MB ({a / b:.2f}); above the "
                f"{base:,.0f} MB before the first call: {a - base:,.0f} vs "
                f"{b - base:,.0f} MB ({(a - base) / max(b - base, 1):.2f})")
    if a < b / 4:
        return goal, measured, "met"
    if a - base < (b - base) / 4:
        return goal, measured, "met above the framework's baseline only"
    return goal, measured, "missed"


def _memory_goal(record):
    goal = "long_clip: peak memory < 1/4 of the plain path's"
    chunked = [_get(record, kind="keras", shape="long_clip", passes=[p]) for p in ("fwd", "fwdbwd")]
    naive = _get(record, kind="keras", shape="long_clip", chunk_size=None)
    peaks = [r["peak_rss_mb"] for r in chunked if r and r["status"] == "ok"]
    if not peaks or naive is None:
        return goal, "no data", "not measured"
    peak = max(peaks)
    analytic = common.naive_affinity_bytes("long_clip") / 2**20
    if naive["status"] == "ok":
        bound, how = naive["peak_rss_mb"], "measured"
    elif naive["status"] == "oom":
        bound, how = record["mem_cap_gb"] * 1024, f"out of memory at the {record['mem_cap_gb']:g} GB cap"
    else:
        return goal, f"chunked {peak:,.0f} MB; plain: {naive['status']}", "not measured"
    measured = (f"chunked peak {peak:,.0f} MB (fwd+bwd); plain: {how}; its logits and "
                f"softmax alone are {analytic:,.0f} MB")
    if peak < bound / 4:
        return goal, measured, "met"
    if peak < analytic / 4:
        return goal, measured, "met against the analytic size only"
    return goal, measured, "missed"


def _verdict(flags):
    """flags: {how it was run: goal met?}."""
    if not flags:
        return "not measured"
    met = [mode for mode, ok in flags.items() if ok]
    if len(met) == len(flags):
        return "met"
    if not met:
        return "missed"
    return f"met with {', '.join(met)} only"


def _merged_lines(record):
    """One sentence per partial rerun merged into the record (run_all.py --merge)."""
    lines = []
    for run in record.get("merged", []):
        lines.append(
            f"Rerun on {run['started']} with `run_all.py --only '{run['only']}' --merge` "
            f"({run['cases']} cases, lowest median of {run['rounds']} round(s); load average "
            f"before/after {run['load_average_before'][0]:.1f} / "
            f"{run['load_average_after'][0]:.1f}): the rows and goals of those cases "
            "come from that run, the others from the run above.")
    return [" ".join(lines)] if lines else []


def markdown(record):
    m = record["machine"]
    rate, rate16 = _rate(record, "float32"), _rate(record, "bfloat16")
    fmt = lambda r: f"{r:.0f} GFLOP/s" if r else "not measured"  # noqa: E731
    lines = [
        f"Measured by `python benchmarks/run_all.py` on {record['started']}: "
        f"{m.get('cpu_model', '?')}, {m['cpu_count']} cores "
        f"(avx512_bf16: {m.get('avx512_bf16')}), {m.get('memory_gb')} GB; "
        f"{record['threads']} threads (TF intra/inter-op, torch); TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}, torch {m['torch']}, mmcv-lite {m['mmcv-lite']}, "
        f"pytorchvideo {m['pytorchvideo']}. Load average before/after: "
        f"{record['load_average_before'][0]:.1f} / {record['load_average_after'][0]:.1f} "
        "(other processes on these cores make every figure slower and noisier). "
        f"Batch {record['batch']}, median of repeated runs after warm-up "
        f"(lowest median of {record.get('rounds', 1)} round(s)) "
        "(benchmarks/results/latest.json has the counts). "
        f"`tf.matmul` 4096x4096 (fastest run, eager or XLA): float32 {fmt(rate)}, bfloat16 {fmt(rate16)}.",
        *_merged_lines(record),
        "",
        "Non-local block (embedded Gaussian, scaled, BN; res4 1024 ch 8x14x14, "
        "res3 512 ch 8x28x28, res2 256 ch 8x56x56, long clip 256 ch 32x56x56; inner = C/2, "
        "pool 1x2x2). `chunk_size='auto'` (the default) chunks res2 and the long clip only. "
        "Times in ms; fwd = inference, fwd+bwd = training forward and all gradients. "
        "Ours run eagerly, as a `tf.function` without XLA (what `model.fit` runs on a CPU: "
        "Keras turns `jit_compile='auto'` off there) and with XLA. "
        "Ratios are fwd+bwd times ours/peer (below 1: ours faster; peers in float32). "
        "Share = the implementation's analytic matmul FLOPs (fwd+bwd = 3 x fwd) / time / "
        "matmul rate (bfloat16's for mixed_bfloat16, float32's otherwise); at res4 this package does "
        f"{common.block_flops('res4', precision='float32') / common.block_flops('res4'):.0%} "
        "of the peers' FLOPs in float32 (the block's two ends reassociated, "
        "`nonlocal_math.reassociates`), and the table counts what each one does. "
        "Peak = ru_maxrss of the case's own process (includes the framework, ~0.3-0.9 GB).",
        "",
    ]
    header = ["shape", "implementation", "precision", "fwd", "fwd+bwd", "peak RSS MB",
              "ours/mmcv", "ours/PyTorchVideo", "share of matmul rate"]
    rows = _block_rows(record, "res4", rate) + _block_rows(record, "res3", rate)
    rows += _res2_rows(record) + _long_rows(record)
    lines += [_table(header, rows), ""]
    lines += ["Goals of issues 5 and 15 (item 3), judged from the figures above:", "",
              _table(["goal", "measured", "verdict"], goals(record)), ""]
    for blocks, name in ((5, "NL-C2D ResNet-50 (5 non-local blocks)"), (0, "C2D ResNet-50")):
        model = _get(record, kind="model", nonlocal_blocks=blocks)
        case = next((e["case"] for e in record["cases"] if e["case"]["kind"] == "model"),
                    {"batch": 2, "frames": 8, "size": 112})
        if model is None:
            text = "not run"
        elif model["status"] == "ok":
            step = model["train_step"]
            text = (f"{step['clips_per_s']:.2f} clips/s ({step['median_s'] * 1e3:,.0f} ms a "
                    f"step, peak RSS {model['peak_rss_mb']:,.0f} MB)")
        else:
            text = model.get("skipped") or model.get("message") or model["status"]
        lines.append(f"- Whole model, {name}: train step, batch {case['batch']}, "
                     f"{case['frames']}x{case['size']}x{case['size']}, float32, SGD, "
                     f"`train_on_batch` (graph mode): {text}.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 when the markdown was printed or written, 2 for a usage error "
               "(a record it cannot read or render, an --out it cannot write), 130 on Ctrl-C.")
    parser.add_argument("record", nargs="?", default=DEFAULT_RECORD, metavar="RECORD",
                        help="results JSON of run_all.py (default benchmarks/results/latest.json)")
    parser.add_argument("--out", help="write the markdown to this file instead of printing it")
    args = parser.parse_args(argv)
    if args.out:
        common.check_output(parser, "--out", args.out)
    table = _render(parser, args.record)
    if args.out:
        common.write_text(args.out, table + "\n")
    else:
        print(table)
    return 0


def _render(parser, path):
    """markdown() of the record at `path`, or a usage error naming RECORD."""
    import run_all  # reads a record as run_all.py --render-only does (it imports this module)

    record = run_all.read_record(parser, "RECORD", path)
    try:
        return markdown(record)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        # A record of another script (model_step.py's, loader.py's) or a cut one.
        parser.error(f"argument RECORD: {path!r} is not a record of run_all.py: {error!r}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # markdown() loads TensorFlow's Keras
    common.run_cli(main)
