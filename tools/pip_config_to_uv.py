"""Print pip's index settings as `uv pip install` arguments, for the Makefile.

uv does not read pip's configuration files or PIP_* variables. `make install`
uses uv (it installs and compiles the test environment in about 2 minutes
where pip took over 3), so the indexes, local wheel folders and constraints a machine
configured for pip must reach uv as flags. Reads `pip config list` (pip's own
merge of its files and environment) with the interpreter running this script.
"""

import shlex
import subprocess
import sys

# pip option -> uv flag; the values of these may list several items.
FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "find-links": "--find-links", "constraint": "--constraint",
         "trusted-host": "--allow-insecure-host"}
# Where pip reads install options from, each overriding those before it (as pip
# does); `pip config list` prints them sorted by name, so ":env:" comes first.
SECTIONS = ("global", "install", ":env:")


def uv_arguments(pip_config_lines):
    settings, ranks = {}, {}
    for line in pip_config_lines:
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if (section in SECTIONS and (key in FLAGS or key == "no-index")
                and SECTIONS.index(section) >= ranks.get(key, -1)):
            settings[key] = shlex.split(value)[0] if value else ""
            ranks[key] = SECTIONS.index(section)
    arguments = []
    for key, flag in FLAGS.items():
        for item in settings.get(key, "").split():
            arguments += [flag, item]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        arguments.append("--no-index")
    if "extra-index-url" in settings or "find-links" in settings:
        # pip takes the best version found on any index; uv's default stops at the first.
        arguments += ["--index-strategy", "unsafe-best-match"]
    return arguments


def main():
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True, check=True).stdout
    print(shlex.join(uv_arguments(listed.splitlines())))


if __name__ == "__main__":
    main()
