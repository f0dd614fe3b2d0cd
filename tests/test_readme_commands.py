"""The README's shell blocks run verbatim after `make demo`, in the order shown.

Every command of a ```bash block (or an untagged block) must start with an
entry point that exists (a console script of setup.cfg, a Makefile target, a
module `python -m` can import, or a tool named in EXTERNAL), and every path it
names must exist in the repository, be written by `make demo`, or be written
by a command shown before it. Templates with placeholders are ```text blocks.
"""

import configparser
import glob
import importlib.util
import os
import re
import shlex

import pytest

from nonlocal_keras.training import config as config_lib
from nonlocal_keras.training import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_TAGS = ("", "bash", "sh", "shell", "console")
EXTERNAL = {"docker", "curl", "saved_model_cli", "pip", "git", "cd"}
# Flags whose value is a file or folder the command writes.
OUTPUT_FLAGS = {"--output", "--write", "--output-dir", "--model_dir", "--synthetic_coco_dir",
                "--export_dir", "--out", "--runs-dir", "--export-dir"}
PATH_SUFFIXES = (".yaml", ".csv", ".mp4", ".h5", ".json", ".keras", ".pkl", ".txt", ".config",
                 ".png", "activate")


def _blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    return [body for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
            if tag in SHELL_TAGS]


def _commands(block):
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"\w+=\$\((.*)\)", line)  # DATA=$(command)
        line = assignment.group(1) if assignment else line
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def _console_scripts():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    entries = parser["options.entry_points"]["console_scripts"]
    return {line.split("=")[0].strip() for line in entries.splitlines() if "=" in line}


def _make_targets():
    with open(os.path.join(ROOT, "Makefile")) as handle:
        return set(re.findall(r"^([\w-]+):", handle.read(), re.M))


def _demo_outputs():
    outputs = {"demo_output", os.path.join("exported", demo.EXPORTED), ".venv"}
    outputs.update(os.path.join("runs", folder) for _, _, folder in demo.RUNS)
    return outputs


def _looks_like_path(word):
    return ("/" in word or word.endswith(PATH_SUFFIXES)) and not word.startswith(
        ("-", "http://", "https://")) and "$" not in word and ":" not in word


def _exists(path, created):
    path = os.path.normpath(path.lstrip("@"))
    if os.path.isabs(path):
        return os.path.exists(path) or any(path.startswith(c) for c in created)
    if glob.glob(os.path.join(ROOT, path)):
        return True
    return any(path == c or path.startswith(c + os.sep) or os.path.dirname(path) == c
               for c in created)


def _check(words, created, problems):
    program = words[0]
    scripts = _console_scripts()
    if program in (".", "source"):
        if words[1] != ".venv/bin/activate":
            problems.append(f"{' '.join(words)}: unknown environment")
        return
    if program == "make":
        if not set(words[1:]) <= _make_targets():
            problems.append(f"{' '.join(words)}: no such Makefile target")
        return
    if program == "docker":
        # Only the host side of a volume is a path here; the rest is the container's.
        volumes = [words[i + 1].split(":")[0] for i, w in enumerate(words[:-1]) if w == "-v"]
        problems.extend(f"{' '.join(words)}: {v} does not exist then" for v in volumes
                        if not _exists(v.replace("$PWD/", ""), created))
        return
    if program in ("python", "python3"):
        if words[1] == "-m" and importlib.util.find_spec(words[2]) is None:
            problems.append(f"{' '.join(words)}: no module {words[2]}")
    elif program not in scripts and program not in EXTERNAL:
        problems.append(f"{' '.join(words)}: {program} is not an entry point")
    for index, word in enumerate(words[1:], start=1):
        flag = words[index - 1]
        if flag in OUTPUT_FLAGS:
            created.add(os.path.normpath(word))
            continue
        if flag == "--config" and word in config_lib.list_configs():
            continue
        if flag == "--set":
            key, _, value = word.partition("=")
            section, _, field = key.partition(".")
            if section not in config_lib.DEFAULTS or (
                    section != "model" and field not in config_lib.DEFAULTS[section]):
                problems.append(f"{' '.join(words)}: no config field {key}")
            if key == "runtime.output_dir":
                created.add(os.path.normpath(value))
            elif _looks_like_path(value) and not _exists(value, created):
                problems.append(f"{' '.join(words)}: {value} does not exist then")
            continue
        for part in word.split("="):
            if _looks_like_path(part) and not _exists(part, created):
                problems.append(f"{' '.join(words)}: {part} does not exist then")


def test_the_readme_shows_commands_that_run_after_make_demo():
    created = set(_demo_outputs())
    problems = []
    count = 0
    for block in _blocks():
        for words in _commands(block):
            count += 1
            _check(words, created, problems)
    assert count >= 10
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command,problem", [
    ("nonlocal-trian --config demo_digits_nl_c2d", "not an entry point"),
    ("nonlocal-evaluate --run-dir runs/demo_nl_c2d --set data.num_clip=1", "no config field"),
    ("nonlocal-predict clips/*.mp4 --model exported/demo_nl_c2d/1", "does not exist"),
    ("python -m nonlocal_keras.training.nosuch", "no module"),
    ("nonlocal-export --config runs/demo_nl_c2d/config.yaml --checkpoint runs/nl/final.weights.h5",
     "does not exist"),
])
def test_the_checker_catches_what_the_issue_saw(command, problem):
    problems = []
    _check(shlex.split(command), set(_demo_outputs()), problems)
    assert problems and problem in problems[0]
