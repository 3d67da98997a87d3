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


def requested() -> bool:
    """True once SIGTERM arrived inside :func:`stop_on_sigterm`."""
    return _requested


@contextlib.contextmanager
def stop_on_sigterm():
    global _requested
    previous = None
    _requested = False

    def handle(signum, frame):
        global _requested
        _requested = True

    if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
        previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _requested = False
