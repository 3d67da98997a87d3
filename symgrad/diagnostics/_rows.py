"""Row counts rounded up to a few sizes, so that blocks of changing size compile few programs.

A block Krylov solve deflates converged and dependent directions, so its blocks shrink
step by step (32, 31, 29, ...), and every jitted kernel compiles once per input shape.
``benchmarks/row_buckets.py`` measures the demo's kind of solve with and without rounding
(its record: ``benchmarks/records/row_buckets.json``).
Rows are padded with zeros, which every kernel here maps to zero (the operators are
linear, and a zero row adds nothing to a projection or a Gram matrix), then cut off.
"""

from __future__ import annotations

import jax.numpy as jnp


def bucket(k: int) -> int:
    """``k`` rounded up to a power of two up to 8, then to a multiple of 8: at most 12.5%
    padding above 8 rows, and ``k/8 + 4`` distinct sizes."""
    if k <= 8:
        return 1 << max(0, (k - 1).bit_length()) if k > 0 else 0
    return -(-k // 8) * 8


def pad_rows(a, rows: int):
    """``a`` with zero rows appended up to ``rows``."""
    extra = rows - a.shape[0]
    return a if extra == 0 else jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1))


def pad_to_bucket(a):
    """``a`` with zero rows appended up to ``bucket`` of its row count."""
    return pad_rows(a, bucket(int(a.shape[0])))


def settle(a):
    """``a``, waited for when it lies on several CPU devices.

    XLA's CPU runtime runs the collectives of every program in flight on one shared thread
    pool; many small sharded programs dispatched ahead (a Lanczos step's projections) can
    leave a collective waiting for a thread that never comes (measured: 4 CPU devices on 2
    cores hang within a few hundred projections). Waiting for each result keeps one in
    flight. Accelerators and one device dispatch ahead as usual.
    """
    sharding = getattr(a, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1 and next(iter(sharding.device_set)).platform == "cpu":
        a.block_until_ready()
    return a
