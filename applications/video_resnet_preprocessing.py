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


def preprocess_input(x, data_format=None):
    """`(x - MEAN) / STD` per channel, for RGB clips on 0..255.

    Args:
        x: a NumPy array (or nested lists, as NumPy reads them) or a tensor
            of any dtype (uint8 frames included): `(..., T, H, W, 3)`, or
            `(..., 3, T, H, W)` with `data_format="channels_first"`.
        data_format: as in keras.applications, except that None means
            `"channels_last"`, the layout of the video ResNets, whatever
            `keras.config.image_data_format()` says.

    Returns:
        float32, of the type of `x` (NumPy in, NumPy out).
    """
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError("`data_format` must be None, 'channels_last' or 'channels_first'. "
                         f"Received: data_format={data_format!r}")
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    first = data_format == "channels_first"
    axis, layout = (-4, "channels first") if first else (-1, "channels last")
    if len(x.shape) < -axis or x.shape[axis] != len(MEAN):
        raise ValueError(f"preprocess_input expects RGB clips, {layout} ({len(MEAN)} channels). "
                         f"Received: x.shape={tuple(x.shape)}")
    # The statistics broadcast over the frames' axes that follow the channels.
    mean, std = (np.float32(v).reshape((-1, 1, 1, 1) if first else (-1,)) for v in (MEAN, STD))
    if isinstance(x, np.ndarray):
        return ((x.astype("float32") - mean) / std).astype("float32")
    return keras.ops.divide(keras.ops.subtract(keras.ops.cast(x, "float32"), mean), std)
