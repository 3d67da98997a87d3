"""Writing trajectory files in the PDEGym layout, atomically (temporary file + rename)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import Float

from symgrad.data import schema
from symgrad.errors import SymgradError
from symgrad.io import CONVENTIONS, atomic_path, commit_file, encode_attr, history, write_error


class DatasetWriter:
    """Stream trajectories into a new data file; the file appears at ``path`` only on success.

    ``with DatasetWriter(path, n_samples, times, nx, ny, gamma=1.4, attrs={...}) as w:``
    then ``w.write_states(start, q)`` (conservative ``(n, t, nx, ny, 4)``) or
    ``w.write_channels(start, c)`` (file layout ``(n, t, 5, nx, ny)``) for consecutive blocks.
    On leaving the block without an exception every sample must have been written; the
    temporary file is then fsynced and renamed onto ``path``. On an exception it is deleted.
    """

    def __init__(self, path, n_samples: int, times, nx: int, ny: int, *, gamma: float, attrs: dict | None = None):
        self.path = Path(path)
        self.n_samples = int(n_samples)
        self.times = np.asarray(times, dtype=np.float64).reshape(-1)
        self.nx, self.ny = int(nx), int(ny)
        self.gamma = float(gamma)
        self.attrs = dict(attrs or {})
        self._written = np.zeros(self.n_samples, dtype=bool)
        self._nc = None
        self._tmp = None

    def __enter__(self) -> "DatasetWriter":
        import netCDF4

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = atomic_path(self.path)
        nc = netCDF4.Dataset(self._tmp, "w", format="NETCDF4")
        self._nc = nc
        n_t = self.times.size
        for name, size in zip(schema.DIMS, (self.n_samples, n_t, len(schema.CHANNELS), self.nx, self.ny)):
            nc.createDimension(name, size)
        sample = nc.createVariable("sample", "i4", ("sample",))  # CF-1.8 has no int64
        sample[:] = np.arange(self.n_samples)
        sample.long_name = "trajectory index"
        time = nc.createVariable("time", "f8", ("time",))
        time[:] = self.times
        time.long_name = "nondimensional simulation time"
        # CF-1.8 wants a time coordinate counted from a reference time: one second stands for
        # one unit of the nondimensional time (docs/data-format.md).
        time.standard_name = "time"
        time.units = schema.TIME_UNITS
        # A char array, not a variable-length string: netCDF-C mishandles vlen strings read
        # through a second handle of an open file (see symgrad.data.reader._HANDLES).
        width = max(len(c) for c in schema.CHANNELS)
        nc.createDimension("channel_strlen", width)
        channel = nc.createVariable("channel", "S1", ("channel", "channel_strlen"))
        channel._Encoding = "utf-8"
        channel[:] = np.array(schema.CHANNELS, dtype=f"U{width}")
        channel.long_name = "; ".join(f"{k}: {v}" for k, v in schema.CHANNEL_LONG_NAMES.items())
        for dim, n in (("x", self.nx), ("y", self.ny)):
            coord = nc.createVariable(dim, "f8", (dim,))
            coord[:] = schema.cell_centres(n)
            coord.long_name = f"{dim} of the cell centre on the periodic unit square"
            coord.units = "1"
        # One chunk per stored state: a random transition reads exactly two chunks.
        data = nc.createVariable(
            schema.DATA_VARIABLE, "f4", schema.DIMS,
            chunksizes=(1, 1, len(schema.CHANNELS), self.nx, self.ny),
        )
        data.long_name = "primitive variables rho, u, v, p and total energy density E"
        data.units = "1"
        attrs = {
            "Conventions": CONVENTIONS,
            "title": "symgrad compressible Euler trajectories",
            "history": history(),
            "format": schema.FORMAT_NAME,
            "format_version": schema.FORMAT_VERSION,
            "gamma": self.gamma,
            "resolution": self.nx if self.nx == self.ny else f"{self.nx}x{self.ny}",
            **self.attrs,
        }
        nc.setncatts({k: encode_attr(v) for k, v in attrs.items()})
        self._data = data
        return self

    def write_channels(self, start: int, block) -> None:
        """Write file-layout values ``(n, t, 5, nx, ny)`` for samples ``start .. start+n-1``."""
        block = np.asarray(block, dtype=np.float32)
        expected = (self.times.size, len(schema.CHANNELS), self.nx, self.ny)
        if block.ndim != 5 or block.shape[1:] != expected:
            raise ValueError(f"block shape {block.shape} does not match (n, *{expected})")
        stop = start + block.shape[0]
        if start < 0 or stop > self.n_samples:
            raise ValueError(f"samples {start}..{stop - 1} outside 0..{self.n_samples - 1}")
        bad = ~np.isfinite(block)
        if bad.any():
            s, t, c, i, j = np.argwhere(bad)[0]
            raise SymgradError(
                f"refusing to write non-finite values to {self.path}: sample {start + s}, time index {t}, "
                f"channel {schema.CHANNELS[c]}, cell ({i}, {j}); the states are not physical"
            )
        self._data[start:stop] = block
        self._written[start:stop] = True

    def write_states(self, start: int, states) -> None:
        """Write conservative states ``(n, t, nx, ny, 4)`` for samples ``start .. start+n-1``."""
        states = np.asarray(states)
        if states.ndim != 5 or states.shape[-1] != 4:
            raise ValueError(f"states must be (n, time, nx, ny, 4), got {states.shape}")
        self.write_channels(start, schema.conservative_to_file_channels(states, self.gamma))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                self._nc.close()
                if exc is not None:
                    raise exc
                if not self._written.all():
                    missing = np.flatnonzero(~self._written)
                    raise ValueError(f"{missing.size} samples were never written (first: {missing[0]})")
                commit_file(self._tmp, self.path)
            except (OSError, RuntimeError) as err:
                failure = write_error(err, self.path)  # a full disk: one line, the path kept as it was
                if failure is None:
                    raise
                raise failure from None
        finally:
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()


def write_dataset(
    path,
    states: Float[np.ndarray, "sample time nx ny 4"],
    times: Float[np.ndarray, " time"],
    *,
    gamma: float = schema.DEFAULT_GAMMA,
    attrs: dict | None = None,
) -> Path:
    """Write conservative ``states`` ``(sample, time, nx, ny, 4)`` as a data file at ``path``.

    PDEGym layout: variable ``data`` ``(sample, time, channel, x, y)`` float32 with channels
    ``(rho, u, v, p, E)``; coordinates ``sample``, ``time``, ``channel``, ``x``, ``y`` (cell
    centres); global attributes ``gamma``, ``resolution`` and ``attrs`` (family, seed, solver
    settings; non-string values are stored as JSON text) over the provenance attributes of
    :func:`symgrad.io.provenance` (creation time, git commit, versions, host). Written to a temporary
    sibling and renamed, so ``path`` never holds a partial file. Non-finite values are refused.
    """
    states = np.asarray(states)
    if states.ndim != 5 or states.shape[-1] != 4:
        raise SymgradError(f"write_dataset expects states of shape (sample, time, nx, ny, 4), got {states.shape}")
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.size != states.shape[1]:
        raise SymgradError(f"{times.size} times given for {states.shape[1]} time levels")
    n, _, nx, ny, _ = states.shape
    from symgrad.io import provenance

    attrs = {**provenance(), **(attrs or {})}
    with DatasetWriter(path, n, times, nx, ny, gamma=gamma, attrs=attrs) as writer:
        if n:
            writer.write_states(0, states)
    return Path(path)


__all__ = ["DatasetWriter", "write_dataset"]
