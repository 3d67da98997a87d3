"""Multi-process start-up and per-process batch feeding.

Every process runs the same program over the same global mesh. A global batch of
``B`` transition indices is cut into ``process_count`` contiguous slices; process ``p``
loads only its slice and :func:`global_batch` assembles the global sharded array with
``jax.make_array_from_process_local_data``. With one process this is the whole batch,
so the single-process path is the same code.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from symgrad.errors import SymgradError

_initialized = False


def under_slurm() -> bool:
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Call ``jax.distributed.initialize`` when needed; return True if it was called.

    Explicit ``coordinator`` (host:port), ``num_processes`` and ``process_id`` win; else a
    multi-task SLURM job is detected from its environment (jax reads it itself); else this
    is a single process and nothing happens. Must run before any other jax call.
    """
    global _initialized
    if _initialized:
        return True
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise SymgradError(
                "multi-process training needs all of --coordinator HOST:PORT, "
                "--num-processes N and --process-id I (or run under SLURM with several tasks)"
            )
        if num_processes == 1:
            return False
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=num_processes, process_id=process_id)
    elif under_slurm():
        jax.distributed.initialize()
    else:
        return False
    _initialized = True
    return True


def is_primary() -> bool:
    return jax.process_index() == 0


def local_slice(global_size: int) -> slice:
    """This process's contiguous share of a global batch of ``global_size`` rows."""
    n = jax.process_count()
    if global_size % n:
        raise SymgradError(f"global batch {global_size} is not divisible by {n} processes")
    k = global_size // n
    p = jax.process_index()
    return slice(p * k, (p + 1) * k)


def global_batch(sharding, local_arrays, global_size: int):
    """Assemble per-process local rows into global arrays sharded by ``sharding``."""
    return tuple(
        jax.make_array_from_process_local_data(
            sharding, np.asarray(a), (global_size,) + tuple(np.shape(a)[1:]))
        for a in local_arrays
    )


def fetch(x) -> np.ndarray:
    """A replicated (or fully addressable) array as numpy on every process."""
    return np.asarray(jax.device_get(x.addressable_data(0) if hasattr(x, "addressable_data") else x))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process, on every process alike (a SIGTERM reaches the
    processes at different moments; one that stopped while another went on would hang the
    other in their next collective)."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
