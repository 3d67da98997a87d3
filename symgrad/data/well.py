"""Reading The Well's HDF5 files (Ohana et al., NeurIPS 2024) unchanged: one file, lazily.

The Well's data-format specification (PolymathicAI/the_well, ``docs/data_format.md``): one
HDF5 file per parameter set (for ``euler_multi_quadrants_periodicBC``: per gas), in
``train/``, ``valid/`` and ``test/`` directories. Root attributes ``dataset_name``,
``grid_type``, ``n_spatial_dims``, ``n_trajectories``, ``simulation_parameters`` and each
parameter (``gamma``) as its own attribute; groups ``dimensions`` (``time`` (T,), ``x`` (W,),
``y`` (H,), attribute ``spatial_dims``), ``boundary_conditions`` (one group per boundary,
``bc_type``), ``scalars``, ``t0_fields`` (``density``, ``energy``, ``pressure``: ``(B, T, W,
H)``), ``t1_fields`` (``momentum``: ``(B, T, W, H, 2)``) and ``t2_fields``. The spatial axes
of a field follow ``dimensions.spatial_dims``; The Well's own reader builds its grid with
``meshgrid(x, y, indexing="ij")``, so axis 2 is x and axis 3 is y, and momentum's last axis
holds (m_x, m_y): exactly symgrad's ``(..., nx, ny)`` state layout, which this reader checks
against the ``dimensions`` group rather than assumes.

:class:`WellShard` is the Well twin of the netCDF reader's shard (``symgrad.data.reader``):
the same attributes and ``read`` / ``read_states`` methods, so ``open_dataset`` serves both
behind one interface. The state ``(rho, m_x, m_y, E)`` is the file's ``density``,
``momentum`` and ``energy``, bit for bit; ``pressure`` is used for the physics checks (with
the file's own gamma). ``docs/data-format.md``, "The Well".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from symgrad.data import schema
from symgrad.errors import SymgradError

SUFFIXES = (".hdf5", ".h5")  # what The Well's own reader globs for
# The Well's split directories, and the name of each split in symgrad (symgrad.data.SPLITS).
SPLIT_DIRS = {"train": "train", "valid": "val", "test": "test"}
GRID_TYPE = "cartesian"
SPATIAL_DIMS = ("x", "y")
SCALAR_FIELDS = ("energy", "density", "pressure")  # t0_fields, in the published order
VECTOR_FIELDS = ("momentum",)  # t1_fields; components in the order of spatial_dims
GROUPS = ("dimensions", "boundary_conditions", "scalars", "t0_fields", "t1_fields", "t2_fields")
ROOT_ATTRS = ("dataset_name", "grid_type", "n_spatial_dims", "n_trajectories", "simulation_parameters")
PERIODIC = "periodic"
GAMMA = "gamma"

_WHAT_TO_DO = ("symgrad reads The Well's 2-D periodic compressible-Euler files "
               "(euler_multi_quadrants_periodicBC) as published")


def is_well_file(path) -> bool:
    """A file of The Well's layout, by name (``*.hdf5``, ``*.h5``); netCDF files are ``*.nc``."""
    return Path(path).suffix.lower() in SUFFIXES


def text(value) -> str:
    """An HDF5 string attribute as ``str`` (h5py gives ``str``, ``bytes`` or a 0-d array)."""
    value = np.asarray(value).reshape(-1)[0] if isinstance(value, np.ndarray) else value
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(value) -> list[str]:
    """An HDF5 list-of-strings attribute as ``list[str]`` (a lone string gives one entry)."""
    if isinstance(value, (str, bytes)):
        return [text(value)]
    return [text(v) for v in np.asarray(value).reshape(-1)]


def _files(directory: Path) -> list[Path]:
    return sorted((p for p in directory.iterdir() if p.is_file() and is_well_file(p)), key=schema.natural_key)


def split_dirs(path) -> dict[str, Path] | None:
    """The split directories of The Well under ``path``, by symgrad's split name, or None.

    ``path`` is The Well's split root when it holds ``train/``, ``valid/`` or ``test/``
    directories of ``*.hdf5`` files, directly or under ``data/`` (the layout that
    ``the-well-download`` writes: ``BASE/datasets/NAME/data/{train,valid,test}``).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        return None
    for root in (path, path / "data"):
        found = {ours: root / theirs for theirs, ours in SPLIT_DIRS.items()
                 if (root / theirs).is_dir() and _files(root / theirs)}
        if found:
            return found
    return None


def split_files(path) -> dict[str, list[Path]] | None:
    """The files of each split (``train``, ``val``, ``test``; empty where a split directory
    is missing) of The Well's split root ``path``, or None when ``path`` is not one."""
    dirs = split_dirs(path)
    if dirs is None:
        return None
    return {name: (_files(dirs[name]) if name in dirs else []) for name in SPLIT_DIRS.values()}


class WellShard:
    """One file of The Well: validated at construction, a lazily (re)opened h5py handle.

    Attributes as the netCDF shard's: ``path``, ``n_samples``, ``n_times``, ``nx``, ``ny``,
    ``times`` (float64), ``times_assumed`` (False), ``gamma``, ``attrs`` (root attributes),
    ``family`` (``dataset_name``) and ``layout`` (one line for ``symgrad info``).
    """

    times_assumed = False

    def __init__(self, path):
        self.path = Path(path)
        self._h5 = None
        self._pid = None
        if not self.path.exists():
            raise SymgradError(f"data file {self.path} does not exist; check the path, or download it with "
                               "'the-well-download' (docs/reproduction.md)")
        if not self.path.is_file():
            raise SymgradError(f"{self.path} is not a regular file; pass an HDF5 file of The Well, its split "
                               "directory or a glob")
        try:
            self._inspect(self._open())
        finally:
            self.close()

    # -- handle management -------------------------------------------------------------
    def _open(self):
        # HDF5 handles do not survive fork(): a worker process opens its own.
        if self._h5 is not None and self._pid == os.getpid():
            return self._h5
        import h5py

        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise SymgradError(
                f"cannot open {self.path} as an HDF5 file ({exc}); the file is corrupt, truncated or not "
                "HDF5: re-download it") from None
        self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            try:
                self._h5.close()
            except Exception:  # noqa: BLE001 - a handle of a dead file: nothing to release
                pass
        self._h5 = None
        self._pid = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    # -- validation ----------------------------------------------------------------------
    def _refuse(self, what: str) -> SymgradError:
        return SymgradError(f"{self.path}: {what}; {_WHAT_TO_DO}")

    def _inspect(self, f) -> None:
        import h5py

        for name in ROOT_ATTRS:
            if name not in f.attrs:
                raise self._refuse(f"no root attribute '{name}', so this is not a file of The Well's layout")
        for name in GROUPS:
            if not isinstance(f.get(name), h5py.Group):
                raise self._refuse(f"no group '{name}', so this is not a file of The Well's layout")
        grid = text(f.attrs["grid_type"])
        if grid.lower() != GRID_TYPE:
            raise self._refuse(f"grid_type is '{grid}', not 'cartesian'")
        n_dims = int(np.asarray(f.attrs["n_spatial_dims"]).reshape(-1)[0])
        if n_dims != 2:
            raise self._refuse(f"n_spatial_dims is {n_dims}: symgrad reads 2-D data only")

        dims = f["dimensions"]
        spatial = texts(dims.attrs.get("spatial_dims", []))
        if tuple(spatial) != SPATIAL_DIMS:
            raise self._refuse(f"dimensions.spatial_dims is {spatial}; symgrad reads the axes (x, y) in this order")
        for name in ("time", *SPATIAL_DIMS):
            if name not in dims or dims[name].ndim != 1:
                raise self._refuse(f"dimensions has no 1-D dataset '{name}' (sample-varying grids are not read)")
        n_times, nx, ny = (int(dims[name].shape[0]) for name in ("time", *SPATIAL_DIMS))
        self.times = np.asarray(dims["time"][:], dtype=np.float64)
        if not np.all(np.isfinite(self.times)):
            raise self._refuse("dimensions/time holds non-finite values")

        self._check_periodic(f["boundary_conditions"])
        n_samples = int(np.asarray(f.attrs["n_trajectories"]).reshape(-1)[0])
        expected = {0: (n_samples, n_times, nx, ny), 1: (n_samples, n_times, nx, ny, 2)}
        for order, names in ((0, SCALAR_FIELDS), (1, VECTOR_FIELDS)):
            group = f[f"t{order}_fields"]
            for name in names:
                field = group.get(name)
                if not isinstance(field, h5py.Dataset):
                    present = ", ".join(sorted(group)) or "none"
                    raise self._refuse(f"lacks the field t{order}_fields/{name} (fields there: {present})")
                if field.shape != expected[order] or field.dtype.kind != "f":
                    raise self._refuse(
                        f"t{order}_fields/{name} has shape {field.shape} and dtype {field.dtype}; expected float "
                        f"{expected[order]} (n_trajectories, time, x, y{', component' if order else ''}) from "
                        "n_trajectories and the dimensions group")
                for flag in ("sample_varying", "time_varying"):
                    if flag in field.attrs and not bool(np.asarray(field.attrs[flag]).all()):
                        raise self._refuse(f"t{order}_fields/{name} has {flag} = False; symgrad reads fields that "
                                           "vary over trajectories and time")
        self.n_samples, self.n_times, self.nx, self.ny = n_samples, n_times, nx, ny
        self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
        self.family = text(f.attrs["dataset_name"])
        self.gamma = self._gamma(f)
        self.layout = (f"The Well: t0_fields {', '.join(SCALAR_FIELDS)} (sample, time, x, y) = "
                       f"({n_samples}, {n_times}, {nx}, {ny}), t1_fields momentum (..., 2)")

    def _check_periodic(self, bcs) -> None:
        covered = set()
        for name in bcs:
            bc = bcs[name]
            kind = text(bc.attrs.get("bc_type", "unknown"))
            if kind.lower() != PERIODIC:
                raise self._refuse(f"boundary '{name}' has bc_type '{kind}', not periodic: symgrad's surrogates and "
                                   "symmetry groups act on the periodic square (use euler_multi_quadrants_periodicBC)")
            covered.update(texts(bc.attrs.get("associated_dims", [])))
        missing = [d for d in SPATIAL_DIMS if d not in covered]
        if missing:
            raise self._refuse(f"boundary_conditions declares no periodic boundary in {', '.join(missing)}: "
                               "symgrad needs the periodic square")

    def _gamma(self, f) -> float:
        params = texts(f.attrs["simulation_parameters"])
        if GAMMA in f.attrs:
            raw = f.attrs[GAMMA]
        elif GAMMA in f["scalars"]:
            raw = f["scalars"][GAMMA][()]
        else:
            raise self._refuse(f"no parameter 'gamma' (simulation_parameters: {params}): the adiabatic index is "
                               "needed for the pressure")
        try:
            gamma = float(np.asarray(raw, dtype=np.float64).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            raise self._refuse(f"gamma {raw!r} is not a number") from None
        if not gamma > 1.0:
            raise self._refuse(f"gamma {gamma} must be > 1")
        return gamma

    # -- reading -------------------------------------------------------------------------
    def _fields(self, samples: np.ndarray, times: np.ndarray, names) -> dict[str, np.ndarray]:
        """The named fields' values at the sorted unique ``samples`` and ``times``."""
        from symgrad.data.reader import _runs

        t_runs = _runs(times)
        t_sel = slice(*t_runs[0]) if len(t_runs) == 1 else times.tolist()
        f = self._open()
        out = {}
        for name in names:
            var = f["t1_fields" if name in VECTOR_FIELDS else "t0_fields"][name]
            parts = []
            for a, b in _runs(samples):
                try:
                    parts.append(np.asarray(var[a:b, t_sel], dtype=np.float32))
                except (OSError, RuntimeError, ValueError) as exc:
                    raise SymgradError(
                        f"reading {name} of samples {a}..{b - 1} of {self.path} failed ({exc}); the file is "
                        "corrupt or truncated: re-download it") from None
            out[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return out

    def _checked(self, samples, times, global_offset: int, check_physics: bool):
        """``(states (n, t, nx, ny, 4), channels (n, t, 5, nx, ny))`` float32, checked."""
        v = self._fields(samples, times, ("density", "momentum", "energy", "pressure"))
        states = np.concatenate([v["density"][..., None], v["momentum"], v["energy"][..., None]], axis=-1)
        for name, block in v.items():
            bad = ~np.isfinite(block)
            if bad.any():
                s, t, i, j = (int(x) for x in np.argwhere(bad)[0][:4])
                raise SymgradError(
                    f"{self.path} holds non-finite values in {name}: sample {int(samples[s])} (dataset sample "
                    f"{global_offset + int(samples[s])}), time index {int(times[t])}, cell ({i}, {j}); re-download "
                    "the file or leave these trajectories out")
        with np.errstate(divide="ignore", invalid="ignore"):
            u, w = (v["momentum"][..., k] / v["density"] for k in (0, 1))
        channels = np.stack([v["density"], u, w, v["pressure"], v["energy"]], axis=2)
        problem = schema.first_unphysical(channels, self.gamma) if check_physics else None
        if problem is not None:
            what, (s, t, i, j), affected = problem
            raise SymgradError(
                f"{self.path} holds non-physical values: {what} (gamma {self.gamma:g}) at sample {int(samples[s])} "
                f"(dataset sample {global_offset + int(samples[s])}), time index {int(times[t])}, cell ({i}, {j}); "
                f"{affected} of {samples.size} trajectories read are affected ('symgrad info --check {self.path}' "
                "lists every problem)")
        return states, channels

    def read_states(self, samples: np.ndarray, times: np.ndarray, global_offset: int,
                    check_physics: bool = True) -> np.ndarray:
        """Conservative states ``(n, t, nx, ny, 4)``: ``density``, ``momentum``, ``energy`` as stored."""
        return self._checked(samples, times, global_offset, check_physics)[0]

    def read(self, samples: np.ndarray, times: np.ndarray, global_offset: int,
             check_physics: bool = True) -> np.ndarray:
        """File channels ``(n, t, 5, nx, ny)`` ``(rho, u, v, p, E)``: ``u = m_x / rho``, the file's ``pressure``."""
        return self._checked(samples, times, global_offset, check_physics)[1]


def _plain(value):
    """An attribute value as plain Python (str, number, list), for ``attrs`` and ``info``."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["SPLIT_DIRS", "SUFFIXES", "WellShard", "is_well_file", "split_dirs", "split_files"]
