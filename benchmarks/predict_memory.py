"""Peak RSS of `nonlocal-predict` on a long 4K video (issue 12: memory follows the clip).

    .venv/bin/python benchmarks/predict_memory.py            # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/predict_memory.py --frames 96 --keep /tmp/bench

Writes a synthetic 3840x2160 H.264 MP4 with PyAV (a moving gradient: cheap
to encode, as costly to decode as any 4K frame), exports a tiny NL video
ResNet with a paper-like evaluation setting (8 frames every 8, 2 clips, shorter
side 256, one 224 crop: 16 frames of clips), then runs the installed
`nonlocal-predict` on it and on a small 64x64 video, each in a fresh process,
and prints their peak resident set sizes (`ru_maxrss` of the child). The
difference is what the 4K frames cost; a decoder that held every frame would
need `frames x 3840 x 2160 x 3` bytes more. Results go to
`benchmarks/results/predict_memory.json`.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

WIDTH, HEIGHT = 3840, 2160
SETTINGS = {"num_frames": 8, "sampling_rate": 8, "crop_size": 224, "eval_scale": 256,
            "num_clips": 2, "num_crops": 1, "class_names": [f"class {i}" for i in range(5)]}
# Runs `argv` and prints the child's peak RSS (KiB on Linux) on its own last line.
_MEASURE = ("import resource, subprocess, sys\n"
            "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
            "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def write_4k(path, frames):
    import av

    ramp = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :]
    rows = np.linspace(0, 255, HEIGHT, dtype=np.float32)[:, None]
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "60"}
        for t in range(frames):
            image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            image[..., 0] = (ramp + 4 * t) % 256
            image[..., 1] = (rows + 2 * t) % 256
            image[..., 2] = 128
            left = (32 * t) % (WIDTH - 256)
            image[1000:1256, left:left + 256] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def export_tiny(folder):
    from nonlocal_keras.applications import VideoResNet
    from nonlocal_keras.training import export

    model = VideoResNet((1, 1), input_shape=(8, 224, 224, 3), classes=5, width=4,
                        nonlocal_blocks={"res3": [0]}, name="tiny_nl")
    return export.export_saved_model(model, os.path.join(folder, "models"), data_config=SETTINGS)


def peak_rss_mib(argv):
    run = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True)
    code, kib = run.stdout.split()[-2:]
    if code != "0":
        raise SystemExit(f"{' '.join(argv)} failed with exit status {code}:\n{run.stderr[-2000:]}")
    return int(kib) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=common.positive_int, default=300,
                        help="length of the 4K video")
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one)")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "predict_memory.json"))
    args = parser.parse_args(argv)
    common.check_output(parser, "--output", args.output)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    folder = args.keep or tempfile.mkdtemp(prefix="predict-memory-")
    os.makedirs(folder, exist_ok=True)
    try:
        start = time.perf_counter()
        long_video = os.path.join(folder, "long_4k.mp4")
        write_4k(long_video, args.frames)
        encode_s = time.perf_counter() - start
        from nonlocal_keras.training import video_io

        small_video = os.path.join(folder, "small.mp4")
        video_io.write_video(small_video, np.zeros((4, 64, 64, 3), np.uint8))
        saved = export_tiny(folder)
        predict = os.path.join(os.path.dirname(sys.executable), "nonlocal-predict")
        small = peak_rss_mib([predict, small_video, "--model", saved, "--no-progress"])
        start = time.perf_counter()
        large = peak_rss_mib([predict, long_video, "--model", saved, "--no-progress"])
        predict_s = time.perf_counter() - start
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    frame_mib = WIDTH * HEIGHT * 3 / 2**20
    record = {
        "machine": common.machine(), "video": f"{args.frames} frames {WIDTH}x{HEIGHT} H.264",
        "settings": SETTINGS, "clip_frames": SETTINGS["num_frames"] * SETTINGS["num_clips"],
        "peak_rss_mib_4k": round(large), "peak_rss_mib_small_video": round(small),
        "whole_video_rgb_mib": round(args.frames * frame_mib),
        "encode_seconds": round(encode_s, 1), "predict_seconds": round(predict_s, 1),
    }
    common.write_json(args.output, record)
    print(f"nonlocal-predict peak RSS on a {args.frames}-frame {WIDTH}x{HEIGHT} H.264 video "
          f"({record['clip_frames']} frames of clips): {large:.0f} MiB "
          f"(a 64x64 video: {small:.0f} MiB; every frame decoded to RGB would be "
          f"{record['whole_video_rgb_mib']} MiB); predict took {predict_s:.0f} s")


if __name__ == "__main__":
    main()
