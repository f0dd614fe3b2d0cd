"""Video data, training, evaluation and export for non-local models."""

# Registers the non-local layers, the video ResNets' own (VideoConv3D,
# ConcatenatedZeroPadding3D), SGDWithL2 and StepDecay, so that
# `keras.models.load_model` can restore a `model.keras` written by
# nonlocal-train (optimiser included) after `import nonlocal_keras.training`.
import nonlocal_keras.applications  # noqa: F401
import nonlocal_keras.layers  # noqa: F401
from nonlocal_keras.training import optim  # noqa: F401
