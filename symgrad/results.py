"""Merging diagnostic result files into one dataset per diagnostic and group.

A sweep writes one file per (run, diagnostic, group). :func:`merge_results` stacks those of
one diagnostic and group along a new dimension ``run``, with the run's ``model``, ``preset``,
``seed`` and ``family`` as coordinates on it, so that ``ds.sel(run=ds.model == "unet")`` or
``ds.groupby("model")`` needs no hand work. Runs of other seeds hold other test trajectories,
so ``sample`` (and the overlap matrices' ``sample_i``/``sample_j``) become positions
``0..N-1``, with each run's trajectory indices kept in ``sample_id(run, sample)``. Every file's
own attributes are kept as JSON in ``source_attrs(run)``, next to ``source_file(run)``; the
attributes all files share stay attributes of the merged dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from symgrad.errors import SymgradError

RUN_DIM = "run"
# What a run is known by, in the order of the coordinates on ``run``.
RUN_COORDS = ("model", "preset", "seed", "family")
_SAMPLE_DIMS = ("sample", "sample_i", "sample_j")


def _diagnostic(ds, path) -> str:
    name = ds.attrs.get("diagnostic")
    if name is None:
        raise SymgradError(f"{path} has no 'diagnostic' attribute; pass files written by 'symgrad equivariance' "
                           "or 'symgrad overlap'")
    return str(name)


def _run_coords(ds, path) -> dict:
    attrs = dict(ds.attrs)
    out = {}
    for key in RUN_COORDS:
        value = attrs.get(key)
        if value is None and key == "seed" and "config" in attrs:
            value = json.loads(attrs["config"]).get("seed")  # files written before 'seed' was an attribute
        if value is None:
            if key != "family":
                raise SymgradError(f"{path} lacks the attribute {key!r}; rerun its diagnostic with this symgrad")
            value = "unknown"
        out[key] = int(value) if key == "seed" else str(value)
    return out


def _with_positions(ds):
    """``sample``-like dimensions as positions; the trajectory indices go to ``sample_id``."""
    ids = ds["sample"].values if "sample" in ds.coords else None
    for dim in _SAMPLE_DIMS:
        if dim in ds.dims:
            ds = ds.assign_coords({dim: np.arange(ds.sizes[dim])})
    if ids is not None:
        ds["sample_id"] = ("sample", np.asarray(ids))
        ds["sample_id"].attrs = {"long_name": "test trajectory index of the run's data"}
    return ds


def merge_results(paths):
    """One dataset from result files of one diagnostic and group (module docstring)."""
    import xarray as xr

    from symgrad.io import provenance

    paths = [Path(p) for p in paths]
    if not paths:
        raise SymgradError("no result files given")
    datasets, keys = [], []
    for path in paths:
        if not path.is_file():
            raise SymgradError(f"result file {path} does not exist")
        try:
            with xr.open_dataset(path) as ds:
                ds = ds.load()
        except (OSError, ValueError) as exc:
            raise SymgradError(f"cannot read {path} as netCDF ({exc}); pass result files") from None
        keys.append((_diagnostic(ds, path), str(ds.attrs.get("group"))))
        coords = _run_coords(ds, path)
        ds = _with_positions(ds)
        ds = ds.expand_dims(RUN_DIM).assign_coords({k: (RUN_DIM, [v]) for k, v in coords.items()})
        ds["source_file"] = (RUN_DIM, [str(path.resolve())])
        ds["source_attrs"] = (RUN_DIM, [json.dumps(ds.attrs, sort_keys=True, default=str)])
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
    merged.attrs.update({"title": f"symgrad {diagnostic} results of {len(paths)} runs, group {group}",
                         "diagnostic": diagnostic, "group": group})
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
        one = one.drop_vars([RUN_DIM, *RUN_COORDS, "source_file", "source_attrs"], errors="ignore")
        one.attrs.update(json.loads(str(ds["source_attrs"].values[i])))
        out.append((label, one))
    return out
