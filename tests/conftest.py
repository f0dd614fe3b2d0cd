import os

import pytest

from nonlocal_keras import cpu

# Quiet TensorFlow's C++ start-up chatter (no GPU here) before anything imports it,
# and give it the kernels the console scripts give it (oneDNN on every x86-64 CPU).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
cpu.use_onednn()

# `make test` runs the test files on two pytest-xdist workers, a file each. Its own
# order starts the files with the most tests first; these, the longest, start first
# instead, so that the last file to end is a short one (the longest worker ran 1291 s
# of 2350 s of tests in a fresh clone on 2 cores, 2026-12-06; this order would split those
# files' seconds 1175/1175). Seconds of that run:
LONGEST_FIRST = (
    "test_mask_rcnn.py",  # 677
    "test_training_faults.py",  # 502
    "test_keypoint_rcnn.py",  # 202
    "test_training_train.py",  # 139
    "test_video_resnet.py",  # 112
    "test_nonlocal_masks.py",  # 102
    "test_export.py",  # 84
)


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.fixture(autouse=True, scope="session")
def _children_keep_their_temporary_files_here(tmp_path_factory):
    """The commands the tests start inherit TMPDIR: a folder of this session's.
    A command killed with SIGKILL (the kill tests) leaves its temporary folder
    behind, as the README says; three a `make test` were left in the machine's
    /tmp until 2026-12-07."""
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmpdir"))
    yield
    if previous is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = previous
