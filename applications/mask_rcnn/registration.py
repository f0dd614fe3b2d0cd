"""Register with Model Garden's and tf_keras' registries once, however often a module runs.

Model Garden's registries raise `KeyError` on a second registration of a key,
which `importlib.reload` or a second import path would trigger. The first
registration wins; later ones are no-ops.
"""

import tf_keras

# The package name every serialisable class of the project registers under
# (the Keras 3 layers use the same one).
PACKAGE = "nonlocal_keras"
# The name the tf_keras classes were first registered under; configs saved
# with it must still load.
_OLD_PACKAGE = "NonLocal"


def once(register):
    """A decorator that applies Model Garden's `register` unless its key is taken.

    Model Garden's registries raise KeyError for a key registered before
    (`official.core.registry.register`): a module imported a second time
    (reloaded, or through another path), or a config class Model Garden itself
    registered, keeps the first registration.

    Args:
        register: Model Garden's decorator, e.g.
            `factory.register_backbone_builder("resnet_nonlocal")`.
    """

    def decorator(fn_or_cls):
        try:
            register(fn_or_cls)
        except KeyError:
            pass
        return fn_or_cls

    return decorator


def serializable(cls):
    """Register a tf_keras class as `nonlocal_keras>Name`; `NonLocal>Name` still loads.

    The alias goes in first: the last registration is the name tf_keras
    writes when it saves the class.
    """
    tf_keras.utils.get_custom_objects()[f"{_OLD_PACKAGE}>{cls.__name__}"] = cls
    return tf_keras.utils.register_keras_serializable(package=PACKAGE)(cls)
