"""Training clips/s delivered by video loaders, side by side (issue 15).

    .venv/bin/python benchmarks/loader.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/loader.py --quick    # tiny videos and clips (the tests)

Writes (once, cached in `--videos`) 24 H.264 MP4s of 10 s at 30 fps, 340x256
like Kinetics, with PyAV, then measures how many training clips a second each
loader delivers for two clip settings, "32 frames every 2" and "8 frames
every 8": one random clip per video, shorter side scaled to a random integer
in [256, 320], a random 224 crop, a random horizontal flip, normalisation,
batches of 8, 2 workers or threads each. Every measurement runs in a fresh
process; rounds alternate the loaders, and the table holds the medians.

Loaders: `ours` (`nonlocal_keras.training.data.train_dataset`, tf.data +
PyAV), and, where installed (`pip install -e ".[bench]"`), `decord` and
`torchcodec` (each in a PyTorch DataLoader with 2 worker processes, one
decoding thread each, the augmentation in torch) and `torch_pyav` (the same
DataLoader decoding with PyAV as PyTorchVideo does: from the keyframe before
the clip to its last frame). A loader that is not installed is reported as
skipped. Results: `benchmarks/results/loader.json` (not with `--quick`).
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
# Appended: a peer's environment (--python) has no nonlocal_keras installed, and
# common needs only its TensorFlow-free `cpu` module; an installed one still wins.
sys.path.append(ROOT)
import common  # noqa: E402
LOADERS = ("ours", "decord", "torchcodec", "torch_pyav")
# The module each loader needs beyond this package.
NEEDS = {"ours": "tensorflow", "decord": "decord", "torchcodec": "torchcodec", "torch_pyav": "torch"}
CLIPS = {"32x2": (32, 2), "8x8": (8, 8)}
FULL = dict(videos=24, seconds=10, fps=30, width=340, height=256, crop=224, scale=(256, 320),
            batch=8, batches=8, warmup=2, rounds=3)
QUICK = dict(videos=3, seconds=1, fps=30, width=64, height=48, crop=32, scale=(36, 40),
             batch=2, batches=2, warmup=1, rounds=1)
WORKERS = 2


# --- the videos -------------------------------------------------------------

def _frame(t, width, height, phase):
    """A moving, textured picture: costs the decoder what a real frame does."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = 127 + 120 * np.sin((x + 3 * t) / 17.0 + phase)
    image[..., 1] = 127 + 120 * np.sin((y - 2 * t) / 11.0 + np.cos(x / 23.0))
    image[..., 2] = (x * y / 64.0 + 5 * t).astype(np.int64) % 256
    left = int(4 * t + 40 * phase) % max(width - 32, 1)
    image[height // 3:height // 3 + 32, left:left + 32] = 255
    return image


def make_videos(folder, videos, seconds, fps, width, height):
    """H.264 (x264's defaults: B-frames, keyframe at most every 250 frames) MP4s."""
    import av

    os.makedirs(folder, exist_ok=True)
    paths = []
    for number in range(videos):
        path = os.path.join(folder, f"video_{number:02d}_{width}x{height}_{seconds}s.mp4")
        paths.append(path)
        if os.path.exists(path):
            continue
        noise = np.random.default_rng(number)
        partial = path + ".part"
        with av.open(partial, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "23"}
            for t in range(seconds * fps):
                image = _frame(t, width, height, number / 3.0)
                image = np.clip(image + noise.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        os.replace(partial, path)
    return paths


# --- the loaders (each runs in its own process) ------------------------------

def _ours(paths, num_frames, rate, p):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(WORKERS)
    tf.config.threading.set_inter_op_parallelism_threads(WORKERS)
    from nonlocal_keras.training import data

    records = [data.VideoRecord(path, (0,), n) for n, path in enumerate(paths)]
    dataset = data.train_dataset(records, 1, False, p["batch"], num_frames=num_frames,
                                 sampling_rate=rate, crop_size=p["crop"], min_scale=p["scale"][0],
                                 max_scale=p["scale"][1], num_parallel_calls=WORKERS, repeat=True)
    batches = iter(dataset)
    return lambda: next(batches)[0].numpy()


def _torch_augment(frames, rng, p):
    """The same augmentation as ours, in torch: uint8 (T, H, W, 3) -> float (T, 3, s, s)."""
    import torch

    clip = torch.as_tensor(frames).permute(0, 3, 1, 2).float()
    height, width = clip.shape[-2:]
    size = int(rng.integers(p["scale"][0], p["scale"][1] + 1))
    scale = size / min(height, width)
    clip = torch.nn.functional.interpolate(clip, size=(round(height * scale), round(width * scale)),
                                           mode="bilinear", align_corners=False)
    top = int(rng.integers(0, clip.shape[-2] - p["crop"] + 1))
    left = int(rng.integers(0, clip.shape[-1] - p["crop"] + 1))
    clip = clip[..., top:top + p["crop"], left:left + p["crop"]]
    if rng.random() < 0.5:
        clip = clip.flip(-1)
    mean = torch.tensor(p["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(p["std"]).view(1, 3, 1, 1)
    return (clip - mean) / std


def _clip_indices(total, num_frames, rate, rng):
    # By file, not through the package: a peer may run in another environment
    # (--python), one without TensorFlow.
    spec = importlib.util.spec_from_file_location(
        "video_io", os.path.join(ROOT, "training", "video_io.py"))
    video_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(video_io)
    return video_io.train_clip_indices(total, num_frames, rate, rng)


def _decode_decord(path, num_frames, rate, rng):
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    return reader.get_batch(list(_clip_indices(len(reader), num_frames, rate, rng))).asnumpy()


def _decode_torchcodec(path, num_frames, rate, rng):
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1,
                           seek_mode="approximate")
    indices = _clip_indices(decoder.metadata.num_frames, num_frames, rate, rng)
    return decoder.get_frames_at(indices.tolist()).data.numpy()


def _decode_pyav(path, num_frames, rate, rng):
    """PyTorchVideo's way: seek to the keyframe before the clip, decode to its end."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = 1
        indices = _clip_indices(stream.frames, num_frames, rate, rng)
        start = stream.start_time or 0
        step = 1 / (stream.average_rate * stream.time_base)
        container.seek(int(start + indices[0] * step), stream=stream, backward=True)
        frames = {}
        for frame in container.decode(stream):
            index = int(round((frame.pts - start) / step))
            if index in set(indices.tolist()):
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= indices[-1]:
                break
    last = frames[max(frames)]
    return np.stack([frames.get(i, last) for i in indices.tolist()])


def _torch_loader(decode, paths, num_frames, rate, p):
    import torch

    torch.set_num_threads(1)

    class Clips(torch.utils.data.Dataset):
        def __len__(self):
            return 10**6  # sampled with replacement below, as a repeated dataset

        def __getitem__(self, item):
            rng = np.random.default_rng(item)
            path = paths[item % len(paths)]
            return _torch_augment(decode(path, num_frames, rate, rng), rng, p), 0

    loader = torch.utils.data.DataLoader(
        Clips(), batch_size=p["batch"], num_workers=WORKERS, persistent_workers=True,
        sampler=torch.utils.data.RandomSampler(range(10**6), num_samples=10**6), prefetch_factor=2)
    batches = iter(loader)
    return lambda: next(batches)[0].numpy(), lambda: [w.pid for w in batches._workers]


def _cpu_seconds(pids):
    """User + system CPU seconds of this process (every thread) and of `pids`."""
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(loader, clip, paths, p):
    """Clips/s delivered after `warmup` batches, over `batches` batches, and
    the CPU seconds spent a clip meanwhile (this process and its workers).
    The CPU time is the figure other jobs on the machine disturb least: they
    slow a loader down without making it do more work."""
    num_frames, rate = CLIPS[clip]
    workers = list
    if loader == "ours":
        next_batch = _ours(paths, num_frames, rate, p)
    else:
        decode = {"decord": _decode_decord, "torchcodec": _decode_torchcodec,
                  "torch_pyav": _decode_pyav}[loader]
        next_batch, workers = _torch_loader(decode, paths, num_frames, rate, p)
    for _ in range(p["warmup"]):
        batch = next_batch()
    cpu = _cpu_seconds(workers())
    start = time.perf_counter()
    for _ in range(p["batches"]):
        batch = next_batch()
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds(workers()) - cpu
    expected = (p["batch"], num_frames, p["crop"], p["crop"], 3)
    if sorted(batch.shape) != sorted(expected):
        raise RuntimeError(f"{loader} delivered {batch.shape}, expected {expected}")
    clips = p["batch"] * p["batches"]
    return {"clips_per_s": clips / seconds, "cpu_ms_per_clip": 1000 * cpu / clips}


def _decode_clips(paths, worker, count, num_frames, rate, threads):
    from nonlocal_keras.training import video_io

    for i in range(count):
        rng = np.random.default_rng(1000 * worker + i)
        video_io.decode_frames(paths[(5 * i + worker) % len(paths)],
                               lambda total: video_io.train_clip_indices(total, num_frames, rate, rng),
                               threads)


def decode_scaling(paths, clip, count=16, threads=None):
    """Seconds to decode 2 x `count` clips (`video_io.decode_frames` alone,
    with `threads` FFmpeg threads each): one after the other, in 2 threads, in
    2 processes. Threads as fast as processes: the GIL does not serialise the
    decodes."""
    import multiprocessing
    import threading

    num_frames, rate = CLIPS[clip]
    args = [(paths, worker, count, num_frames, rate, threads) for worker in range(2)]
    _decode_clips(paths, 2, 2, num_frames, rate, threads)  # warm-up: imports, file cache
    start, cpu = time.perf_counter(), time.process_time()
    for arg in args:
        _decode_clips(*arg)
    times = {"sequential": time.perf_counter() - start}
    # Every thread of this process, FFmpeg's included: the work a clip costs.
    times["CPU a clip"] = (time.process_time() - cpu) / (2 * count)
    for name, make in (("2 threads", threading.Thread),
                       ("2 processes", multiprocessing.get_context("fork").Process)):
        workers = [make(target=_decode_clips, args=arg) for arg in args]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        times[name] = time.perf_counter() - start
    return times


# --- the driver --------------------------------------------------------------

def available(loader, python):
    """Installed and importable by `python`: PyPI's torchcodec wheel needs a
    CUDA build of torch (give torchcodec an environment of its own: --python)."""
    module = "torchcodec.decoders" if loader == "torchcodec" else NEEDS[loader]
    return subprocess.run([python, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


def _normalization():
    from nonlocal_keras.applications import MEAN, STD

    return json.dumps([list(MEAN), list(STD)])


def run_one(loader, clip, folder, quick, python=sys.executable):
    argv = [python, os.path.abspath(__file__), "--worker", loader, "--clip", clip,
            "--videos", folder, "--normalization", _normalization()] + (["--quick"] if quick else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    run = subprocess.run(argv, capture_output=True, text=True, env=env)
    if run.returncode:
        raise SystemExit(f"{loader} {clip} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _versions(pythons):
    """Versions of what each environment measured: this one, and any --python.

    Read from the installed distributions' metadata: importing torch and
    TensorFlow to ask them took 13 s."""
    script = ("import json\nfrom importlib import metadata\nfound = {}\n"
              "for m in ('av', 'decord', 'torchcodec', 'torch', 'tensorflow'):\n"
              "    try:\n        found[m] = metadata.version(m)\n"
              "    except metadata.PackageNotFoundError:\n        pass\nprint(json.dumps(found))")
    found = {}
    for python in dict.fromkeys([sys.executable, *pythons.values()]):
        run = subprocess.run([python, "-c", script], capture_output=True, text=True)
        key = "this environment" if python == sys.executable else python
        found[key] = json.loads(run.stdout) if run.returncode == 0 else "unreadable"
    return found


def table(results, loaders, cpu=False):
    """Markdown: the median per loader and how ours compares with the best of
    every other loader measured (decord, torchcodec, torch_pyav), from the
    medians and within each round (min-max).
    Clips/s (higher is better: ours / best) or, with `cpu`, CPU ms a clip
    (lower is better: best / ours). Either way a ratio above 1 favours ours."""
    key = "cpu_ms_per_clip" if cpu else "clips_per_s"
    best, unit = (min, "CPU ms a clip") if cpu else (max, "clips/s")

    def ratio(ours, peers):
        return best(peers) / ours if cpu else ours / best(peers)

    head = (f"| clip ({unit}) | " + " | ".join(loaders)
            + " | ours vs best peer (medians) | same, per round (min-max) |")
    lines = [head, "|" + "---|" * (len(loaders) + 3)]
    for clip, row in results.items():
        values = {name: [m[key] for m in row[name]] for name in loaders if row.get(name)}
        medians = {name: statistics.median(v) for name, v in values.items()}
        # Every loader but ours: a peer left out here would flatter ours
        # wherever it was the best one (torch_pyav's CPU a clip at 8x8).
        peers = [n for n in medians if n != "ours"]
        overall = rounds = "-"
        if peers and "ours" in medians:
            overall = f"{ratio(medians['ours'], [medians[n] for n in peers]):.2f}"
            each = [ratio(values["ours"][i], [values[n][i] for n in peers])
                    for i in range(len(values["ours"]))]
            rounds = f"{min(each):.2f}-{max(each):.2f}"
        cells = [f"{medians[n]:.1f}" if n in medians else "skipped" for n in loaders]
        lines.append(f"| {clip} | " + " | ".join(cells) + f" | {overall} | {rounds} |")
    return "\n".join(lines)


def tables(results, loaders):
    return table(results, loaders) + "\n\n" + table(results, loaders, cpu=True)


def render(parser, path):
    """The tables of a saved record (`--render`): the record's own `table` is
    what the code of its day printed."""
    try:
        with open(path) as f:
            record = json.load(f)
        skipped = set(record["skipped"])
        return tables(record["measurements"], [n for n in record["loaders"] if n not in skipped])
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"argument --render: not a results JSON of loader.py "
                     f"({type(error).__name__}: {error}): {path!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny videos and clips, one round")
    parser.add_argument("--videos", default=os.path.join(tempfile.gettempdir(), "nonlocal_loader_bench"),
                        help="folder of the generated videos (kept as a cache)")
    parser.add_argument("--loaders", default=",".join(LOADERS),
                        help="comma-separated, of " + ", ".join(LOADERS))
    parser.add_argument("--clips", default=",".join(CLIPS),
                        help="comma-separated, of " + ", ".join(CLIPS))
    parser.add_argument("--rounds", type=common.positive_int)
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/loader.json; "
                                      "none with --quick)")
    parser.add_argument("--decode-scaling", action="store_true",
                        help="only time decode_frames sequentially, in 2 threads and in 2 "
                             "processes, with FFmpeg's threads and with one a decode")
    parser.add_argument("--python", action="append", default=[], metavar="LOADER=PYTHON",
                        help="run that loader with another interpreter (e.g. "
                             "torchcodec=/path/venv/bin/python, an environment with the CUDA "
                             "build of torch that PyPI's torchcodec wheel links against)")
    parser.add_argument("--render", metavar="RECORD",
                        help="print the tables of a results JSON this script wrote, with "
                             "today's table code; measures nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--normalization", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        print(render(parser, args.render))
        return None
    p = QUICK if args.quick else FULL
    pythons = parse_choices(parser, args)
    out = args.out or (None if args.quick else os.path.join(HERE, "results", "loader.json"))
    if out and not (args.worker or args.decode_scaling):
        common.check_output(parser, "--out", out)
    folder = os.path.join(args.videos, "quick" if args.quick else "full")
    paths = make_videos(folder, p["videos"], p["seconds"], p["fps"], p["width"], p["height"])
    if args.decode_scaling:
        for clip in [c for c in args.clips.split(",") if c]:
            for threads in (None, 1):  # FFmpeg's choice, then one thread a decode
                times = decode_scaling(paths, clip, 2 if args.quick else 16, threads)
                cpu = times.pop("CPU a clip")
                print(f"{clip}, FFmpeg threads {threads or 'auto'}: CPU {1000 * cpu:.1f} ms a clip; "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
                      + f"; speed-up threads {times['sequential'] / times['2 threads']:.2f}x, "
                      f"processes {times['sequential'] / times['2 processes']:.2f}x", flush=True)
        return None
    if args.worker:
        mean, std = json.loads(args.normalization)
        p = dict(p, mean=mean, std=std)
        print(json.dumps(measure(args.worker, args.clip, paths, p)))
        return None
    loaders = [n for n in args.loaders.split(",") if n]
    skipped = [n for n in loaders if not available(n, pythons.get(n, sys.executable))]
    for name in skipped:
        print(f"{name}: not installed or not importable, skipped (pip install -e '.[bench]')")
    running = [n for n in loaders if n not in skipped]
    clips = [c for c in args.clips.split(",") if c]
    results = {clip: {name: [] for name in running} for clip in clips}
    load_before = os.getloadavg()
    for round_number in range(args.rounds or p["rounds"]):
        order = running if round_number % 2 == 0 else running[::-1]
        for clip in clips:
            for name in order:
                value = run_one(name, clip, args.videos, args.quick,
                                pythons.get(name, sys.executable))
                results[clip][name].append(value)
                print(f"round {round_number + 1} {clip} {name}: {value['clips_per_s']:.2f} "
                      f"clips/s, {value['cpu_ms_per_clip']:.0f} CPU ms a clip", flush=True)
    report = {"table": None,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "versions": _versions(pythons), "settings": dict(p, workers=WORKERS), "clips": clips,
        "loaders": loaders, "skipped": skipped, "measurements": results,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report["table"] = tables(results, running)
    print(report["table"])
    if out:
        common.write_json(out, report)
    return report


def parse_choices(parser, args):
    """{loader: python} of --python; a usage error for a loader or clip that
    is not one of ours, or a --python without LOADER=."""
    def check(option, names, known):
        unknown = [n for n in names.split(",") if n and n not in known]
        if unknown or not any(names.split(",")):
            parser.error(f"argument {option}: {names!r}: expected a comma-separated list of "
                         + ", ".join(known))

    check("--loaders", args.loaders, LOADERS)
    check("--clips", args.clips, CLIPS)
    pythons = {}
    for item in args.python:
        loader, equals, python = item.partition("=")
        if not equals or loader not in LOADERS or not python:
            parser.error(f"argument --python: {item!r}: expected LOADER=PYTHON with LOADER one of "
                         + ", ".join(LOADERS))
        pythons[loader] = python
    return pythons


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    common.run_cli(main)
