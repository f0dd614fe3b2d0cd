"""nonlocal-keras: non-local neural networks for Keras 3 and TensorFlow.

`nonlocal_keras.layers` holds the blocks; `nonlocal_keras.applications` the
video ResNets and the Mask R-CNN; `nonlocal_keras.training` data, training and
export. Sub-packages are imported on use, so `import nonlocal_keras` stays light.
"""

__version__ = "0.1.0"
