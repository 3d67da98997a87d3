"""Fault injection into ``symgrad train`` subprocesses, for the tests only.

A test that starts ``symgrad train`` in another process (to kill it, pre-empt it, or see
it stop on NaN) puts this directory first on ``PYTHONPATH``; Python then imports this
file at start-up. With neither variable below set it does nothing. Otherwise it wraps
``symgrad.train.step.make_train_step`` as soon as that module is imported (no import of
symgrad or jax before), so the step function of the run:

- ``SYMGRAD_TEST_STEP_DELAY=SECONDS``: sleeps that long after each step, so that a tiny
  run lasts long enough to be interrupted mid-way;
- ``SYMGRAD_TEST_NAN_STEP=K``: sees a NaN input batch at global step ``K`` (the
  ``K+1``-th optimiser step), so that the run's non-finite guard must stop it.

In-process tests patch the same seam with ``monkeypatch`` and
:func:`symgrad_faults.faulty`. Nothing in symgrad knows about this directory.
"""

from __future__ import annotations

import os
import sys

from symgrad_faults import DELAY_ENV, NAN_ENV, faulty

_TARGET = "symgrad.train.step"


def _install(delay: float, nan_step: int) -> None:
    """Wrap ``make_train_step`` when its module is first executed."""
    import importlib.abc
    import importlib.machinery

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != _TARGET:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                module.make_train_step = faulty(module.make_train_step, delay=delay, nan_step=nan_step)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, Finder())


if os.environ.get(DELAY_ENV) or os.environ.get(NAN_ENV):
    _install(float(os.environ.get(DELAY_ENV) or 0.0), int(os.environ.get(NAN_ENV) or -1))
