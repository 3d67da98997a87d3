"""Training state: an immutable pytree, everything needed to continue a run exactly."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TrainState(NamedTuple):
    """Params and optimiser state (replicated device arrays), step, PRNG key data, data order.

    ``epoch`` and ``position`` (batches of that epoch already consumed) are host-side numpy
    scalars: together with the seed they fix the next batch, because the batch order of
    an epoch is a pure function of ``(seed, epoch)`` (see :func:`batch_order`).
    """

    params: Any
    opt_state: Any
    step: Any  # int32 scalar, global optimiser steps taken
    rng: Any  # uint32 (2,) raw key data (threefry), advanced once per step
    epoch: np.ndarray  # int32 scalar
    position: np.ndarray  # int32 scalar


def batch_order(seed: int, epoch: int, n_items: int) -> np.ndarray:
    """The permutation of ``n_items`` transitions used in ``epoch``: a pure function of
    ``(seed, epoch)``, so a resumed run sees exactly the batches the original would have."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x5EED]))
    return rng.permutation(n_items)


def batch_indices(seed: int, epoch: int, position: int, n_items: int, batch_size: int) -> np.ndarray:
    """Transition indices of batch ``position`` of ``epoch`` (incomplete last batch dropped)."""
    order = batch_order(seed, epoch, n_items)
    return order[position * batch_size:(position + 1) * batch_size]
