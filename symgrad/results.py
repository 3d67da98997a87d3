"""Diagnostic result files: their one schema, their statistics, and merging many of them.

**Schema** (docs/design.md section 6). Every diagnostic writes its dataset through
:func:`finish_result`:

- attributes ``Conventions = "CF-1.8"``, ``title`` and the provenance (``symgrad.io.provenance``,
  with ``command`` the subcommand that wrote the file);
- scalar coordinates ``diagnostic``, ``group``, ``model``, ``preset``, ``seed`` and ``family``
  (:data:`RESULT_COORDS`), so that ``xr.concat`` of files of several models works;
- ``sample``: the test trajectory index in the data files;
- ``NAME_stats`` over ``stat`` (:data:`TUKEY_STATS`) for every per-sample variable that
  figures draw: the statistics are computed once, here, and figures redraw them exactly.

:func:`check_result` lists what a dataset lacks of the schema.

**Merging.** A sweep writes one file per (run, diagnostic, group). :func:`merge_results`
stacks those of one diagnostic and group along a new dimension ``run``, with the run's
``model``, ``preset``, ``seed`` and ``family`` as coordinates on it, so that
``ds.sel(run=ds.model == "unet")`` or ``ds.groupby("model")`` needs no hand work. Runs of other
seeds hold other test trajectories, so ``sample`` (and the overlap matrices'
``sample_i``/``sample_j``) become positions ``0..N-1``, with each run's trajectory indices kept
in ``sample_id(run, sample)``. Every file's own attributes are kept as JSON in
``source_attrs(run)``, next to ``source_file(run)``; the attributes all files share stay
attributes of the merged dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from symgrad.errors import SymgradError
from symgrad.io import CONVENTIONS

RUN_DIM = "run"
# What a run is known by, in the order of the coordinates on ``run``.
RUN_COORDS = ("model", "preset", "seed", "family")
# The scalar coordinates of every result file: what it measured, and of which run.
RESULT_COORDS = ("diagnostic", "group", *RUN_COORDS)
_COORD_LONG_NAMES = {
    "diagnostic": "the diagnostic that wrote this result", "group": "symmetry group of the elements",
    "model": "architecture of the measured run", "preset": "model size of the measured run",
    "seed": "training seed of the measured run", "family": "initial-condition family of the test data",
}
SAMPLE_LONG_NAME = "test trajectory index in the data file(s)"
_SAMPLE_DIMS = ("sample", "sample_i", "sample_j")
POSITION_LONG_NAME = "position of the sample in each run (its trajectory index is sample_id)"

#: The ``stat`` coordinate of the ``*_stats`` variables (Tukey box-plot statistics).
TUKEY_STATS: tuple[str, ...] = ("min", "q1", "median", "q3", "max", "whisker_low", "whisker_high", "mean")


def tukey_statistics(values, axis: int = -1) -> np.ndarray:
    """Box-plot statistics along ``axis``, in the order of ``TUKEY_STATS``, moved to the last axis.

    Quartiles by linear interpolation (numpy's default, as matplotlib's ``boxplot``);
    whiskers at the most extreme data within ``[q1 - 1.5 IQR, q3 + 1.5 IQR]`` (Tukey).
    Non-finite values are ignored; a slice without finite values gives NaN.
    """
    v = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    out = np.full(v.shape[:-1] + (len(TUKEY_STATS),), np.nan)
    for idx in np.ndindex(v.shape[:-1]):
        row = v[idx]
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        q1, med, q3 = np.percentile(row, [25, 50, 75])
        iqr = q3 - q1
        inside = row[(row >= q1 - 1.5 * iqr) & (row <= q3 + 1.5 * iqr)]
        if inside.size == 0:
            # Values a few ulps apart: the interpolated quartiles can round to one number
            # strictly between the data (iqr = 0), leaving no datum inside the fences. The
            # whiskers are then the datum nearest the median.
            inside = row[[np.argmin(np.abs(row - med))]]
        out[idx] = (row.min(), q1, med, q3, row.max(), inside.min(), inside.max(), row.mean())
    return out


def element_coord(group) -> tuple:
    """The ``element`` coordinate of a group's result: names (D4), shifts or factors, with
    their long name and units."""
    if group.element_units is None:
        values = np.array([str(g) for g in group.elements], dtype=object)
    elif all(isinstance(g, (int, np.integer)) for g in group.elements):
        values = np.array(group.elements, dtype=np.int64)
    else:
        values = np.array(group.elements, dtype=np.float64)
    attrs = {"long_name": group.element_long_name}
    if group.element_units is not None:
        attrs["units"] = group.element_units
    for key, value in getattr(group, "element_attrs", ()):
        if isinstance(value, tuple):  # CF: integers as int32
            value = np.asarray(value, dtype=np.int32 if all(isinstance(v, (int, np.integer)) for v in value) else None)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = np.int32(value)
        attrs[key] = value
    return ("element", values, attrs)


def finish_result(ds, *, diagnostic: str, group: str, title: str, attrs: dict | None = None, stats_of=()):
    """``ds`` in the schema of every result file (module docstring).

    ``attrs`` are the provenance (``symgrad.inputs.provenance`` or
    the caller's own); its ``model``, ``preset``, ``seed`` and ``family`` become the scalar
    coordinates (``"unknown"`` and -1 where a caller of the Python API has no run).
    ``stats_of`` names the per-sample variables (last dimension ``sample``) that get a
    ``NAME_stats`` variable."""
    from symgrad.io import encode_attr

    attrs = dict(attrs or {})
    for key in ("diagnostic", "group", "title", "Conventions"):
        attrs.pop(key, None)
    ident = {"diagnostic": diagnostic, "group": group, "model": str(attrs.pop("model", "unknown")),
             "preset": str(attrs.pop("preset", "unknown")), "seed": int(attrs.pop("seed", -1)),
             "family": str(attrs.pop("family", "unknown"))}
    ds = ds.copy()
    if "stat" not in ds.coords and stats_of:
        ds = ds.assign_coords(stat=("stat", np.array(TUKEY_STATS, dtype=object), {
            "long_name": "statistic over samples: quartiles (linear interpolation), whiskers at the most "
                         "extreme values within 1.5 IQR of the box"}))
    for name in stats_of:
        var = ds[name]
        if var.dims[-1] != "sample":
            raise ValueError(f"{name} has dims {var.dims}; statistics are taken over a last dimension 'sample'")
        ds[f"{name}_stats"] = (var.dims[:-1] + ("stat",), tukey_statistics(var.values, axis=-1),
                               {"long_name": f"Tukey box-plot statistics over samples of {name}",
                                "units": var.attrs.get("units", "1")})
    if "sample" in ds.coords:
        ds["sample"].attrs["long_name"] = SAMPLE_LONG_NAME
    ds = ds.assign_coords({k: ((), v, {"long_name": _COORD_LONG_NAMES[k]}) for k, v in ident.items()})
    ds.attrs = {"title": title, "Conventions": CONVENTIONS, **{k: encode_attr(v) for k, v in attrs.items()}}
    return ds


def check_result(ds) -> list[str]:
    """What ``ds`` lacks of the result schema (empty when it conforms)."""
    problems = []
    if ds.attrs.get("Conventions") != CONVENTIONS:
        problems.append(f"attribute Conventions is {ds.attrs.get('Conventions')!r}, not {CONVENTIONS!r}")
    for key in ("title", "command", "created", "git_commit", "package_versions"):
        if key not in ds.attrs:
            problems.append(f"attribute {key!r} missing")
    for key in RESULT_COORDS:
        if key not in ds.coords or ds[key].ndim != 0:
            problems.append(f"scalar coordinate {key!r} missing")
        if key in ds.attrs:
            problems.append(f"{key!r} is an attribute as well as a coordinate")
    for name, var in ds.data_vars.items():
        if "long_name" not in var.attrs:
            problems.append(f"variable {name!r} has no long_name")
        if str(name).endswith("_stats") and str(name)[:-6] not in ds:
            problems.append(f"{name!r} has no per-sample variable")
    if "sample" in ds.coords and ds["sample"].attrs.get("long_name") != SAMPLE_LONG_NAME:
        problems.append("coordinate 'sample' is not the test trajectory index")
    return problems


def identity(ds, key: str) -> str:
    """A result's ``diagnostic``, ``group``, ``model``, ... as text (a coordinate of the schema)."""
    if key in ds.coords and ds[key].ndim == 0:
        return str(ds[key].item())
    return str(ds.attrs.get(key, ""))


def _run_coords(ds, path) -> dict:
    missing = [k for k in RESULT_COORDS if k not in ds.coords]
    if missing:
        raise SymgradError(f"{path} lacks the coordinates {missing} of a result file; pass files written by "
                           "'symgrad equivariance' or 'symgrad overlap' (rerun older ones with this symgrad)")
    return {key: (int if key == "seed" else str)(ds[key].item()) for key in RUN_COORDS}


def _with_positions(ds):
    """``sample``-like dimensions as positions; the trajectory indices go to ``sample_id``."""
    ids = ds["sample"].values if "sample" in ds.coords else None
    for dim in _SAMPLE_DIMS:
        if dim in ds.dims:
            ds = ds.assign_coords({dim: (dim, np.arange(ds.sizes[dim]), {"long_name": POSITION_LONG_NAME})})
    if ids is not None:
        ds["sample_id"] = ("sample", np.asarray(ids))
        ds["sample_id"].attrs = {"long_name": "test trajectory index of the run's data"}
    return ds


def read_result(path):
    """A result file, loaded into memory, or a ``SymgradError`` that says what to pass."""
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise SymgradError(f"result file {path} does not exist; pass files written by "
                           "'symgrad equivariance', 'overlap' or 'merge'")
    try:
        with xr.open_dataset(path) as ds:
            return ds.load()
    except (OSError, ValueError) as exc:
        raise SymgradError(f"cannot read {path} as netCDF ({exc}); pass result files") from None


def merge_results(paths):
    """One dataset from result files of one diagnostic and group (module docstring)."""
    import xarray as xr

    from symgrad.io import provenance

    paths = [Path(p) for p in paths]
    if not paths:
        raise SymgradError("no result files given")
    datasets, keys = [], []
    for path in paths:
        ds = read_result(path)
        coords = _run_coords(ds, path)
        keys.append((identity(ds, "diagnostic"), identity(ds, "group")))
        ds = _with_positions(ds)
        ds = ds.expand_dims(RUN_DIM).assign_coords(
            {k: (RUN_DIM, [v], {"long_name": _COORD_LONG_NAMES[k]}) for k, v in coords.items()})
        ds["source_file"] = (RUN_DIM, [str(path.resolve())], {"long_name": "result file of the run"})
        ds["source_attrs"] = (RUN_DIM, [json.dumps(ds.attrs, sort_keys=True, default=str)],
                              {"long_name": "global attributes of the run's result file (JSON)"})
        datasets.append(ds)
    if len(set(keys)) > 1:
        listing = ", ".join(f"{p.name}: {d} {g}" for p, (d, g) in zip(paths, keys))
        raise SymgradError(f"merge one diagnostic and group at a time; these differ ({listing})")
    sizes = {p.name: {d: ds.sizes[d] for d in ds.dims if d != RUN_DIM} for p, ds in zip(paths, datasets)}
    if len({json.dumps(s, sort_keys=True) for s in sizes.values()}) > 1:
        listing = "; ".join(f"{name}: {s}" for name, s in sizes.items())
        raise SymgradError(f"the results differ in shape and cannot be stacked ({listing}); run every "
                           "diagnostic with the same --samples and group settings")
    runs = [tuple(ds[k].item() for k in RUN_COORDS) for ds in datasets]
    if len(set(runs)) < len(runs):
        raise SymgradError(f"two files come from the same run {dict(zip(RUN_COORDS, runs[0]))}; pass each once")
    try:
        merged = xr.concat(datasets, dim=RUN_DIM, join="exact", combine_attrs="drop_conflicts")
    except ValueError as exc:
        raise SymgradError(f"the results cannot be stacked ({exc}); run every diagnostic with the same "
                           "group settings") from None
    diagnostic, group = keys[0]
    merged.attrs.update(provenance(n_runs=len(paths)))
    merged.attrs.update({"title": f"symgrad {diagnostic} results of {len(paths)} runs, group {group}"})
    return merged


def split_runs(ds):
    """``(label, dataset)`` per run of a merged dataset; a single result is its own one run."""
    if RUN_DIM not in ds.dims:
        return [("", ds)]
    out = []
    for i in range(ds.sizes[RUN_DIM]):
        one = ds.isel({RUN_DIM: i})
        label = f"{one['model'].item()}-{one['preset'].item()}-seed{one['seed'].item()}"
        if len(set(ds["family"].values.tolist())) > 1:  # runs on several families: keep them apart
            label += f"-{one['family'].item()}"
        # isel made model, preset, seed and family scalar coordinates again, as in one file
        one = one.drop_vars([RUN_DIM, "source_file", "source_attrs"], errors="ignore")
        one.attrs.update(json.loads(str(ds["source_attrs"].values[i])))
        out.append((label, one))
    return out
