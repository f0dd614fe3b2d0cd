"""What the video ResNets expect of a clip: the official mean and std.

The one source of `MEAN` and `STD`: training, export and prediction import
them from here. Backend-agnostic (NumPy or `keras.ops`), as
`keras.applications.*.preprocess_input`.
"""

import keras
import numpy as np

# Per-channel (R, G, B) statistics on the 0..255 scale of the released
# video-nonlocal-net models (lib/core/config.py: MEAN = 114.75, STD = 57.375):
# a clip maps to roughly [-2, 2.4].
MEAN = (114.75, 114.75, 114.75)
STD = (57.375, 57.375, 57.375)


def preprocess_input(x):
    """`(x - MEAN) / STD` per channel, for RGB clips `(..., T, H, W, 3)` on 0..255.

    Args:
        x: a NumPy array (or nested lists, as NumPy reads them) or a tensor
            of any dtype (uint8 frames included), channels last.

    Returns:
        float32, of the type of `x` (NumPy in, NumPy out).
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if tuple(x.shape[-1:]) != (len(MEAN),):
        raise ValueError(f"preprocess_input expects RGB clips, channels last ({len(MEAN)} "
                         f"channels). Received: x.shape={tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        return ((x.astype("float32") - np.float32(MEAN)) / np.float32(STD)).astype("float32")
    x = keras.ops.cast(x, "float32")
    return (x - keras.ops.convert_to_tensor(MEAN, "float32")) / keras.ops.convert_to_tensor(
        STD, "float32")
