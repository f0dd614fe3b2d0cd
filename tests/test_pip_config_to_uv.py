"""tools/pip_config_to_uv.py: pip's index settings as uv flags (the Makefile's install)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tools"))
import pip_config_to_uv  # noqa: E402


def test_indexes_wheel_folders_and_constraints_become_flags():
    lines = ["global.extra-index-url='file:///a/simple file:///b/simple'",
             "global.find-links='/opt/wheels'",
             "global.cert='/etc/ssl/certs/ca.crt'",
             "global.constraint='/etc/c.txt'",
             ":env:.find-links='/env/wheels'",
             "install.trusted-host='mirror.local'"]
    assert pip_config_to_uv.uv_arguments(lines) == [
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
        "--find-links", "/env/wheels",  # the environment overrides the file, as in pip
        "--constraint", "/etc/c.txt", "--allow-insecure-host", "mirror.local",
        "--index-strategy", "unsafe-best-match"]


def test_the_environment_overrides_the_files_in_the_order_pip_prints_them():
    # `pip config list` sorts by name: ":env:" before "global" before "install".
    lines = [":env:.find-links='/env/wheels'", "global.find-links='/file/wheels'",
             "global.index-url='https://global/simple'",
             "install.index-url='https://install/simple'"]
    assert pip_config_to_uv.uv_arguments(lines) == [
        "--index-url", "https://install/simple", "--find-links", "/env/wheels",
        "--index-strategy", "unsafe-best-match"]


def test_index_url_alone_keeps_uvs_index_strategy_and_no_index_passes_through():
    assert pip_config_to_uv.uv_arguments(["global.index-url='https://mirror/simple'"]) == [
        "--index-url", "https://mirror/simple"]
    assert pip_config_to_uv.uv_arguments([":env:.no-index='true'",
                                          "user.find-links='/ignored'"]) == ["--no-index"]


def test_no_configuration_no_flags():
    assert pip_config_to_uv.uv_arguments([]) == []
