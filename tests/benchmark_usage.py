"""What the benchmark scripts' tests ask of a usage error, in one place."""

import pytest


def usage_error(call, argv, capsys):
    """The last line on stderr of `call(argv)`, which must exit 2 with argparse's
    `prog: error: ...` line."""
    with pytest.raises(SystemExit) as exit_:
        call(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ": error: " in err[-1]
    return err[-1]
