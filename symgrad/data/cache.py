"""A one-time conversion of trajectory files into one uncompressed, memory-mapped array.

Reading a random transition from netCDF/HDF5 costs a library call per trajectory touched,
under one process-wide lock (netCDF-C is not thread-safe). From the cache it is a copy out
of the page cache, and the data stays on disk: nothing is loaded that is not read.

``CACHE_DIR/<key>.npy`` holds the conservative states ``(sample, time, nx, ny, 4)`` float32
of a :class:`~symgrad.data.reader.TrajectoryDataset`, in its sample order. ``key`` is a hash
of the source files' resolved paths, sizes and modification times, so a changed source makes
a new cache instead of reusing a stale one. The states are read through the dataset (checked
for NaN/Inf and physics on the way) and written to a temporary file that is renamed when
complete: an existing ``<key>.npy`` is a complete cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from symgrad.errors import SymgradError

_BLOCK_TRAJECTORIES = 8  # converted this many at a time: bounded memory
_BLOCK_BYTES = 256 << 20  # and at most about this much of stored states


def cache_key(dataset) -> str:
    sources = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in dataset.paths]
    text = json.dumps({"sources": sources, "shape": [dataset.n_samples, dataset.n_times, *dataset.shape]})
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def open_cache(dataset, directory, *, progress: bool = False) -> np.ndarray:
    """The memory-mapped states of ``dataset`` in ``directory``, converted first if needed.

    A conversion holds ``.<key>.lock``: the temporary files of a conversion killed before
    (``.<key>.npy.tmp-PID``, as large as the cache) are removed under it. A cache that
    cannot be read (cut short) is said so and converted again."""
    from symgrad.io import ExclusiveLock, write_error

    directory = Path(directory)
    path = directory / f"{cache_key(dataset)}.npy"
    shape = (dataset.n_samples, dataset.n_times, *dataset.shape, 4)
    states = _read(path, shape)
    if states is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, directory) or exc from None
        with ExclusiveLock(directory / f".{path.stem}.lock", f"the data cache {path}"):
            states = _read(path, shape)  # converted meanwhile by another run
            if states is None:
                for stale in directory.glob(f".{path.name}.tmp-*"):  # of a killed conversion
                    stale.unlink(missing_ok=True)
                _convert(dataset, path, shape, progress)
                states = _read(path, shape)
    if states is None:  # converted, yet unreadable: the disk, not the data
        raise SymgradError(f"the data cache {path} cannot be read back after its conversion; check the disk, "
                           "or choose another cache directory (data_cache)")
    return states


def _read(path: Path, shape):
    """The memory-mapped cache at ``path``; None when missing, or unreadable (then removed)."""
    if not path.exists():
        return None
    try:
        states = np.load(path, mmap_mode="r")
        if states.shape == shape and states.dtype == np.float32:
            return states
        why = f"it holds {states.dtype}{states.shape}, expected float32{shape}"
    except (OSError, ValueError, EOFError) as exc:  # cut short, or not an .npy file
        why = f"{type(exc).__name__}: {str(exc)[:100]}"
    import sys

    print(f"symgrad: the data cache {path} is damaged ({why}); converting the data again", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None


def _blocks(dataset, shape):
    """``(sample slice, time slice)`` blocks of at most ``_BLOCK_TRAJECTORIES`` trajectories and
    about ``_BLOCK_BYTES`` of stored states: The Well's 512x512 x 101 times are 420 MB per
    trajectory before coarsening, so its blocks are cut in time too."""
    nx, ny = getattr(dataset, "stored_shape", shape[2:4])
    per_state = int(nx) * int(ny) * 4 * 4
    n_times = shape[1]
    n_t = max(1, min(n_times, _BLOCK_BYTES // per_state))
    n_s = max(1, min(_BLOCK_TRAJECTORIES, _BLOCK_BYTES // (per_state * n_times))) if n_t == n_times else 1
    for start in range(0, shape[0], n_s):
        for t0 in range(0, n_times, n_t):
            yield slice(start, min(start + n_s, shape[0])), slice(t0, min(t0 + n_t, n_times))


def _convert(dataset, path: Path, shape, progress: bool) -> None:
    from tqdm.auto import tqdm

    from symgrad import preemption
    from symgrad.io import atomic_write

    directory = path.parent
    nbytes = int(np.prod(shape)) * 4
    free = shutil.disk_usage(directory).free
    if free < nbytes:
        raise SymgradError(f"the data cache needs {nbytes / 2**30:.1f} GiB in {directory}, which has "
                           f"{free / 2**30:.1f} GiB free; free some space or choose another cache directory (data_cache)")
    with atomic_write(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for samples, times in tqdm(list(_blocks(dataset, shape)), desc="data cache", unit="block",
                                   disable=not progress, leave=False):
            preemption.check()  # SIGTERM: stop within one block (the temporary file is removed)
            out[samples, times] = dataset.states(samples, times)
        out.flush()
        del out


__all__ = ["cache_key", "open_cache"]
