"""benchmarks/profile_block.py: the block's op time beside its products alone."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import profile_block  # noqa: E402


@pytest.mark.slow  # ~20 s on 2 cores: the res4 block and its products, timed and traced
def test_res4_block_and_its_products_are_profiled(capsys):
    profile_block.main(["res4", "float32", "--steps", "1", "--trace", "1", "--top", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("res4 float32, 1 inter-op thread(s): block ")
    block = next(i for i, line in enumerate(lines) if line.startswith("block: op time"))
    alone = next(i for i, line in enumerate(lines) if line.startswith("products alone: op time"))
    # The softmax, the BatchNorm and the pooling are the block's, not the products'.
    for kind in ("Softmax", "FusedBatchNorm", "MaxPool"):
        assert kind in lines[block + 1] and kind not in lines[alone + 1], kind
    for index in (block, alone):
        products = float(lines[index].split("; products ")[1].split(" ms")[0])
        assert products > 0
        assert "MatMul" not in lines[index + 1].split("the rest: ")[1]
