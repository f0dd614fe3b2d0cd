"""Rerun every benchmark, write benchmarks/results/latest.json and the README table.

    .venv/bin/python benchmarks/run_all.py [--quick] [--rounds N] [--mem-cap-gb 8]
        [--only REGEX [--merge]] [--no-readme] [--render-only]

Each case runs in a fresh process (benchmarks/worker.py) capped with
RLIMIT_AS, so its peak RSS is its own and an out-of-memory case (the naive
long clip) is recorded as such instead of taking the machine down. Everything
runs on 2 threads (TF intra/inter-op and torch). The PyTorch peers (mmcv's
NonLocal3d, PyTorchVideo's NonLocal: `pip install nonlocal-keras[bench]`) are
measured in the same run, so each ratio compares figures taken minutes apart
on the same machine; the load average before and after is recorded because
the figures are only as quiet as the machine was.

`--only REGEX --merge` reruns the matching cases only and puts them into the
existing --output record in place of their earlier figures (the README then
says which rows were rerun when, and under what load), so that a change to
one part is measured without rerunning hours of unrelated cases. `--only`
without --merge leaves latest.json to the last full run: the subset goes to
--output if given, else to a file of its own in the temporary folder.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import util

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import report  # noqa: E402

ROOT = os.path.dirname(HERE)
OOM_PATTERNS = ("out of memory", "OOM", "ResourceExhausted", "can't allocate memory",
                "bad_alloc", "MemoryError", "Cannot allocate memory")


COMPILE_MODES = ("eager", "graph", "xla")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "latest.json")
SUBSET_OUTPUT = os.path.join(tempfile.gettempdir(), "nonlocal_bench_run_all_subset.json")


def cases(quick):
    rep = {"res4": 7, "res3": 5} if not quick else {"res4": 3, "res3": 2}
    warm = 2 if not quick else 1
    mm = {"kind": "matmul", "size": 4096, "warmup": 1, "repeats": 2 if quick else 3}
    out = [dict(mm, dtype=dtype, jit=jit) for dtype in ("float32", "bfloat16")
           for jit in (False, True)]
    both = ["fwd", "fwdbwd"]
    for shape in ("res4", "res3"):
        base = {"shape": shape, "passes": both, "warmup": warm, "repeats": rep[shape]}
        for precision in ("float32", "mixed_bfloat16"):
            for compile_ in COMPILE_MODES:
                out.append(dict(base, kind="keras", precision=precision, compile=compile_))
        out += [dict(base, kind=peer) for peer in ("mmcv", "pytorchvideo")]
        out += [{"kind": "matmuls_only", "shape": shape, "precision": precision,
                 "passes": ["fwdbwd"], "warmup": warm, "repeats": rep[shape]}
                for precision in ("float32", "mixed_bfloat16")]
        # Issue 15's overhead goal: block and matmuls alternately in one process.
        out += [{"kind": "overhead", "shape": shape, "precision": precision,
                 "warmup": warm, "repeats": 2 * rep[shape]}
                for precision in ("float32", "mixed_bfloat16")]
    # res2: chunked ("auto") and plain, both measured; the peers alongside.
    res2 = {"shape": "res2", "passes": both, "warmup": 1, "repeats": 1 if quick else 2}
    out.append(dict(res2, kind="keras", precision="float32"))
    out.append(dict(res2, kind="keras", precision="float32", chunk_size=None))
    out += [dict(res2, kind=peer) for peer in ("mmcv", "pytorchvideo")]
    # The long clip: forward and forward+backward in separate processes (each
    # has its own peak memory), one warm-up forward, few repeats (~10 s each).
    long = {"shape": "long_clip", "warmup": 1, "repeats": 1 if quick else 2}
    out.append(dict(long, kind="keras", precision="float32", passes=["fwd"]))
    out.append(dict(long, kind="keras", precision="float32", passes=["fwdbwd"],
                    warmup=0, repeats=1))
    out.append(dict(long, kind="keras", precision="float32", passes=["fwd"],
                    chunk_size=None, warmup=0, repeats=1, label="naive"))
    out += [dict(long, kind=peer, passes=["fwd"], warmup=0, repeats=1)
            for peer in ("mmcv", "pytorchvideo")]
    for blocks in (5, 0):  # NL-C2D and, for the cost of the blocks, plain C2D
        out.append({"kind": "model", "batch": 2, "frames": 8, "size": 112,
                    "nonlocal_blocks": blocks, "warmup": 2, "repeats": 3 if quick else 5})
    return out


def peers_installed():
    return {"mmcv": util.find_spec("mmcv") is not None,
            "pytorchvideo": util.find_spec("pytorchvideo") is not None}


def run_case(case, cap_bytes, timeout, script=os.path.join(HERE, "worker.py")):
    """Runs `script '<case json>'` capped at `cap_bytes` of address space and
    returns the dict of its `RESULT ` line, or what went wrong."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, script, json.dumps(case)],
            capture_output=True, text=True, timeout=timeout, preexec_fn=limit, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout}
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["status"] = "skipped" if "skipped" in result else "ok"
            result["process_wall_s"] = wall
            return result
    text = proc.stdout + proc.stderr
    cap_gb = cap_bytes / 2**30
    if proc.returncode != 0 and (proc.returncode < 0 or any(p in text for p in OOM_PATTERNS)):
        return {"status": "oom", "message": f"out of memory (>{cap_gb:g} GB cap)",
                "returncode": proc.returncode, "tail": text[-600:]}
    return {"status": "error", "returncode": proc.returncode, "tail": text[-1500:]}


def merge(best, new):
    """Keep each pass's lowest median over rounds, and the highest peak RSS."""
    if best is None or best["status"] != "ok":
        return new if best is None or new["status"] == "ok" else best
    if new["status"] != "ok":
        return best
    merged = dict(best)
    for key, value in new.items():
        if isinstance(value, dict) and "median_s" in value and key in best:
            if value["median_s"] < best[key]["median_s"]:
                merged[key] = value
    merged["peak_rss_mb"] = max(best["peak_rss_mb"], new["peak_rss_mb"])
    return merged


def merge_into(record, partial, only):
    """`record` with `partial`'s cases in place of the same cases (same
    description) there; the partial run is listed under "merged"."""
    record = dict(record)
    fresh = {entry["name"]: entry for entry in partial["cases"]}
    record["cases"] = [fresh.pop(entry["name"], entry) for entry in record["cases"]]
    record["cases"] += list(fresh.values())
    record["merged"] = list(record.get("merged", [])) + [
        {"only": only, "started": partial["started"], "rounds": partial["rounds"],
         "total_wall_s": partial["total_wall_s"],
         "cases": len(partial["cases"]), "machine": partial["machine"],
         "load_average_before": partial["load_average_before"],
         "load_average_after": partial["load_average_after"]}]
    return record


def read_record(parser, option, path):
    """The results record at `path`, or a usage error naming `option`."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        parser.error(f"argument {option}: cannot read a results record from {path!r}: {error}")
    if not isinstance(record, dict) or not isinstance(record.get("cases"), list):
        parser.error(f"argument {option}: {path!r} is not a results record (no \"cases\" list)")
    return record


def rewrite_readme(table, path=os.path.join(ROOT, "README.md"), marker="benchmarks"):
    with open(path) as f:
        text = f.read()
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {marker}:start/end --> markers")
    text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    common.write_text(path, text)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0 when every case produced a result (or was skipped "
               "with some other case measured), 1 when no case did (every one a timeout, "
               "out of memory, an error or skipped: nothing is written then), 2 for a "
               "usage error (found before any measuring), 130 on Ctrl-C.")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--mem-cap-gb", type=common.positive_float, default=8.0,
                        help="RLIMIT_AS of each case's process (default 8)")
    parser.add_argument("--timeout", type=common.positive_float, default=420,
                        help="seconds per case")
    parser.add_argument("--only", type=common.regex, default=None,
                        help="regex on the case description; without --merge or --output the "
                             "results go to a file of their own in the temporary folder, not "
                             "to results/latest.json")
    parser.add_argument("--rounds", type=common.positive_int, default=1,
                        help="run every case this many times, in turn, and keep each "
                             "pass's lowest median (the same rule for ours and the peers: "
                             "less sensitive to other processes on the cores)")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace the matching cases in --output's record "
                             "and rewrite the README from the merged record")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--output", default=None,
                        help=f"results JSON (default {os.path.relpath(DEFAULT_OUTPUT, ROOT)})")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the README table from --output without measuring "
                             "(with --no-readme: print it only)")
    args = parser.parse_args(argv)
    output = args.output or DEFAULT_OUTPUT
    if args.render_only:
        table = report.markdown(read_record(parser, "--output", output))
        if not args.no_readme:
            rewrite_readme(table)
        print(table)
        return 0
    if args.merge and not args.only:
        parser.error("argument --merge: needs --only (the cases to rerun)")
    if args.merge:
        read_record(parser, "--output", output)  # before the measuring, not after it
    elif args.only and not args.output:
        # A subset is not the whole record: results/latest.json keeps the last full run.
        output = SUBSET_OUTPUT
    common.check_output(parser, "--output", output)
    selected = [c for c in cases(args.quick)
                if not args.only or re.search(args.only, report.describe(c))]
    if not selected:
        parser.error(f"argument --only: no case matches {args.only!r}")

    installed = peers_installed()
    started = time.perf_counter()
    record = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": common.machine(), "threads": common.THREADS, "batch": common.BATCH,
              "mem_cap_gb": args.mem_cap_gb, "load_average_before": os.getloadavg(),
              "shapes": {k: {"channels": v[0], "positions": v[1], "inner": v[2], "pool": v[3],
                             "flops_fwd": common.block_flops(k),
                             "naive_affinity_bytes": common.naive_affinity_bytes(k)}
                         for k, v in common.SHAPES.items()},
              "cases": []}
    results = [None] * len(selected)
    for round_ in range(args.rounds):
        for i, case in enumerate(selected):
            name = report.describe(case)
            if case["kind"] in installed and not installed[case["kind"]]:
                result = {"status": "skipped", "skipped": f"{case['kind']} is not installed"}
            else:
                result = run_case(case, int(args.mem_cap_gb * 2**30), args.timeout)
            print(f"[{round_ + 1}/{args.rounds}] {name}: {report.summary(result)}", flush=True)
            results[i] = merge(results[i], result)
    record["rounds"] = args.rounds
    record["cases"] = [{"case": c, "name": report.describe(c), "result": r}
                       for c, r in zip(selected, results)]
    record["load_average_after"] = os.getloadavg()
    record["total_wall_s"] = time.perf_counter() - started
    wall = record["total_wall_s"]
    if not any(r["status"] == "ok" for r in results):
        # Writing this would replace measured figures with none.
        print(f"no case produced a result ({', '.join(sorted({r['status'] for r in results}))}); "
              f"{output} untouched", file=sys.stderr)
        return 1
    if args.merge:
        # Read again: the record may have changed during the measuring (another merge).
        record = merge_into(read_record(parser, "--output", output), record, args.only)
    common.write_json(output, record)
    table = report.markdown(record)
    print(table)
    if not args.no_readme and (args.merge or not args.only):
        rewrite_readme(table)
        print("README.md: benchmark table rewritten")
    print(f"total {wall:.0f} s; results in {output}"
          + (" (a subset: --merge puts it into the full record)" if output == SUBSET_OUTPUT else ""))
    return 0


if __name__ == "__main__":
    common.run_cli(main)
