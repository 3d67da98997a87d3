"""The one rule for the dtype a diagnostic computes in (``precision="float64"`` by default).

Flax initialises parameters in float32. A diagnostic given such a model must not quietly
compute in float32, where values at damping 1e-6 cannot be certified: ``computing_in``
switches float64 on for the computation (and restores the caller's setting after), and
``cast`` converts the parameters and data to that dtype.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from symgrad.names import PRECISIONS


@contextlib.contextmanager
def computing_in(precision: str):
    """Yield the dtype of ``precision``; float64 computes under ``jax.enable_x64``.

    Matmuls run at ``"highest"`` precision either way: on GPUs the default lets float32
    matmuls use TF32 (10-bit mantissas), whose rounding no bound here accounts for.
    """
    assert precision in PRECISIONS, precision  # checked by the diagnostic's config
    with jax.default_matmul_precision("highest"):
        if precision == "float64":
            with jax.enable_x64(True):
                yield jnp.float64
        else:
            yield jnp.float32


def cast(tree, dtype):
    """Every leaf of ``tree`` (parameters, states) as a ``dtype`` array."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)
