"""Faults for the training tests: a ``make_train_step`` whose step functions sleep or see
NaN. In-process tests patch ``symgrad.train.setup.make_train_step`` with :func:`faulty`
(``monkeypatch``); subprocesses get it from ``sitecustomize`` in this directory, steered by
the two environment variables below. No symgrad or jax import until a step function is made.
"""

from __future__ import annotations

DELAY_ENV, NAN_ENV = "SYMGRAD_TEST_STEP_DELAY", "SYMGRAD_TEST_NAN_STEP"


def faulty(make_train_step, *, delay: float = 0.0, nan_step: int = -1):
    """``make_train_step`` whose step functions sleep ``delay`` seconds after each step and
    see a NaN batch at global step ``nan_step`` (-1: never)."""

    def make(*args, **kwargs):
        import time

        import jax
        import numpy as np

        from symgrad.train import distributed

        step_fn = make_train_step(*args, **kwargs)

        def step(state, x, y):
            if nan_step >= 0 and int(distributed.fetch(state.step)) == nan_step:
                x = jax.device_put(x * np.float32(np.nan), x.sharding)
            out = step_fn(state, x, y)
            if delay:
                time.sleep(delay)
            return out

        step.jitted = getattr(step_fn, "jitted", None)
        return step

    return make
