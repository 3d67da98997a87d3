"""The study's statistics: result files of many runs pooled per model, computed once.

The study compares architectures, not seeds: per (diagnostic, group) and per model, the
values of every run of that model (all seeds) and every sample are pooled, and their Tukey
statistics (``symgrad.results.tukey_statistics``) taken per group element. The result is one
dataset per (diagnostic, group) with dims ``(model, element, stat)``, written next to the
figures (``statistics_<diagnostic>_<group>.nc``); the figures (``symgrad.plots``) and the
report (``symgrad.report``) draw from that file alone, so a figure can be redrawn exactly.

What is pooled per diagnostic is :data:`DRAWN` (the figures' panels) plus
:data:`REFERENCES` (the numbers a reader needs beside them: test and persistence errors,
the solvers' accuracy and the null-space share).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from symgrad.errors import SymgradError
from symgrad.results import TUKEY_STATS, identity, read_result, split_runs, tukey_statistics

#: Per diagnostic, the per-sample variables the study's figures draw, in panel order.
DRAWN: dict[str, tuple[str, ...]] = {
    "equivariance": ("equivariance_error",),
    "overlap": ("overlap_cosine_chi", "overlap_frobenius_chi", "overlap_cosine_euclidean",
                "overlap_frobenius_euclidean"),
}
#: Per diagnostic, the per-sample variables pooled for the report (not drawn as candles).
REFERENCES: dict[str, tuple[str, ...]] = {
    "equivariance": ("orbit_error", "test_error", "persistence_error", "data_defect"),
    "overlap": ("overlap_cosine_chi_bound", "overlap_frobenius_chi_bound", "null_space_share_u", "iterations_u"),
}
#: Per-element variables without samples (boosts: the speed against the data's velocities),
#: kept per model as the mean over its runs.
PER_ELEMENT: tuple[str, ...] = ("boost_speed_ratio",)
#: The study's architectures, in the order they are drawn; other models follow by name.
MODEL_ORDER: tuple[str, ...] = ("unet", "vit", "gcnn", "relaxed")
MODEL_NAMES = {"unet": "UNet", "vit": "ViT", "gcnn": "G-CNN", "relaxed": "relaxed G-CNN"}
STATISTICS_TITLE = "symgrad study statistics"


def model_label(model: str) -> str:
    """How a model (a pooling key such as ``unet`` or ``unet-small``) is named in figures and
    the report: ``UNet``, ``UNet-small``, or a user's model by its own name."""
    base = re.split(r"[- ]", model, maxsplit=1)[0]
    return MODEL_NAMES.get(base, base) + model[len(base):]


def load_results(paths) -> list:
    """Every run's dataset of the given result files (merged files are split into runs)."""
    out = []
    for path in paths:
        path = Path(path)
        ds = read_result(path)
        if identity(ds, "diagnostic") not in DRAWN:
            raise SymgradError(f"{path} is not an equivariance or overlap result (its diagnostic is "
                               f"{identity(ds, 'diagnostic')!r}); pass files of those diagnostics")
        for _, one in split_runs(ds):
            one.attrs["source_file"] = str(path.resolve())
            out.append(one)
    return out


def _model_keys(datasets) -> list[str]:
    """The key a run is pooled under: its model, with the preset (and family) where the
    given runs hold several of them for one model."""
    def of(ds, key):
        return identity(ds, key)

    presets: dict[str, set] = {}
    families: dict[str, set] = {}
    for ds in datasets:
        presets.setdefault(of(ds, "model"), set()).add(of(ds, "preset"))
        families.setdefault(of(ds, "model"), set()).add(of(ds, "family"))
    keys = []
    for ds in datasets:
        m = of(ds, "model")
        key = m + (f"-{of(ds, 'preset')}" if len(presets[m]) > 1 else "")
        keys.append(key + (f" ({of(ds, 'family')})" if len(families[m]) > 1 else ""))
    return keys


def ordered_models(keys) -> list[str]:
    """Pooling keys in the study's order (UNet, ViT, G-CNN, relaxed G-CNN), other models after them by name."""
    def rank(k):
        base = k.split("-")[0].split(" ")[0]
        return (MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER), k)

    return sorted(set(keys), key=rank)


def study_statistics(datasets) -> dict:
    """``{(diagnostic, group): statistics dataset}`` from per-run result datasets.

    Each statistics dataset has coordinates ``model`` (pooling keys, :func:`_model_keys`),
    ``element`` and ``stat``; per pooled variable ``NAME`` a ``NAME_stats`` of dims
    ``(model, element, stat)`` (or ``(model, stat)``) and a ``NAME_count`` (values pooled per
    model and element); ``n_runs``, ``seeds`` and ``source_files`` per model."""
    import xarray as xr

    from symgrad.io import provenance

    keys = _model_keys(datasets)
    by_key: dict[tuple[str, str], dict[str, list]] = {}
    for ds, key in zip(datasets, keys):
        by_key.setdefault((identity(ds, "diagnostic"), identity(ds, "group")), {}).setdefault(key, []).append(ds)
    out = {}
    for (diagnostic, group), models in sorted(by_key.items()):
        order = ordered_models(models)
        first = models[order[0]][0]
        elements = first["element"]
        for key in order:
            for ds in models[key]:
                if ds.sizes["element"] != elements.size or not np.array_equal(ds["element"].values, elements.values):
                    raise SymgradError(
                        f"the {diagnostic} results of group {group} have different elements "
                        f"({ds.attrs['source_file']} against {first.attrs['source_file']}); run every "
                        "diagnostic of one group with the same --stride/--factors/--shifts")
        names = [n for n in DRAWN[diagnostic] + REFERENCES[diagnostic]
                 if any(n in ds for runs in models.values() for ds in runs)]
        data = {}
        for name in names:
            template = next(ds[name] for key in order for ds in models[key] if name in ds)
            per_element = "element" in template.dims
            shape = (len(order), elements.size, len(TUKEY_STATS)) if per_element else (len(order), len(TUKEY_STATS))
            stats = np.full(shape, np.nan)
            counts = np.zeros(len(order), np.int64)
            for m, key in enumerate(order):
                parts = [ds[name].transpose(*(("element",) if per_element else ()), "sample").values
                         for ds in models[key] if name in ds]
                if not parts:
                    continue
                pooled = np.concatenate([np.asarray(p, np.float64) for p in parts], axis=-1)
                stats[m] = tukey_statistics(pooled, axis=-1)
                counts[m] = pooled.shape[-1]
            dims = ("model", "element", "stat") if per_element else ("model", "stat")
            attrs = {"long_name": f"Tukey statistics of {template.attrs.get('long_name', name)}, "
                                  "pooled over the runs (seeds) and samples of each model",
                     "units": template.attrs.get("units", "1")}
            data[f"{name}_stats"] = (dims, stats, attrs)
            data[f"{name}_count"] = (("model",), counts, {"long_name": f"pooled values of {name} per element",
                                                          "units": "count"})
        for name in PER_ELEMENT:
            if not any(name in ds for key in order for ds in models[key]):
                continue
            values = np.full((len(order), elements.size), np.nan)
            for m, key in enumerate(order):
                parts = [np.asarray(ds[name].values, np.float64) for ds in models[key] if name in ds]
                if parts:
                    values[m] = np.mean(parts, axis=0)
            template = next(ds[name] for key in order for ds in models[key] if name in ds)
            data[name] = (("model", "element"), values,
                          {"long_name": f"{template.attrs.get('long_name', name)}, mean over the runs of each model",
                           "units": template.attrs.get("units", "1")})
        runs = [models[k] for k in order]
        data["n_runs"] = (("model",), np.array([len(r) for r in runs]), {"long_name": "runs pooled", "units": "count"})
        data["seeds"] = (("model",), np.array([",".join(str(identity(d, "seed")) for d in r) for r in runs], dtype=object),
                         {"long_name": "training seeds of the pooled runs"})
        data["source_files"] = (("model",), np.array([json.dumps([d.attrs["source_file"] for d in r]) for r in runs],
                                                     dtype=object), {"long_name": "result files pooled (JSON list)"})
        ds = xr.Dataset(data, coords={
            "model": ("model", np.array(order, dtype=object), {"long_name": "model (runs pooled over seeds)"}),
            "element": elements,
            "stat": ("stat", np.array(TUKEY_STATS, dtype=object), {"long_name": "statistic over the pooled values"}),
        })
        for name in ("diagnostic", "group"):
            ds.coords[name] = ((), diagnostic if name == "diagnostic" else group)
        ds.attrs.update(provenance(n_runs=len([d for r in runs for d in r])))
        ds.attrs["title"] = f"{STATISTICS_TITLE}: {diagnostic}, group {group}"
        out[(diagnostic, group)] = ds
    return out


def statistics_path(out_dir, diagnostic: str, group: str) -> Path:
    return Path(out_dir) / f"statistics_{diagnostic}_{group}.nc"


def write_statistics(stats: dict, out_dir) -> list[Path]:
    """Write each statistics dataset atomically to ``out_dir``; returns the paths."""
    from symgrad.io import write_netcdf_atomic

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return [write_netcdf_atomic(ds, statistics_path(out_dir, d, g)) for (d, g), ds in stats.items()]


def read_statistics(paths) -> dict:
    """``{(diagnostic, group): dataset}`` of statistics files written by :func:`write_statistics`."""
    import xarray as xr

    out = {}
    for path in paths:
        with xr.open_dataset(path) as ds:
            ds = ds.load()
        if not str(ds.attrs.get("title", "")).startswith(STATISTICS_TITLE):
            raise SymgradError(f"{path} is not a statistics file of 'symgrad figures'")
        out[(identity(ds, "diagnostic"), identity(ds, "group"))] = ds
    return out
