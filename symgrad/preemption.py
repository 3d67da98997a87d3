"""SIGTERM as a request to stop cleanly: the one handler that training and overlap share.

A cluster pre-empts (or ends at its time limit) a job with SIGTERM, then SIGKILL after a
grace period (``--signal=TERM@120`` in the sweep scripts). Inside :func:`stop_on_sigterm`
the signal only sets a flag; long loops poll :func:`requested` at their safe points (a
training step, an overlap chunk), save what they have, and the command exits with
``symgrad.errors.EXIT_PREEMPTED``. Outside it SIGTERM keeps its default meaning.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested = False
_depth = 0  # nested stop_on_sigterm blocks: the outermost one owns the handler and the flag


class Preempted(Exception):
    """Raised by :func:`check` where a command can stop before its main loop (its start-up):
    nothing half-done is kept, and the command exits with ``EXIT_PREEMPTED``."""


def requested() -> bool:
    """True once SIGTERM arrived inside :func:`stop_on_sigterm`."""
    return _requested


def check() -> None:
    """Raise :class:`Preempted` if SIGTERM arrived: for the safe points of a start-up."""
    if _requested:
        raise Preempted("stopped on SIGTERM")


@contextlib.contextmanager
def stop_on_sigterm():
    """Within this block SIGTERM sets the flag of :func:`requested`. Blocks nest: an inner
    one (the training loop inside the ``train`` command) keeps a signal that arrived
    before it (during the start-up), and only the outermost one restores the handler."""
    global _requested, _depth
    previous = None
    if _depth == 0:
        _requested = False

    def handle(signum, frame):
        global _requested
        _requested = True

    if _depth == 0 and threading.current_thread() is threading.main_thread():  # signals go to the main thread only
        previous = signal.signal(signal.SIGTERM, handle)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if _depth == 0:
            _requested = False
