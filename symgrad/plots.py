"""Tukey box plots of result datasets (equivariance and overlap files).

Every per-sample variable of a result file -- a float variable with a ``sample``
dimension and at most an ``element`` dimension besides -- becomes one figure with one
box per group element: median, quartiles, whiskers at the most extreme values within
1.5 IQR of the box, and the remaining values as outliers (the statistics of
``symgrad.results.tukey_statistics``). Errors (variables whose name
contains ``error``, ``residual``, ``bound`` or ``norm``, or with attribute
``plot_scale = "log"``) are drawn on a log axis; a symlog axis is used where an error is
exactly zero (e.g. at the identity element), so that no value disappears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from symgrad.results import TUKEY_STATS, identity, tukey_statistics
from symgrad.names import DEFAULT_FIGURE_FORMATS

FORMATS = DEFAULT_FIGURE_FORMATS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def per_sample_variables(ds) -> list[str]:
    """Names of the variables that get a box plot, in file order."""
    names = []
    for name, var in ds.data_vars.items():
        dims = set(var.dims)
        if "sample" not in dims or not dims <= {"sample", "element"}:
            continue
        if not np.issubdtype(var.dtype, np.floating):
            continue
        names.append(str(name))
    return names


def is_error_variable(name: str, var=None) -> bool:
    scale = (var.attrs.get("plot_scale") if var is not None else None)
    if scale is not None:
        return scale == "log"
    return any(word in name for word in _LOG_WORDS)


# Magnitudes spanning decades: errors, and the accuracy records of overlap files.
_LOG_WORDS = ("error", "residual", "bound", "norm")


def _box_stats(values: np.ndarray, label: str) -> dict:
    """A matplotlib ``bxp`` record from the same statistics the result files store."""
    finite = values[np.isfinite(values)]
    stats = dict(zip(TUKEY_STATS, tukey_statistics(values)))
    fliers = finite[(finite < stats["whisker_low"]) | (finite > stats["whisker_high"])] if finite.size else finite
    return {
        "label": label, "med": stats["median"], "q1": stats["q1"], "q3": stats["q3"],
        "whislo": stats["whisker_low"], "whishi": stats["whisker_high"], "fliers": fliers,
        "mean": stats["mean"],
    }


def _element_labels(ds, var) -> list[str]:
    if "element" not in var.dims:
        return ["all"]
    return [str(v) for v in ds["element"].values]


def _set_scale(ax, values: np.ndarray, log: bool) -> str:
    finite = values[np.isfinite(values)]
    if not log or finite.size == 0 or np.all(finite <= 0):
        return "linear"
    positive = finite[finite > 0]
    if np.any(finite <= 0):
        ax.set_yscale("symlog", linthresh=float(positive.min()))
        return "symlog"
    ax.set_yscale("log")
    return "log"


def box_plot(ds, name: str, ax=None, *, title: str | None = None):
    """Draw the Tukey box plot of variable ``name`` of ``ds`` on ``ax`` (a new figure if None)."""
    plt = _pyplot()
    var = ds[name]
    if "element" in var.dims:
        var = var.transpose("element", "sample")
        rows = np.asarray(var.values, dtype=np.float64)
    else:
        rows = np.asarray(var.values, dtype=np.float64)[None, :]
    labels = _element_labels(ds, var)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(labels) + 2.0), 3.6), layout="constrained")
    stats = [_box_stats(row, label) for row, label in zip(rows, labels)]
    ax.bxp(stats, showfliers=True, flierprops={"marker": ".", "markersize": 3, "alpha": 0.6})
    scale = _set_scale(ax, rows, is_error_variable(name, var))
    element_name = ds["element"].attrs.get("long_name", "element") if "element" in var.dims else ""
    ax.set_xlabel(element_name)
    if len(labels) > 16:  # long translation groups: label every k-th shift only
        k = int(np.ceil(len(labels) / 16))
        ax.set_xticks(range(1, len(labels) + 1)[::k], labels[::k])
    unit = var.attrs.get("units")
    ylabel = var.attrs.get("long_name", name)
    if unit not in (None, "", "1"):
        ylabel += f" [{unit}]"
    ax.set_ylabel(ylabel, fontsize=8)
    if "test_error" in ds and name == "orbit_error":
        # The untransformed test error as a reference band: an orbit error above it means
        # the model is less accurate on the transformed problem.
        t = _box_stats(np.asarray(ds["test_error"].values, dtype=np.float64), "")
        ax.axhspan(t["q1"], t["q3"], color="tab:green", alpha=0.15, lw=0)
        ax.axhline(t["med"], color="tab:green", lw=1, ls="--", label="test error (median, IQR)")
        ax.legend(fontsize=7, loc="best")
    ax.set_title(title or name, fontsize=9)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    return ax, scale


def figures_for_file(path, out_dir, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write one box-plot figure per per-sample variable of the result file ``path``; a
    merged file (``symgrad merge``) gets them per run, named ``<stem>_<run>_<variable>``."""
    import xarray as xr

    from symgrad.results import split_runs

    plt = _pyplot()
    path = Path(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with xr.open_dataset(path) as merged:
        merged = merged.load()
    for run, ds in split_runs(merged):
        group, model = identity(ds, "group"), identity(ds, "model")
        stem = f"{path.stem}_{run}" if run else path.stem
        for name in per_sample_variables(ds):
            ax, _ = box_plot(ds, name, title=" ".join(s for s in (name, model, group, f"({stem})") if s))
            for fmt in formats:
                target = out_dir / f"{stem}_{name}.{fmt}"
                _save_atomic(ax.figure, target)
                written.append(target)
            plt.close(ax.figure)
    return written


def _save_atomic(fig, target: Path) -> None:
    from symgrad.io import atomic_write

    with atomic_write(target) as tmp:
        fig.savefig(tmp, format=target.suffix[1:], dpi=150)


def figures(paths: Iterable, out_dir, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Box-plot figures for several result files; returns the written paths."""
    written = []
    for p in paths:
        written.extend(figures_for_file(p, out_dir, formats=formats))
    return written
