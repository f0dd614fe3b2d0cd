"""Build the model a config names, from `nonlocal_keras.applications`."""

import importlib
import os


def find_constructor(name):
    """`C2DResNet50` (from nonlocal_keras.applications) or `package.module:function`.

    A custom constructor must take the keras.applications arguments
    (`include_top, weights, input_shape, classes, classifier_activation`).
    """
    module_name, _, attribute = name.rpartition(":")
    module_name = module_name or "nonlocal_keras.applications"
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Cannot import the module of `model.name` ({error}). "
                         f"Received: model.name={name!r}") from error
    constructor = getattr(module, attribute, None)
    if constructor is None or not callable(constructor):
        available = sorted(n for n in dir(module) if n[:1].isupper())
        raise ValueError(
            f"`model.name` must be a constructor of {module_name} ({', '.join(available)}) "
            f"or `package.module:function`. Received: model.name={name!r}")
    return constructor


def build_model(model_config, data_config, multi_label):
    """Call the constructor `model.name` (see `find_constructor`) with the clip shape and class count.

    `model.weights` may be a `.weights.h5` file (loaded after building, e.g.
    from a previous run) or anything the constructor itself accepts; every
    other `model.*` field is passed to the constructor as a keyword argument.
    The classifier ends in softmax (single-label) or sigmoid (multi-label), so
    that the evaluation protocol averages probabilities.
    """
    constructor = find_constructor(model_config["name"])
    kwargs = {k: v for k, v in model_config.items() if k not in ("name", "weights")}
    weights = model_config.get("weights")
    weights_file = isinstance(weights, str) and weights.endswith(".weights.h5")
    size = data_config["crop_size"]
    model = constructor(
        include_top=True,
        weights=None if weights_file else weights,
        input_shape=(data_config["num_frames"], size, size, 3),
        classes=data_config["num_classes"],
        classifier_activation="sigmoid" if multi_label else "softmax",
        **kwargs,
    )
    if weights_file:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"Weights file not found. Received: model.weights={weights!r}")
        model.load_weights(weights)
    return model
