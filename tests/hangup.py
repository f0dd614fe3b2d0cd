"""For the tests that send SIGHUP to a command they start."""

import signal


def as_without_nohup():
    """`preexec_fn`: SIGHUP does what it does in a terminal's shell, even where the
    tests run under `nohup` (children inherit its ignored SIGHUP: the command then
    rightly went on, and these tests failed)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
