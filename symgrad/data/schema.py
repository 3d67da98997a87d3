"""The data-file layout (docs/design.md section 6) and the conversion to the state layout (section 2).

A data file is netCDF4 with one variable ``data`` of dims ``(sample, time, channel, x, y)``,
float32, channels ``(rho, u, v, p, E)``: density, velocity, pressure and total energy
density -- the layout of the PDEGym compressible-Euler datasets. Inside symgrad a state is
``(..., nx, ny, 4)`` conservative ``(rho, m_x, m_y, E)``. This module holds the names and the
two (numpy, float64-internal) conversions between the layouts; it imports no JAX.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from pathlib import Path

import numpy as np

DATA_VARIABLE = "data"
DIMS = ("sample", "time", "channel", "x", "y")
CHANNELS = ("rho", "u", "v", "p", "E")
DEFAULT_GAMMA = 1.4
FORMAT_NAME = "symgrad-euler-trajectories"
FORMAT_VERSION = 1
# The units of the ``time`` coordinate: CF-1.8 counts time from a reference; one second is
# one unit of the nondimensional time. Readers take the numbers as they are stored.
TIME_UNITS = "seconds since 1970-01-01 00:00:00"

# Long names and units written as CF attributes on the variables.
CHANNEL_LONG_NAMES = {
    "rho": "mass density",
    "u": "x-velocity",
    "v": "y-velocity",
    "p": "pressure",
    "E": "total energy density",
}


def cell_centres(n: int) -> np.ndarray:
    """Cell-centre coordinates ``(i + 1/2) / n`` of the periodic unit interval."""
    return (np.arange(n, dtype=np.float64) + 0.5) / n


def conservative_to_file_channels(q: np.ndarray, gamma: float) -> np.ndarray:
    """``(..., nx, ny, 4)`` conservative -> ``(..., 5, nx, ny)`` float32 ``(rho, u, v, p, E)``.

    Computed in float64, rounded once to float32. ``E`` is stored as given (not recomputed
    from the rounded primitives), so density and energy round-trip exactly.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"states must have 4 channels (rho, m_x, m_y, E) last, got shape {q.shape}")
    rho, mx, my, e = (q[..., k] for k in range(4))
    with np.errstate(divide="ignore", invalid="ignore"):
        u = mx / rho
        v = my / rho
        # (mx*u + my*v): the same kinetic-energy form as symgrad.euler.conversions.
        p = (gamma - 1.0) * (e - 0.5 * (mx * u + my * v))
    return np.stack([rho, u, v, p, e], axis=-3).astype(np.float32)


def file_channels_to_conservative(c: np.ndarray) -> np.ndarray:
    """``(..., 5, nx, ny)`` ``(rho, u, v, p, E)`` -> ``(..., nx, ny, 4)`` float32 conservative.

    ``m = rho (u, v)`` in float64 then rounded; ``E`` is the file's energy channel, unchanged
    (the reader has checked it against ``p`` with :func:`first_unphysical`).
    """
    c = np.asarray(c)
    rho = c[..., 0, :, :].astype(np.float64)
    mx = rho * c[..., 1, :, :]
    my = rho * c[..., 2, :, :]
    return np.stack([rho, mx, my, c[..., 4, :, :].astype(np.float64)], axis=-1).astype(np.float32)


def primitive_to_conservative(rho, u, v, p, gamma: float) -> np.ndarray:
    """numpy twin of :func:`symgrad.euler.conversions.primitive_to_conservative` (float64)."""
    rho, u, v, p = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (rho, u, v, p)))
    mx, my = rho * u, rho * v
    return np.stack([rho, mx, my, p / (gamma - 1.0) + 0.5 * (mx * u + my * v)], axis=-1)


# |E - E(p)| / max(1, |E|) allowed in a data file: float32 storage rounds it to ~1e-7, and
# a file whose fifth channel is not the total energy (or whose gamma is wrong) is off by O(1).
ENERGY_RTOL = 1e-4


def energy_mismatch(c: np.ndarray, gamma: float, dtype=np.float64) -> np.ndarray:
    """``|E - (p/(gamma-1) + rho|u|^2/2)| / max(1, |E|)`` per cell for file channels ``(..., 5, nx, ny)``.

    ``dtype=np.float32`` halves the cost on every read; its rounding (~1e-6) is far below
    :data:`ENERGY_RTOL`."""
    c = np.asarray(c, dtype=dtype)
    rho, u, v, p, e = (c[..., k, :, :] for k in range(5))
    e_from_p = p / dtype(gamma - 1.0) + dtype(0.5) * rho * (u * u + v * v)
    return np.abs(e - e_from_p) / np.maximum(dtype(1.0), np.abs(e))


# What makes a stored state non-physical, in the order they are checked: the channel a rule
# is about, what it says, and the rule, vectorised over a whole read block ``(..., 5, nx, ny)``
# and returning a mask over ``(..., nx, ny)``.
UNPHYSICAL = (
    ("rho", "density <= 0", lambda c, gamma: c[..., 0, :, :] <= 0),
    ("p", "pressure <= 0", lambda c, gamma: c[..., 3, :, :] <= 0),
    ("E", f"E inconsistent with p/(gamma-1) + rho|u|^2/2 (relative difference > {ENERGY_RTOL:g})",
     lambda c, gamma: energy_mismatch(c, gamma, np.float32) > ENERGY_RTOL),
)


def first_unphysical(c: np.ndarray, gamma: float) -> tuple[str, tuple[int, ...], int] | None:
    """The first violated rule of :data:`UNPHYSICAL` in finite file channels ``(n, t, 5, nx, ny)``:
    ``(what, (sample, time, i, j), n_trajectories_affected)``, or None when all are physical."""
    for _, what, rule in UNPHYSICAL:
        bad = rule(c, gamma)
        if bad.any():
            first = tuple(int(v) for v in np.argwhere(bad)[0])
            return what, first, int(bad.reshape(bad.shape[0], -1).any(axis=1).sum())
    return None


# The files a directory of data is read for: netCDF (symgrad, PDEGym) and The Well's HDF5.
DATA_SUFFIXES = (".nc", ".hdf5", ".h5")


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that orders ``data_2.nc`` before ``data_10.nc`` (numbers compared as numbers)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", str(path))]


def expand_paths(paths) -> list[Path]:
    """Files named by ``paths``: a file, a directory (its ``*.nc``, ``*.hdf5`` and ``*.h5``),
    a glob, or a list of these.

    Directories and globs are expanded in numeric ("natural") order, so PDEGym's shards
    ``data_0.nc ... data_13.nc`` come in sample order. The Well's split root (a directory
    holding ``train/``, ``valid/``, ``test/``, directly or under ``data/``) gives the files
    of its train, valid and test directories in this order (``symgrad.data.well.split_files``).
    An explicit list keeps its order. Nothing is checked here except that a directory or
    glob matches something.
    """
    from symgrad.data.well import SUFFIXES, split_files
    from symgrad.errors import SymgradError

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for entry in paths:
        text = os.fspath(entry)
        path = Path(text).expanduser()
        splits = split_files(path) if path.is_dir() else None
        if splits is not None:
            out.extend(p for files in splits.values() for p in files)
        elif path.is_dir():
            found = sorted((p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file()),
                           key=natural_key)
            if not found:
                raise SymgradError(f"directory {path} holds no data files (*.nc, or The Well's "
                                   f"{', '.join('*' + s for s in SUFFIXES)}); pass the files or the right directory")
            out.extend(found)
        elif not path.exists() and any(ch in text for ch in "*?["):
            found = sorted((Path(p) for p in _glob.glob(os.path.expanduser(text))), key=natural_key)
            if not found:
                raise SymgradError(f"no data files match {text!r}; check the pattern")
            out.extend(found)
        else:
            out.append(path)
    if not out:
        raise SymgradError("no data files given")
    return out
