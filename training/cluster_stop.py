"""One step at which every worker of a multi-worker run stops when one of them
is terminated.

A SIGTERM (a preempted host) or SIGHUP reaches one worker. Alone, it would
commit and leave; its peers would fail at the next step's collectives, and the
chief, if it was not the one, would keep only its last commit (with the
default `runtime.backup_freq: epoch`, up to an epoch of every worker's work).
Instead the terminated worker announces, through the cluster's coordination
service (TensorFlow's key-value store, which `MultiWorkerMirroredStrategy`
starts), that the run stops after the next step; every worker reads the store
after each step, so all of them stop after that same step, the chief commits
it, and each leaves with the terminated status once all of them are there (the
receiver pulls a step's last transfers: a worker that left at once failed a
slower peer's step, "Socket closed").

Why the next step: the terminated worker writes its step after step `s`,
before it takes part in step `s + 1`; no peer can finish step `s + 1` without
it, and each reads the store after finishing a step, so each finds the step by
the end of `s + 1` at the latest. The same holds for any points the workers
all pass in the same order (`nonlocal-train-detection` looks every 10 steps
of an Orbit loop): each stops at the first point past the announced step,
and there every worker commits (Model Garden's checkpoint is saved by all
workers together; `nonlocal-train`'s chief alone writes). The store has no read that returns at once
when a key is absent (a read with a deadline waits for it, and a deadline
short enough to be cheap can expire before the answer of a loaded host
arrives): the key is there from the start ("none") and replaced, so a read
waits only while the announcing worker replaces it. A read costs about a
millisecond a step (two processes on one host).
"""

import logging

import tensorflow as tf
from tensorflow.python.eager import context

from nonlocal_keras.training import cli

logger = logging.getLogger(__name__)

_STEP = "nonlocal_keras/stop/after_step"  # "none", or the last step of every worker
_CLAIM = "nonlocal_keras/stop/claim"  # the worker that announces, the first terminated one
_BARRIER = "nonlocal_keras/stop/leave"
READ_SECONDS = 60
LEAVE_SECONDS = 30


def for_strategy(strategy, steps_done):
    """A `ClusterStop` for a `MultiWorkerMirroredStrategy` of several workers,
    else None. Made on every worker before the first step."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return None
    spec = resolver.cluster_spec().as_dict()
    if sum(len(spec.get(job, [])) for job in ("chief", "worker")) < 2:
        return None
    return ClusterStop(steps_done, f"{resolver.task_type}/{resolver.task_id}")


class ClusterStop:
    """Asked at each point where the workers may stop (by `cli.StopWhenInterrupted`
    after each step, by `cli.LoopSignals` between pieces of an Orbit loop): whether
    this worker stops now. `steps_done()` counts the steps done; `me` names this
    worker (`"worker/1"`). The workers must meet the same points in the same order."""

    def __init__(self, steps_done, me):
        self.steps_done, self.me = steps_done, me
        self.stop_after = None
        self._store = context.context()
        try:
            self._store.set_config_key_value(_STEP, "none")
        except tf.errors.AlreadyExistsError:
            pass  # another worker's, or an announcement, which cannot precede a step

    def due(self):
        if self.stop_after is None:
            self.stop_after = self._agreed_step()
        return self.stop_after is not None and self.steps_done() >= self.stop_after

    def _agreed_step(self):
        if cli.TERMINATED.is_set():
            try:
                self._store.set_config_key_value(_CLAIM, self.me)
            except tf.errors.AlreadyExistsError:
                pass  # another worker was terminated first: its step holds
            else:
                self._store.delete_config_key_value(_STEP)
                self._store.set_config_key_value(_STEP, str(self.steps_done() + 1))
        value = self._store.get_config_key_value(_STEP, timeout_in_ms=1000 * READ_SECONDS)
        if value == "none":
            return None
        if not cli.TERMINATED.is_set():
            logger.warning("A worker of the cluster was terminated: every worker stops after "
                           "step %s (the run's state is committed there).", value)
            cli.terminate_as_if_signalled()
        return int(value)

    def leave_together(self):
        """Once this worker has finished the agreed step (the chief has committed
        it), wait until every worker has, or a peer is gone, or LEAVE_SECONDS."""
        try:
            self._store.wait_at_barrier(_BARRIER, 1000 * LEAVE_SECONDS)
        except tf.errors.OpError:
            pass  # late or gone: leave anyway
