"""TF Serving files for an exported model: `models.config` and a REST request body.

    nonlocal-serving-example exported/nl_c2d/1 [--write DIR]

Reads the `serving_default` signature from `saved_model.pb` (as TF Serving
does) and prints the `models.config` that serves `<base>/<name>`, the Docker
and curl commands, and a `{"instances": [...]}` request body shaped for the
signature: one clip of T frames of 2x2 pixels (the graph resizes any frame
size within the bounds recorded at export, so a real client sends its decoded
frames as they are). With `--write`,
`models.config` and `request.json` are also written to DIR.

The README's request body is this script's output for the `make demo` model;
tests/test_export_serving.py checks that it still fits the exported signature.
"""

import json
import os
import re
import shlex
import sys

from google.protobuf import message, text_encoding
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import dtypes

from nonlocal_keras import command_lines
from nonlocal_keras.training import atomic, export
from nonlocal_keras.training.errors import ConfigError, MissingFileError

REST_PORT = 8501
EXAMPLE_PIXELS = 2


def read_signature(saved_model_dir, name=export.DEFAULT_SIGNATURE):
    """`{"inputs": {name: (dtype, shape)}, "outputs": {...}}` of a signature; -1 = any size."""
    path = os.path.join(saved_model_dir, "saved_model.pb")
    if not os.path.isfile(path):
        raise MissingFileError(f"No saved_model.pb in the folder. Received: model={saved_model_dir!r}")
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as handle:
        try:
            proto.ParseFromString(handle.read())
        except message.DecodeError as error:  # a copy cut short, say
            raise ConfigError(f"saved_model.pb cannot be read ({error}); export the model again. "
                              f"Received: model={saved_model_dir!r}") from None
    signatures = proto.meta_graphs[0].signature_def if proto.meta_graphs else {}
    if name not in signatures:
        raise ConfigError(f"The SavedModel has no {name!r} signature (it has "
                          f"{', '.join(sorted(signatures)) or 'none'}): not one nonlocal-export "
                          f"wrote, or damaged. Received: model={saved_model_dir!r}")

    def describe(tensors):
        return {key: (dtypes.as_dtype(info.dtype).name, [d.size for d in info.tensor_shape.dim])
                for key, info in tensors.items()}

    return {"inputs": describe(signatures[name].inputs),
            "outputs": describe(signatures[name].outputs)}


def models_config(model_names):
    """A TF Serving `--model_config_file` (protobuf text) serving each model of
    the base folder mounted at /models (a name's `"` or line break escaped as
    protobuf's text format reads them)."""
    def quoted(text):
        return f'"{text_encoding.CEscape(text, as_utf8=True)}"'

    return "model_config_list {\n" + "".join(
        "  config {\n"
        f"    name: {quoted(name)}\n"
        f"    base_path: {quoted('/models/' + name)}\n"
        '    model_platform: "tensorflow"\n'
        "  }\n" for name in model_names) + "}\n"


def _served_models(path):
    """`(name, base_path)` of each model an existing `models.config` lists (none
    if there is none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:  # none, or unreadable: the write that follows names why
        return []
    quoted = r'"((?:[^"\\]|\\.)*)"'

    def field(block, key):
        found = re.search(rf"\b{key}:\s*{quoted}", block)
        return text_encoding.CUnescape(found.group(1)).decode("utf-8", "replace") if found else None

    return [(field(block, "name"), field(block, "base_path"))
            for block in re.split(r"\bconfig\s*\{", text)[1:]]


def example_request(signature, num_frames):
    """A row-format body with one clip for a single-input uint8 signature."""
    ((_, (dtype, shape)),) = signature["inputs"].items()
    if dtype != "uint8" or len(shape) != 5:
        raise ValueError("The example is for the uint8 clip signature (batch, T, H, W, 3). "
                         f"Received: dtype={dtype}, shape={shape}")
    frames = shape[1] if shape[1] > 0 else num_frames
    height, width = (s if s > 0 else EXAMPLE_PIXELS for s in shape[2:4])
    # Any pixel values in 0..255 do; these just differ from frame to frame.
    clip = [[[[(40 * t + 20 * y + 10 * x + 80 * c) % 256 for c in range(shape[4])]
              for x in range(width)] for y in range(height)] for t in range(frames)]
    return {"signature_name": export.DEFAULT_SIGNATURE, "instances": [clip]}


def format_request(body):
    """JSON with one frame per line (valid JSON, short enough for a README)."""
    frames = ",\n".join("      " + json.dumps(frame, separators=(", ", ": "))
                        for frame in body["instances"][0])
    return ("{\n"
            f'  "signature_name": {json.dumps(body["signature_name"])},\n'
            '  "instances": [\n'
            "    [\n"
            f"{frames}\n"
            "    ]\n"
            "  ]\n"
            "}\n")


def describe_model(saved_model_dir):
    """(model name, base folder, request body text, outputs) of `<base>/<name>/<version>`."""
    version_dir = os.path.abspath(export.version_folder(saved_model_dir))
    model_dir = os.path.dirname(version_dir)
    if not export.is_version_name(os.path.basename(version_dir)):
        raise ConfigError("Give the version folder <base>/<model_name>/<version> that "
                          f"nonlocal-export wrote. Received: model={saved_model_dir!r}")
    signature = read_signature(version_dir)
    num_frames = export.read_metadata(version_dir)["num_frames"]
    body = format_request(example_request(signature, num_frames))
    return os.path.basename(model_dir), os.path.dirname(model_dir), body, signature["outputs"]


def main(argv=None):
    args = command_lines.serving_example_parser().parse_args(argv)
    name, base, body, outputs = describe_model(args.model)
    # Every model of the base: one model's config written there replaced the
    # others' (their serving stopped at the server's next start).
    served = export.exported_models(base)
    config = models_config(served)
    print(f"# models.config (put it in {base}; it serves every model there)\n{config}")
    print("# Serve every model under the base folder:")
    # Pasted into a shell: a folder named `dl$(id)` ran `id` inside "...".
    print(f"docker run --rm -p {REST_PORT}:{REST_PORT} -v {shlex.quote(base + ':/models')} "
          "tensorflow/serving \\\n    --model_config_file=/models/models.config\n")
    url = shlex.quote(f"http://localhost:{REST_PORT}/v1/models/{name}:predict")
    print(f"# Request (request.json below):\ncurl -X POST {url} -d @request.json\n")
    print(f"# request.json\n{body}")
    print("# Response: {\"predictions\": [one object per clip with "
          + ", ".join(f"{key} ({dtype}, {shape[1:]})" for key, (dtype, shape) in sorted(outputs.items()))
          + "]}")
    if args.write:
        path = os.path.join(args.write, "models.config")
        # This command's entries serve `/models/<name>`, the base folder mounted;
        # an entry for a model elsewhere, or for one of the --write folder's own
        # models that the base lacks (another base's config), would be lost.
        beside = export.exported_models(args.write)
        others = [str(name) for name, served_from in _served_models(path)
                  if served_from != f"/models/{name}" or name in beside and name not in served]
        if others:
            # Written over, the server would stop serving them at its next start.
            raise ConfigError(f"{path!r} also serves models that are not in {base!r} "
                              f"({', '.join(others)}): add the models.config printed above to "
                              f"it by hand, or move it away. Received: --write={args.write!r}")
        request = os.path.join(args.write, "request.json")
        for written, ours in ((path, _written_config), (request, _written_request)):
            # A hand-edited config (a model_version_policy pinning a version)
            # or a file of the user's was replaced, exit 0.
            if os.path.lexists(written) and not ours(written):
                raise ConfigError(f"{written!r} is there and is not as this command writes it "
                                  "(edited, or another file): move it away, or add what is "
                                  f"printed above to it by hand. Received: --write={args.write!r}")
        atomic.make_folder(args.write, "--write")
        atomic.write_text(path, config)
        atomic.write_text(request, body)
    return 0


def _written_config(path):
    """Whether `path` is a models.config as `models_config` writes it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, ValueError):
        return False
    return text == models_config([name for name, _ in _served_models(path)])


def _written_request(path):
    """Whether `path` is a request body as `format_request` writes it."""
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(body, dict) and set(body) == {"signature_name", "instances"}


if __name__ == "__main__":
    from nonlocal_keras.training import cli

    sys.exit(cli.run("nonlocal-serving-example", "nonlocal_keras.training.serving_example"))
