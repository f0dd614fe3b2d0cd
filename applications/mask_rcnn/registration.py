"""Register with Model Garden's registries once, however often a module runs.

Model Garden's registries raise `KeyError` on a second registration of a key,
which `importlib.reload` or a second import path would trigger. The first
registration wins; later ones are no-ops.
"""


def once(collection, key, register):
    """A decorator that applies Model Garden's `register` unless `key` is taken.

    Args:
        collection: the registry dict `register` writes into.
        key: the registration key (a name or a config class).
        register: Model Garden's decorator, e.g.
            `factory.register_backbone_builder("resnet_nonlocal")`.
    """

    def decorator(fn_or_cls):
        if key not in collection:
            register(fn_or_cls)
        return fn_or_cls

    return decorator
