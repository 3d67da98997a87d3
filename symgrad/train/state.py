"""Training state: an immutable pytree, everything needed to continue a run exactly."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TrainState(NamedTuple):
    """Params and optimiser state (replicated device arrays), the step and the PRNG key data.

    The step fixes where the data stand: epoch and batch position are
    ``divmod(step, steps_per_epoch)``, and the batch order of an epoch is a pure function of
    ``(seed, epoch)`` (see :func:`batch_order`).
    """

    params: Any
    opt_state: Any
    step: Any  # int32 scalar, global optimiser steps taken
    rng: Any  # uint32 (2,) raw key data (threefry), advanced once per step


def abstract_state(model, optimizer, sharding) -> TrainState:
    """The shapes, dtypes and ``sharding`` of a run's state, for orbax to restore into."""
    import jax

    params = jax.eval_shape(model.init, jax.random.key(0))
    opt_state = jax.eval_shape(optimizer.init, params)
    sds = lambda t: jax.tree.map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), t)
    return TrainState(sds(params), sds(opt_state), jax.ShapeDtypeStruct((), np.int32, sharding=sharding),
                      jax.ShapeDtypeStruct((2,), np.uint32, sharding=sharding))


def batch_order(seed: int, epoch: int, n_items: int) -> np.ndarray:
    """The permutation of ``n_items`` transitions used in ``epoch``: a pure function of
    ``(seed, epoch)``, so a resumed run sees exactly the batches the original would have."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x5EED]))
    return rng.permutation(n_items)


def batch_indices(seed: int, epoch: int, position: int, n_items: int, batch_size: int) -> np.ndarray:
    """Transition indices of batch ``position`` of ``epoch`` (incomplete last batch dropped)."""
    order = batch_order(seed, epoch, n_items)
    return order[position * batch_size:(position + 1) * batch_size]


def all_finite(tree) -> bool:
    """Whether every floating-point value of ``tree`` (parameters, optimiser state) is
    finite, on every process alike (the arrays are replicated or sharded global arrays)."""
    import jax
    import jax.numpy as jnp

    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    if not leaves:
        return True
    ok = _finite_program()(leaves)
    return bool(np.asarray(jax.device_get(ok.addressable_data(0) if hasattr(ok, "addressable_data") else ok)))


_FINITE = []  # the compiled check, made once (jit caches its programs per tree structure)


def _finite_program():
    if not _FINITE:
        import jax
        import jax.numpy as jnp

        _FINITE.append(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))))
    return _FINITE[0]
