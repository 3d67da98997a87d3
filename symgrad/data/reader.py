"""Lazy reading of trajectory files (symgrad's, PDEGym's and The Well's), sharded, into the state layout.

Nothing is loaded at open time except metadata; :meth:`TrajectoryDataset.states` reads
exactly the requested ``(sample, time)`` slices through netCDF4/HDF5 slicing, so a 5 GB
PDEGym shard is never read whole. Every slice read is checked, vectorised, for NaN/Inf and
for non-physical states (``schema.UNPHYSICAL``: rho <= 0, p <= 0, E inconsistent with p), so
bad data stops training or a diagnostic with the file, sample, time and cell, before it is used.

A shard is one file: :class:`_Shard` a netCDF file here, :class:`symgrad.data.well.WellShard`
an HDF5 file of The Well. Both have the same attributes (``path, n_samples, n_times, nx, ny,
times, times_assumed, gamma, attrs, family, layout``) and methods (``read`` in the file
channels ``(rho, u, v, p, E)``, ``read_states`` in the conservative state, ``close``);
:class:`TrajectoryDataset` concatenates shards of either kind and coarsens (docs/design.md
section 6).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from jaxtyping import Float

from symgrad.data import schema
from symgrad.errors import SymgradError

_WHAT_TO_DO = (
    "symgrad reads netCDF4 files with a variable 'data' of dims (sample, time, channel, x, y) "
    "and 5 channels (rho, u, v, p, E), as written by 'symgrad generate' or published by PDEGym"
)


def _runs(sorted_idx: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted unique indices into ``[(start, stop), ...]`` runs of consecutive integers."""
    if sorted_idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [sorted_idx.size]])
    return [(int(sorted_idx[a]), int(sorted_idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def _as_index(idx, n: int, what: str) -> np.ndarray:
    """Normalise an int / slice / sequence / bool mask to a 1-D int array (numpy semantics)."""
    if idx is None:
        return np.arange(n)
    try:
        out = np.arange(n)[idx]
    except IndexError as exc:
        raise SymgradError(f"{what} {idx!r} out of range for {n} {what}s ({exc})") from None
    return np.atleast_1d(out).astype(np.int64)


# netCDF-C and HDF5 are not thread-safe (and netCDF4-python releases the GIL during I/O):
# every netCDF call of this module holds this lock.
_NC_LOCK = threading.RLock()
# One handle per file per process, shared by every dataset that reads the file. Opening a
# file a second time, reading a variable-length string variable through that handle and
# closing it crashes netCDF-C on the next open (seen with netCDF4 1.7.5 / netCDF-C 4.10);
# sharing the handle avoids the double open. Keyed by inode, so a file replaced on disk
# (a regenerated OUT.nc) gets a fresh handle.
_HANDLES: dict[tuple, list] = {}


def _after_fork_in_child() -> None:
    """A forked worker (DataLoader, multiprocessing) inherits the parent's open handles, so
    its own open would be the double open that crashes netCDF-C; and a lock held by another
    thread at fork time would never be released. Start the child clean: its copies of the
    handles are read-only, closing them leaves the parent's alone."""
    global _NC_LOCK
    _NC_LOCK = threading.RLock()
    handles = list(_HANDLES.values())
    _HANDLES.clear()
    for entry in handles:
        try:
            entry[0].close()
        except Exception:  # noqa: BLE001 - best effort on a copy of the parent's handle
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return os.getpid(), st.st_dev, st.st_ino


def _acquire(path: Path):
    import netCDF4

    with _NC_LOCK:
        try:
            key = _file_key(path)
        except OSError as exc:
            raise SymgradError(f"cannot read {path} ({exc}); check the path and its permissions") from None
        entry = _HANDLES.get(key)
        if entry is not None:
            entry[1] += 1
            return entry[0], key
        try:
            nc = netCDF4.Dataset(path, "r")
        except (OSError, RuntimeError, ValueError) as exc:
            raise SymgradError(
                f"cannot open {path} as a netCDF4/HDF5 file ({exc}); the file is corrupt, truncated "
                f"or not netCDF: re-download or regenerate it"
            ) from None
        nc.set_auto_mask(True)
        nc.set_always_mask(False)  # plain ndarrays unless a value is actually masked
        _HANDLES[key] = [nc, 1]
        return nc, key


def _release(key: tuple) -> None:
    with _NC_LOCK:
        entry = _HANDLES.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _HANDLES[key]
            try:
                entry[0].close()
            except RuntimeError:
                pass


class _Shard:
    """One netCDF file: validated metadata at construction, a lazily (re)opened handle."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._nc = None
        self._key = None
        if not self.path.exists():
            raise SymgradError(
                f"data file {self.path} does not exist; check the path, or create it with 'symgrad generate'"
            )
        if not self.path.is_file():
            raise SymgradError(f"{self.path} is not a regular file; pass a netCDF file, a directory of them or a glob")
        with _NC_LOCK:
            nc = self._open()
            try:
                self._inspect(nc)
            finally:
                self.close()

    # -- handle management -------------------------------------------------------------
    def _open(self):
        # HDF5 handles do not survive fork(): a worker process opens its own.
        if self._nc is not None and self._key[0] == os.getpid():
            return self._nc
        self._nc, self._key = _acquire(self.path)
        return self._nc

    def close(self) -> None:
        if self._nc is not None and self._key[0] == os.getpid():
            _release(self._key)
        self._nc = None
        self._key = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_nc"] = None
        state["_key"] = None
        return state

    # -- validation ----------------------------------------------------------------------
    def _inspect(self, nc) -> None:
        name = schema.DATA_VARIABLE
        if name not in nc.variables:
            found = ", ".join(sorted(nc.variables)) or "none"
            raise SymgradError(f"{self.path} has no variable '{name}' (variables: {found}); {_WHAT_TO_DO}")
        var = nc.variables[name]
        if var.ndim != 5:
            raise SymgradError(
                f"variable '{name}' in {self.path} has {var.ndim} dims {var.dimensions} of shape {var.shape}; "
                f"expected 5 dims (sample, time, channel, x, y). {_WHAT_TO_DO}"
            )
        dims = var.dimensions
        if "channel" in dims and dims.index("channel") != 2:
            raise SymgradError(
                f"variable '{name}' in {self.path} has dims {dims}: the channel dim must be the third, "
                f"(sample, time, channel, x, y); transpose the file (e.g. with xarray) first"
            )
        n_samples, n_times, n_channels, nx, ny = (int(s) for s in var.shape)
        if n_channels != len(schema.CHANNELS):
            raise SymgradError(
                f"variable '{name}' in {self.path} has {n_channels} channels (shape {var.shape}); expected "
                f"{len(schema.CHANNELS)}: {', '.join(schema.CHANNELS)}. {_WHAT_TO_DO}"
            )
        if var.dtype.kind != "f":
            raise SymgradError(f"variable '{name}' in {self.path} has dtype {var.dtype}; expected float32")
        self.n_samples, self.n_times, self.nx, self.ny = n_samples, n_times, nx, ny
        self.dims = dims
        self.channel_order = self._channel_order(nc, dims[2])
        self.times, self.times_assumed = self._times(nc, dims[1], n_times)
        self.attrs = {k: nc.getncattr(k) for k in nc.ncattrs()}
        gamma = self.attrs.get("gamma", schema.DEFAULT_GAMMA)
        try:
            gamma = float(gamma)
        except (TypeError, ValueError):
            raise SymgradError(f"{self.path}: attribute gamma={gamma!r} is not a number") from None
        if not gamma > 1.0:
            raise SymgradError(f"{self.path}: attribute gamma={gamma!r} must be > 1")
        self.gamma = gamma
        self.family = str(self.attrs.get("family", "unknown"))
        self.layout = (f"data (sample, time, channel, x, y) = ({n_samples}, {n_times}, 5, {nx}, {ny}), "
                       f"channels {', '.join(schema.CHANNELS)}")

    def _channel_order(self, nc, dim: str):
        """Indices that put the file's channels in (rho, u, v, p, E) order; None = as stored."""
        if dim not in nc.variables:
            return None  # PDEGym: no channel coordinate; the documented order is assumed
        import netCDF4

        raw = np.asarray(nc.variables[dim][:])
        if raw.dtype.kind == "S" and raw.ndim == 2:  # char array (sometimes written by xarray)
            raw = netCDF4.chartostring(raw)
        names = [(x.decode() if isinstance(x, bytes) else str(x)).strip() for x in raw.reshape(-1)]
        if names == list(schema.CHANNELS):
            return None
        lookup = {n.lower(): i for i, n in enumerate(names)}
        if sorted(lookup) == sorted(c.lower() for c in schema.CHANNELS):
            return tuple(lookup[c.lower()] for c in schema.CHANNELS)
        raise SymgradError(
            f"{self.path}: channel coordinate is {names}; expected the channels {list(schema.CHANNELS)} "
            f"(any order). {_WHAT_TO_DO}"
        )

    def _times(self, nc, dim: str, n_times: int):
        for candidate in (dim, "time", "t"):
            var = nc.variables.get(candidate)
            if var is not None and var.ndim == 1 and var.shape[0] == n_times:
                t = np.ma.filled(var[:].astype(np.float64), np.nan)
                if np.all(np.isfinite(t)):
                    return t, False
        # PDEGym files carry no time coordinate: equispaced on [0, 1] is its convention.
        return np.linspace(0.0, 1.0, n_times) if n_times > 1 else np.zeros(n_times), True

    # -- reading -------------------------------------------------------------------------
    def read(self, samples: np.ndarray, times: np.ndarray, global_offset: int,
             check_physics: bool = True) -> np.ndarray:
        """Channels ``(len(samples), len(times), 5, nx, ny)`` float32 in canonical order.

        ``samples`` and ``times`` are sorted unique local indices. Non-finite values are always
        an error; non-physical ones too unless ``check_physics`` is False (``info --check``,
        which counts every problem instead of stopping at the first).
        """
        out = np.empty((samples.size, times.size, 5, self.nx, self.ny), dtype=np.float32)
        time_runs = _runs(times)
        t_sel = slice(time_runs[0][0], time_runs[0][1]) if len(time_runs) == 1 else times.tolist()
        with _NC_LOCK:
            var = self._open().variables[schema.DATA_VARIABLE]
            pos = 0
            for a, b in _runs(samples):
                try:
                    block = var[a:b, t_sel]
                except (OSError, RuntimeError, IndexError) as exc:
                    raise SymgradError(
                        f"reading samples {a}..{b - 1} of {self.path} failed ({exc}); the file is corrupt or "
                        f"truncated: re-download or regenerate it"
                    ) from None
                if np.ma.isMaskedArray(block):
                    block = np.ma.filled(block.astype(np.float32), np.nan)
                out[pos:pos + (b - a)] = block
                pos += b - a
        bad = ~np.isfinite(out)
        if bad.any():
            s, t, c, i, j = (int(v) for v in np.argwhere(bad)[0])
            local = int(samples[s])
            raise SymgradError(
                f"{self.path} holds non-finite values (NaN, Inf or unwritten fill values): sample {local} "
                f"(dataset sample {global_offset + local}), time index {int(times[t])}, "
                f"channel {schema.CHANNELS[c]}, cell ({i}, {j}); "
                f"{int(bad.any(axis=(1, 2, 3, 4)).sum())} of {samples.size} trajectories read are affected. "
                f"Regenerate the file or leave these trajectories out"
            )
        if self.channel_order is not None:
            out = out[:, :, list(self.channel_order)]
        problem = schema.first_unphysical(out, self.gamma) if check_physics else None
        if problem is not None:
            what, (s, t, i, j), affected = problem
            local = int(samples[s])
            raise SymgradError(
                f"{self.path} holds non-physical values: {what} at sample {local} (dataset sample "
                f"{global_offset + local}), time index {int(times[t])}, cell ({i}, {j}); {affected} of "
                f"{samples.size} trajectories read are affected. Regenerate or repair the file "
                f"('symgrad info --check {self.path}' lists every problem)"
            )
        return out

    def read_states(self, samples: np.ndarray, times: np.ndarray, global_offset: int,
                    check_physics: bool = True) -> np.ndarray:
        """Conservative states ``(n, t, nx, ny, 4)`` (``schema.file_channels_to_conservative``)."""
        return schema.file_channels_to_conservative(self.read(samples, times, global_offset, check_physics))


class TrajectoryDataset:
    """Trajectories from one or more data files, concatenated along ``sample``; lazy.

    Built by :func:`open_dataset`. All files must share times and grid; netCDF files also
    gamma. Files of The Well may differ in gamma (The Well publishes one file per gas): each
    file's gamma checks its own data.

    Attributes:
        n_samples, n_times: number of trajectories and of stored times per trajectory.
        resolution: ``nx`` (int) for a square grid, else ``(nx, ny)``; ``shape`` is ``(nx, ny)``,
            after coarsening by ``coarsen`` (``stored_shape`` as in the files).
        gamma: ratio of specific heats (file attribute ``gamma``, 1.4 where absent in a netCDF
            file); an error when the files hold several gases (``gammas``: each file's).
        times: ``(n_times,)`` float64 (equispaced on [0, 1] where a file has no time
            coordinate; ``times_assumed`` says so).
        paths: the files, in sample order.
        attrs: the global attributes of each file (list of dicts).
    """

    def __init__(self, shards: list, coarsen: int = 1):
        from symgrad.data.coarsen import check_factor
        from symgrad.data.well import WellShard

        if not shards:
            raise SymgradError("no data files given")
        first = shards[0]
        for other in shards[1:]:
            problems = []
            if (other.n_times, other.nx, other.ny) != (first.n_times, first.nx, first.ny):
                problems.append(
                    f"(time, x, y) sizes {(other.n_times, other.nx, other.ny)} vs {(first.n_times, first.nx, first.ny)}"
                )
            elif not np.allclose(other.times, first.times, rtol=1e-6, atol=1e-9):
                problems.append(f"times {other.times.tolist()} vs {first.times.tolist()}")
            both_well = isinstance(other, WellShard) and isinstance(first, WellShard)
            if not both_well and not np.isclose(other.gamma, first.gamma, rtol=1e-12):
                problems.append(f"gamma {other.gamma} vs {first.gamma}")
            if problems:
                raise SymgradError(
                    f"data files do not fit together: {other.path} and {first.path} differ in "
                    f"{'; '.join(problems)}. Only files with the same times, grid and gamma can be combined"
                    " (files of The Well may differ in gamma)"
                )
        check_factor(coarsen, (first.nx, first.ny), f"{first.path}")
        self.coarsen = int(coarsen)
        self._shards = list(shards)
        counts = np.array([s.n_samples for s in shards], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])

    # -- metadata ------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self._offsets[-1])

    @property
    def n_times(self) -> int:
        return self._shards[0].n_times

    @property
    def stored_shape(self) -> tuple[int, int]:
        """``(nx, ny)`` as stored in the files, before coarsening."""
        return self._shards[0].nx, self._shards[0].ny

    @property
    def shape(self) -> tuple[int, int]:
        nx, ny = self.stored_shape
        return nx // self.coarsen, ny // self.coarsen

    @property
    def resolution(self):
        nx, ny = self.shape
        return nx if nx == ny else (nx, ny)

    @property
    def gammas(self) -> list[float]:
        """Each file's gamma, in the order of :attr:`paths`."""
        return [s.gamma for s in self._shards]

    @property
    def gamma(self) -> float:
        values = sorted(set(self.gammas))
        if len(values) > 1:
            raise SymgradError(
                f"the data hold several gases (gamma {', '.join(f'{g:g}' for g in values)}, one per file) where one "
                "gamma is needed; pass the files of one gas")
        return values[0]

    @property
    def times(self) -> np.ndarray:
        return self._shards[0].times.copy()

    @property
    def times_assumed(self) -> bool:
        return any(s.times_assumed for s in self._shards)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self._shards]

    @property
    def attrs(self) -> list[dict]:
        return [dict(s.attrs) for s in self._shards]

    @property
    def layouts(self) -> list[str]:
        """How each file stores its data, in one line (``symgrad info``)."""
        return [s.layout for s in self._shards]

    @property
    def sample_counts(self) -> list[int]:
        """Trajectories per file, in the order of :attr:`paths`."""
        return [s.n_samples for s in self._shards]

    @property
    def families(self) -> list[str]:
        """The ``family`` attribute of each file (``"unknown"`` where absent; The Well's
        ``dataset_name``)."""
        return [s.family for s in self._shards]

    @property
    def family(self) -> str:
        """The family, or ``"A+B"`` for a combination of families in file order."""
        return "+".join(dict.fromkeys(self.families))

    def locate(self, sample: int) -> tuple[Path, int]:
        """``(file, index within the file)`` of dataset sample ``sample``."""
        g = int(_as_index(sample, self.n_samples, "sample")[0])
        k = int(np.searchsorted(self._offsets, g, side="right") - 1)
        return self._shards[k].path, g - int(self._offsets[k])

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        nx, ny = self.shape
        gammas = ", ".join(f"{g:g}" for g in sorted(set(self.gammas)))
        coarse = f", coarsened {self.coarsen}x{self.coarsen}" if self.coarsen > 1 else ""
        return (
            f"TrajectoryDataset({self.n_samples} trajectories x {self.n_times} times on {nx}x{ny}{coarse}, "
            f"gamma={gammas}, family={self.family}, {len(self._shards)} file(s))"
        )

    # -- reading -------------------------------------------------------------------------
    def _gather(self, sample_indices, time_indices, tail: tuple, read) -> np.ndarray:
        """``(n, t, *tail)`` float32 from ``read(shard, local samples, times, offset)`` per file."""
        samples = _as_index(sample_indices, self.n_samples, "sample")
        times = _as_index(time_indices, self.n_times, "time index")
        out = np.empty((samples.size, times.size, *tail), dtype=np.float32)
        if samples.size == 0 or times.size == 0:
            return out
        u_times, t_inverse = np.unique(times, return_inverse=True)
        shard_of = np.searchsorted(self._offsets, samples, side="right") - 1
        for k in np.unique(shard_of):
            positions = np.flatnonzero(shard_of == k)
            local = samples[positions] - self._offsets[k]
            u_local, s_inverse = np.unique(local, return_inverse=True)
            block = read(self._shards[k], u_local, u_times, int(self._offsets[k]))
            out[positions] = block[s_inverse][:, t_inverse]
        return out

    def read_channels(self, sample_indices, time_indices=None, *,
                      check_physics: bool = True) -> Float[np.ndarray, "n t 5 nx ny"]:
        """File-layout values ``(n, t, 5, nx, ny)`` float32, channels ``(rho, u, v, p, E)``.

        Indices follow numpy semantics (int, slice, sequence, negative numbers, repeats);
        an int gives ``n = 1``. Only the requested slices are read; they are checked for NaN/Inf
        and, unless ``check_physics`` is False, for non-physical states (module docstring).
        Coarsened data are the primitive channels of the coarsened state (each file's gamma
        gives the pressure).
        """
        from symgrad.data.coarsen import coarsen

        def read(shard, samples, times, offset):
            if self.coarsen == 1:
                return shard.read(samples, times, offset, check_physics)
            states = coarsen(shard.read_states(samples, times, offset, check_physics), self.coarsen)
            return schema.conservative_to_file_channels(states, shard.gamma)

        return self._gather(sample_indices, time_indices, (5, *self.shape), read)

    def states(self, sample_indices, time_indices=None) -> Float[np.ndarray, "n t nx ny 4"]:
        """Conservative states ``(n, t, nx, ny, 4)`` float32 ``(rho, m_x, m_y, E)``, each file's
        as read (checked at the stored resolution), then coarsened by :attr:`coarsen`."""
        from symgrad.data.coarsen import coarsen

        def read(shard, samples, times, offset):
            return coarsen(shard.read_states(samples, times, offset), self.coarsen)

        return self._gather(sample_indices, time_indices, (*self.shape, 4), read)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> "TrajectoryDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_dataset(paths, coarsen: int = 1) -> TrajectoryDataset:
    """Open data files lazily: a path, a directory, a glob, or a list of these.

    ``*.nc`` files are netCDF (symgrad's and PDEGym's layout), ``*.hdf5`` / ``*.h5`` files
    The Well's (:mod:`symgrad.data.well`). Several files -- PDEGym's shards ``data_0.nc ...
    data_13.nc``, files of different families such as CE-RP, CE-RPUI and CE-CRP, The Well's
    files of several gases -- are concatenated along ``sample`` in the order given
    (directories and globs in numeric order; The Well's split root: its ``train``, ``valid``,
    ``test`` files in this order). ``coarsen`` averages ``coarsen x coarsen`` blocks of cells
    (:mod:`symgrad.data.coarsen`). Raises :class:`SymgradError` naming the file for a missing
    file, a file of neither layout, a corrupt file, or files that do not fit together.
    """
    from symgrad.data.well import WellShard, is_well_file

    if isinstance(paths, TrajectoryDataset):
        if coarsen != paths.coarsen:
            raise ValueError(f"dataset coarsened by {paths.coarsen}, asked for {coarsen}")
        return paths
    shards = [WellShard(p) if is_well_file(p) else _Shard(p) for p in schema.expand_paths(paths)]
    return TrajectoryDataset(shards, coarsen)


__all__ = ["TrajectoryDataset", "open_dataset"]
