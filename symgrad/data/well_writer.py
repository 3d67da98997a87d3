"""Writing trajectories in The Well's HDF5 layout (``symgrad export --format well``).

One file per gas, every group and attribute of The Well's data-format specification
(``symgrad.data.well`` names them), as ``euler_multi_quadrants_periodicBC`` publishes them:
``t0_fields`` ``energy``, ``density``, ``pressure`` ``(B, T, W, H)`` and ``t1_fields``
``momentum`` ``(B, T, W, H, 2)`` float32, axes (x, y), periodic boundaries in x and y,
``gamma`` as a simulation parameter (root attribute and constant scalar). Density,
momentum and energy are the states as given, bit for bit; pressure is computed in float64
with the file's gamma and rounded once. Written trajectory by trajectory to a temporary
sibling, fsynced and renamed: ``path`` never holds a partial file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from symgrad.data import schema, well
from symgrad.errors import SymgradError
from symgrad.io import atomic_write


def _strings(values) -> np.ndarray:
    import h5py

    return np.array(list(values), dtype=h5py.string_dtype())


def _varying(obj, *, sample: bool, time: bool | None, dims: bool = False) -> None:
    obj.attrs["sample_varying"] = sample
    if time is not None:
        obj.attrs["time_varying"] = time
    if dims:
        obj.attrs["dim_varying"] = np.array([True, True])


def _layout(f, n: int, times: np.ndarray, nx: int, ny: int, gamma: float, name: str, attrs: dict) -> dict:
    """Every group and attribute of the specification; returns the field datasets by name."""
    f.attrs["dataset_name"] = name
    f.attrs["grid_type"] = well.GRID_TYPE
    f.attrs["n_spatial_dims"] = 2
    f.attrs["n_trajectories"] = n
    f.attrs["simulation_parameters"] = _strings([well.GAMMA])
    f.attrs[well.GAMMA] = gamma
    for key, value in attrs.items():
        f.attrs[key] = value

    dims = f.create_group("dimensions")
    dims.attrs["spatial_dims"] = _strings(well.SPATIAL_DIMS)
    dims.create_dataset("time", data=np.asarray(times, dtype=np.float32))
    _varying(dims["time"], sample=False, time=None)
    for dim, size in zip(well.SPATIAL_DIMS, (nx, ny)):
        dims.create_dataset(dim, data=schema.cell_centres(size).astype(np.float32))
        _varying(dims[dim], sample=False, time=False)

    bcs = f.create_group("boundary_conditions")
    for dim, size in zip(well.SPATIAL_DIMS, (nx, ny)):
        bc = bcs.create_group(f"{dim}_periodic")
        bc.attrs["associated_dims"] = _strings([dim])
        bc.attrs["associated_fields"] = _strings([])
        bc.attrs["bc_type"] = well.PERIODIC.upper()  # as the published files (readers compare case-insensitively)
        _varying(bc, sample=False, time=False)
        mask = np.zeros(size, dtype=bool)
        mask[[0, -1]] = True  # the boundary lies at the first and the last cell
        bc.create_dataset("mask", data=mask)
        bc.create_dataset("values", data=np.zeros(int(mask.sum()), dtype=np.float32))  # none for periodic

    scalars = f.create_group("scalars")
    scalars.attrs["field_names"] = _strings([well.GAMMA])
    scalars.create_dataset(well.GAMMA, data=np.array([gamma], dtype=np.float32))
    _varying(scalars[well.GAMMA], sample=False, time=False)

    fields = {}
    chunk = (1, 1, nx, ny)  # one chunk per stored state: a transition reads two per field
    t0 = f.create_group("t0_fields")
    t0.attrs["field_names"] = _strings(well.SCALAR_FIELDS)
    for field in well.SCALAR_FIELDS:
        fields[field] = t0.create_dataset(field, shape=(n, times.size, nx, ny), dtype=np.float32,
                                          chunks=chunk if n else None)
        _varying(fields[field], sample=True, time=True, dims=True)
    t1 = f.create_group("t1_fields")
    t1.attrs["field_names"] = _strings(well.VECTOR_FIELDS)
    for field in well.VECTOR_FIELDS:
        fields[field] = t1.create_dataset(field, shape=(n, times.size, nx, ny, 2), dtype=np.float32,
                                          chunks=(*chunk, 2) if n else None)
        _varying(fields[field], sample=True, time=True, dims=True)
    t2 = f.create_group("t2_fields")
    t2.attrs["field_names"] = _strings([])
    return fields


def write_well(path, dataset, *, dataset_name: str | None = None, attrs: dict | None = None) -> Path:
    """Write every trajectory of ``dataset`` (a :class:`symgrad.data.TrajectoryDataset`, one
    gas) as one file of The Well's layout at ``path`` (``*.hdf5``), atomically.

    ``dataset_name`` defaults to ``symgrad_<family>``; ``attrs`` are extra root attributes
    (strings or numbers: provenance). Refuses data of several gases (one file holds one gamma).
    """
    import h5py

    path = Path(path)
    if not well.is_well_file(path):
        raise SymgradError(f"{path}: a file of The Well's layout must be named *.hdf5 or *.h5 (The Well's readers "
                           "look for these)")
    gamma = dataset.gamma  # one gas per file, as The Well
    name = dataset_name or f"symgrad_{dataset.family}"
    nx, ny = dataset.shape
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        fields = _layout(f, dataset.n_samples, dataset.times, nx, ny, gamma, name, dict(attrs or {}))
        for i in range(dataset.n_samples):
            q = np.asarray(dataset.states(i), dtype=np.float32)[0]  # (time, nx, ny, 4)
            channels = schema.conservative_to_file_channels(q, gamma)  # pressure: float64, rounded once
            fields["density"][i] = q[..., 0]
            fields["momentum"][i] = q[..., 1:3]
            fields["energy"][i] = q[..., 3]
            fields["pressure"][i] = channels[:, 3]
    return path


__all__ = ["write_well"]
