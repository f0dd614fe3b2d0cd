"""Print the model table of the README: parameters and multiply-adds, measured here.

    python -m nonlocal_keras.applications.model_table [--size 224]

Every number comes from building the model and counting with
`nonlocal_keras.utils.count_flops` (G multiply-adds, 400 classes), for the
two released clip settings: 8 frames with `stem="8x8"` and 32 frames with the
paper's `stem="32x2"`.
"""

import argparse

import numpy as np

from nonlocal_keras.applications import video_resnet
from nonlocal_keras.utils import count_flops

# (constructor, keyword arguments) of each row.
ROWS = (
    ("C2DResNet50", {}),
    ("C2DResNet50", {"nonlocal_blocks": 5}),
    ("I3DResNet50", {}),
    ("I3DResNet50", {"nonlocal_blocks": 5}),
    ("I3DResNet50", {"inflation": "3x3x3"}),
    ("C2DResNet101", {}),
    ("C2DResNet101", {"nonlocal_blocks": 5}),
    ("I3DResNet101", {}),
    ("I3DResNet101", {"nonlocal_blocks": 5}),
    ("I3DResNet101", {"inflation": "3x3x3"}),
)


# (frames, stem) of each FLOPs column.
CLIPS = ((8, "8x8"), (32, "32x2"))


def model_table(size=224):
    """Markdown lines of the table."""
    flops_headers = "".join(f" GMACs {t}x{size}x{size}, stem {stem} |" for t, stem in CLIPS)
    lines = [f"| model | trainable params |{flops_headers}",
             "|---|---:|" + "---:|" * len(CLIPS)]
    for constructor_name, kwargs in ROWS:
        constructor = getattr(video_resnet, constructor_name)
        model = constructor(**kwargs)
        params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        flops = "".join(
            f" {count_flops(constructor(stem=stem, **kwargs), (t, size, size, 3)) / 1e9:.1f} |"
            for t, stem in CLIPS)
        arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        lines.append(f"| `{constructor_name}({arguments})` | {params:,} |{flops}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    print("\n".join(model_table(args.size)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
