"""The study's figures, drawn from the pooled statistics of ``symgrad.study``.

- :func:`group_figure` (Fig. 1 style): per D4 element, one Tukey candle per model side by
  side; a panel for the equivariance error (log axis) and one per gradient overlap (chi and
  Euclidean, cosine and Frobenius-normalised).
- :func:`profile_figure` (Figs. 2 and 3 style): per model, the median as a marker with a
  whisker from the lower to the upper quartile, against the shift (x and y side by side),
  the scale factor or the boost velocity (x and y side by side, with the data's own defect
  as the floor, :func:`floor`).
- :func:`solver_figure`: one compact figure of a chi overlap result's solver accuracy
  (certified bounds against rtol, iterations, explicit residuals, null-space share).
- :func:`training_figure`: train/validation SMSE per epoch and rollout SMSE against lead
  time, from the runs' ``metrics.nc``, with the persistence baseline.

Candles are drawn from the stored statistics (median, quartiles, whiskers at the most
extreme values within 1.5 IQR), never recomputed here, so a figure redraws exactly from the
statistics file. Outliers are not drawn. Each model keeps its colour in every figure
(Okabe and Ito's colour-blind-safe palette, :func:`model_colours`); tick labels are plain
numbers (no offsets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from symgrad.names import DEFAULT_FIGURE_FORMATS
from symgrad.study import MODEL_ORDER, model_label, ordered_models

FORMATS = DEFAULT_FIGURE_FORMATS
#: Okabe and Ito (2008), the colour-blind-safe palette; the study's four models take the first four.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
PANEL_TITLES = {
    "equivariance_error": "equivariance error SMSE(f(g x), g f(x))",  # boosts: g f(x) is T_{c dt} B_c f(x)
    "overlap_cosine_chi": "chi cosine overlap",
    "overlap_frobenius_chi": "chi Frobenius-normalised overlap",
    "overlap_cosine_euclidean": "Euclidean cosine overlap",
    "overlap_frobenius_euclidean": "Euclidean Frobenius-normalised overlap",
}
TRANSLATIONS = ("translate-x", "translate-y")
BOOSTS = ("boost-x", "boost-y")
FLOOR_COLOUR = "0.35"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def model_colours(models: Sequence[str]) -> dict[str, str]:
    """One colour per model, the same in every figure: the study's models (``MODEL_ORDER``)
    always get the first colours, other models the rest in the order given."""
    colours = {}
    rest = iter(OKABE_ITO[len(MODEL_ORDER):])
    for m in models:
        base = m.split("-")[0].split(" ")[0]
        colours[m] = OKABE_ITO[MODEL_ORDER.index(base)] if base in MODEL_ORDER else next(rest, "#777777")
    return colours


def is_log(name: str) -> bool:
    """Errors span decades and are drawn on a log axis; overlaps lie in [-1, 1]."""
    return "error" in name


def _stat(stats, name: str):
    """``{stat: array (model, element)}`` of ``name`` in a statistics dataset."""
    var = stats[f"{name}_stats"]
    return {s: np.asarray(var.sel(stat=s).values, np.float64) for s in var["stat"].values}


def _plain(ax) -> None:
    """Plain tick labels on a linear y axis: no offset ("1e-7+1.0000001") and no exponent."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)


def _y_scale(ax, name: str, values: np.ndarray) -> str:
    """Log for errors (symlog where some drawn value is exactly 0, as at the identity, so
    that no candle disappears); linear with plain ticks, at least 0.02 wide, otherwise."""
    from matplotlib.ticker import LogLocator, SymmetricalLogLocator

    finite = values[np.isfinite(values)]
    if is_log(name) and finite.size and np.any(finite > 0):
        positive = finite[finite > 0]
        if np.any(finite <= 0):
            linthresh = float(positive.min())
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.set_ylim(0.0, 3.0 * float(positive.max()))  # errors are >= 0: no negative half
            locator = SymmetricalLogLocator(base=10, linthresh=linthresh)
            locator.set_params(numticks=8)  # errors can span 30 decades: a readable few ticks
            ax.yaxis.set_major_locator(locator)
            return "symlog"
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
        return "log"
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if hi - lo < 0.02:  # e.g. an equivariant model at overlap 1: a readable band around it
            mid = 0.5 * (lo + hi)
            lo, hi = mid - 0.01, mid + 0.01
        pad = 0.05 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    _plain(ax)
    return "linear"


def candles(ax, stats, name: str, *, colours: dict[str, str] | None = None) -> dict:
    """Per element, one Tukey candle per model of ``stats[name + "_stats"]`` on ``ax``.

    Returns ``{model: artists}`` (matplotlib ``bxp``'s dictionaries), whose medians, boxes
    and whiskers are the stored statistics."""
    models = [str(m) for m in stats["model"].values]
    colours = colours or model_colours(models)
    s = _stat(stats, name)
    n_el = stats.sizes["element"]
    width = 0.8 / len(models)
    artists = {}
    for m, model in enumerate(models):
        records = [{"med": s["median"][m, e], "q1": s["q1"][m, e], "q3": s["q3"][m, e],
                    "whislo": s["whisker_low"][m, e], "whishi": s["whisker_high"][m, e], "label": ""}
                   for e in range(n_el)]
        positions = np.arange(n_el) + (m - (len(models) - 1) / 2) * width
        c = colours[model]
        artists[model] = ax.bxp(records, positions=positions, widths=0.85 * width, showfliers=False,
                                patch_artist=True, manage_ticks=False,
                                boxprops={"facecolor": c, "edgecolor": c, "alpha": 0.55},
                                medianprops={"color": "black", "lw": 1.2},
                                whiskerprops={"color": c}, capprops={"color": c})
    ax.set_xticks(np.arange(n_el), [str(v) for v in stats["element"].values])
    ax.set_xlim(-0.6, n_el - 0.4)
    drawn = np.concatenate([s[k].ravel() for k in ("q1", "q3", "whisker_low", "whisker_high", "median")])
    _y_scale(ax, name, drawn)
    ax.grid(True, axis="y", alpha=0.3)
    return artists


def _legend(fig, models, colours) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colours[m], edgecolor=colours[m], alpha=0.7, label=model_label(m)) for m in models]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(models), frameon=False, fontsize=9)


def _panels(stats_by_diagnostic: dict) -> list[tuple[object, str]]:
    """``(statistics dataset, variable)`` per panel, in the study's order."""
    from symgrad.study import DRAWN

    panels = []
    for diagnostic in ("equivariance", "overlap"):
        ds = stats_by_diagnostic.get(diagnostic)
        if ds is not None:
            panels += [(ds, n) for n in DRAWN[diagnostic] if f"{n}_stats" in ds]
    return panels


def _all_models(datasets) -> list[str]:
    return ordered_models([str(m) for ds in datasets for m in ds["model"].values])


def group_figure(stats_by_diagnostic: dict, *, title: str = ""):
    """Fig. 1: candles per element and model, one panel per drawn variable (see module doc)."""
    plt = _pyplot()
    panels = _panels(stats_by_diagnostic)
    models = _all_models([ds for ds, _ in panels])
    colours = model_colours(models)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows + 0.5), layout="constrained",
                             squeeze=False)
    for ax, (ds, name) in zip(axes.ravel(), panels):
        candles(ax, ds, name, colours=colours)
        ax.set_title(PANEL_TITLES.get(name, name), fontsize=9)
        ax.set_xlabel(ds["element"].attrs.get("long_name", "element"), fontsize=8)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    _legend(fig, models, colours)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def profile(ax, stats, name: str, *, colours: dict[str, str] | None = None) -> dict:
    """Per model, median markers with whiskers from q1 to q3 against the element value
    (shift or factor). Returns ``{model: ErrorbarContainer}``."""
    models = [str(m) for m in stats["model"].values]
    colours = colours or model_colours(models)
    s = _stat(stats, name)
    x = np.asarray(stats["element"].values, np.float64)
    step = np.min(np.diff(np.sort(x))) if x.size > 1 else 1.0
    out = {}
    for m, model in enumerate(models):
        dx = (m - (len(models) - 1) / 2) * 0.18 * step  # models side by side at each value
        med = s["median"][m]
        err = np.stack([med - s["q1"][m], s["q3"][m] - med])
        out[model] = ax.errorbar(x + dx, med, yerr=err, fmt="o", ms=3.5, lw=1, capsize=1.5, color=colours[model],
                                 label=model_label(model))
    drawn = [s[k].ravel() for k in ("q1", "median", "q3")]
    if name == "equivariance_error" and "data_defect_stats" in stats:
        drawn += floor(ax, stats, x)
    _y_scale(ax, name, np.concatenate(drawn))
    ax.grid(True, alpha=0.3)
    return out


def floor(ax, stats, x) -> list:
    """The data's own defect (boosts) as the floor of an equivariance panel: its median over
    the samples (dashed, grey) with the band from q1 to q3, and the elements whose speed
    exceeds the data's velocities shaded. Returns the drawn values (for the y range)."""
    order = np.argsort(x)
    d = _stat(stats, "data_defect")
    # every model saw the same test transitions: the first model's values are the data's
    med, q1, q3 = (d[k][0][order] for k in ("median", "q1", "q3"))
    ax.fill_between(x[order], q1, q3, color=FLOOR_COLOUR, alpha=0.15, lw=0)
    ax.plot(x[order], med, "--", color=FLOOR_COLOUR, lw=1, label="the data's own defect (floor)")
    if "boost_speed_ratio" in stats:
        ratio = np.nanmax(np.asarray(stats["boost_speed_ratio"].values, np.float64), axis=0)
        step = np.min(np.diff(np.sort(x))) if x.size > 1 else 1.0
        for value in x[ratio > 1.0]:
            ax.axvspan(value - 0.5 * step, value + 0.5 * step, color="0.85", alpha=0.5, lw=0, zorder=0)
    return [med, q1, q3]


def profile_figure(stats_by_group: dict, groups: Sequence[str], *, title: str = ""):
    """Figs. 2 and 3: one column per group (e.g. translate-x, translate-y), one row per drawn
    variable; ``stats_by_group[group][diagnostic]`` the statistics datasets."""
    plt = _pyplot()
    columns = [g for g in groups if g in stats_by_group]
    rows = []
    for g in columns:
        for ds, name in _panels(stats_by_group[g]):
            if name not in rows:
                rows.append(name)
    models = _all_models([ds for g in columns for ds, _ in _panels(stats_by_group[g])])
    colours = model_colours(models)
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(5.2 * len(columns), 2.4 * len(rows) + 0.6),
                             layout="constrained", squeeze=False)
    for c, g in enumerate(columns):
        panels = {name: ds for ds, name in _panels(stats_by_group[g])}
        for r, name in enumerate(rows):
            ax = axes[r, c]
            if name not in panels:
                ax.set_visible(False)
                continue
            profile(ax, panels[name], name, colours=colours)
            if r == 0:
                ax.set_title(g, fontsize=10)
            if c == 0:
                ax.set_ylabel(PANEL_TITLES.get(name, name), fontsize=8)
            if r == max(i for i, n in enumerate(rows) if n in panels):  # the column's lowest panel
                el = panels[name]["element"]
                unit = el.attrs.get("units")
                ax.set_xlabel(el.attrs.get("long_name", "element") + (f" [{unit}]" if unit not in (None, "1") else ""),
                              fontsize=8)
    _legend(fig, models, colours)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def solver_figure(ds, *, title: str = ""):
    """The chi solves of one overlap result in one figure: the certified bound of every
    cosine against ``rtol``, iterations, explicit residual norms and the null-space share
    of ``<u, u>_chi``, each per element (dots: samples)."""
    plt = _pyplot()
    panels = [("overlap_cosine_chi_bound", "certified bound on the chi cosine", True),
              ("iterations_u", "solver iterations (u-solves)", False),
              ("residual_norm_u", "explicit residual ||u - (lambda I + G) z||", True),
              ("null_space_share_u", "null-space share of <u, u>_chi", False)]
    panels = [p for p in panels if p[0] in ds]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.9), layout="constrained", squeeze=False)
    labels = [str(v) for v in ds["element"].values]
    x = np.arange(len(labels))
    for ax, (name, label, log) in zip(axes[0], panels):
        v = np.asarray(ds[name].transpose("element", "sample").values, np.float64)
        for e in range(len(labels)):
            ax.plot(np.full(v.shape[1], x[e]), v[e], ".", color=OKABE_ITO[0], ms=4, alpha=0.7)
        if name == "overlap_cosine_chi_bound" and "rtol" in ds.attrs:
            ax.axhline(float(ds.attrs["rtol"]), color=OKABE_ITO[1], ls="--", lw=1, label="rtol")
            ax.legend(fontsize=7)
        positive = v[np.isfinite(v) & (v > 0)]
        if log and positive.size:
            ax.set_yscale("log")
        else:
            _plain(ax)
        k = max(1, int(np.ceil(len(labels) / 8)))
        ax.set_xticks(x[::k], labels[::k], fontsize=7)
        ax.set_title(label, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    flagged = int(ds.attrs.get("n_flagged", 0))
    fig.suptitle((title + ": " if title else "") + f"{flagged} values flagged", fontsize=9)
    return fig


def training_figure(runs: Sequence[tuple[str, object]]):
    """Training curves of ``(label, metrics dataset)`` runs: SMSE per epoch (train dashed,
    validation solid) and the last epoch's rollout SMSE against lead time, each with the
    persistence baseline of the run's validation data (grey)."""
    plt = _pyplot()
    models = [label.split(" ")[0] for label, _ in runs]
    colours = model_colours(list(dict.fromkeys(models)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.3), layout="constrained")
    baselines = set()
    for (label, ds), model in zip(runs, models):
        c = colours[model]
        epochs = np.asarray(ds["epoch"].values) + 1
        a.plot(epochs, ds["train_smse"].values, "--", color=c, lw=1)
        a.plot(epochs, ds["val_smse"].values, "-o", color=c, ms=3, lw=1.2, label=label)
        if "val_persistence_smse" in ds:
            baselines.add(float(ds["val_persistence_smse"]))
        b.plot(ds["lead_time"].values, ds["val_rollout_smse"].values[-1], "-o", color=c, ms=3, lw=1.2, label=label)
        if "val_rollout_persistence_smse" in ds:
            b.plot(ds["lead_time"].values, ds["val_rollout_persistence_smse"].values, ":", color="0.4", lw=1)
    for value in sorted(baselines):
        a.axhline(value, color="0.4", ls=":", lw=1)
    a.plot([], [], ":", color="0.4", label="persistence f(x) = x")
    a.plot([], [], "--", color="0.3", lw=1, label="train (dashed)")
    a.set(xlabel="epoch", ylabel="SMSE", yscale="log", title="one-step SMSE (validation solid)")
    b.set(xlabel="lead time [model steps]", ylabel="SMSE", yscale="log", title="rollout SMSE, last epoch")
    a.legend(fontsize=7)
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------
# files


def save(fig, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.<format>`` for each format, each atomically; closes it."""
    from symgrad.io import atomic_write

    plt = _pyplot()
    written = []
    for fmt in formats:
        target = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_write(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
        written.append(target)
    plt.close(fig)
    return written


def draw_statistics(stats: dict, out_dir, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """The study figures of ``{(diagnostic, group): statistics}`` into ``out_dir``:
    ``fig1_<group>`` for each group with named elements (D4), ``fig2_translations``,
    ``fig3_<group>`` for other groups with numeric elements (scaling), ``fig4_boosts``
    (boost-x and boost-y side by side, the data's own defect drawn as the floor and the
    boosts faster than the data's velocities shaded)."""
    out_dir = Path(out_dir)
    by_group: dict[str, dict] = {}
    for (diagnostic, group), ds in stats.items():
        by_group.setdefault(group, {})[diagnostic] = ds
    written = []
    for group, diagnostics in sorted(by_group.items()):
        numeric = next(iter(diagnostics.values()))["element"].dtype.kind in "iuf"
        if not numeric:
            written += save(group_figure(diagnostics, title=f"group {group}"), out_dir / f"fig1_{group}", formats)
        elif group not in TRANSLATIONS + BOOSTS:
            written += save(profile_figure(by_group, [group], title=f"group {group}"), out_dir / f"fig3_{group}",
                            formats)
    if any(g in by_group for g in TRANSLATIONS):
        written += save(profile_figure(by_group, TRANSLATIONS, title="translations"), out_dir / "fig2_translations",
                        formats)
    if any(g in by_group for g in BOOSTS):
        written += save(profile_figure(by_group, BOOSTS, title="Galilean boosts (dashed: the data's own defect, "
                                                                "the floor; shaded: faster than the data's velocities)"),
                        out_dir / "fig4_boosts", formats)
    return written


def figures(paths: Iterable, out_dir, *, runs: Sequence = (), formats: Sequence[str] = FORMATS) -> list[Path]:
    """Everything ``symgrad figures`` writes for result files ``paths`` and run directories
    ``runs`` (see :func:`draw`). Returns the written paths."""
    from symgrad import study

    return draw(study.load_results(list(paths)), out_dir, runs=training_runs(runs), formats=formats)


def draw(datasets, out_dir, *, runs: Sequence = (), formats: Sequence[str] = FORMATS) -> list[Path]:
    """The pooled statistics files of the per-run result ``datasets``, the study figures
    drawn from those files, a solver figure per chi overlap result, and the training curves
    of ``runs`` (``(label, metrics)`` of :func:`training_runs`). Returns the written paths."""
    from symgrad import study
    from symgrad.results import identity

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stat_files = study.write_statistics(study.study_statistics(datasets), out_dir)
    written = list(stat_files)
    written += draw_statistics(study.read_statistics(stat_files), out_dir, formats=formats)
    for ds in datasets:
        if identity(ds, "diagnostic") == "overlap" and "overlap_cosine_chi_bound" in ds:
            label = f"{identity(ds, 'model')}-{identity(ds, 'preset')}-seed{identity(ds, 'seed')}"
            group = identity(ds, "group")
            written += save(solver_figure(ds, title=f"chi solves, {model_label(identity(ds, 'model'))} "
                                                    f"({label}), group {group}"),
                            out_dir / f"solver_{group}_{label}", formats)
    if runs:
        written += save(training_figure(runs), out_dir / "training", formats)
    return written


def training_runs(run_dirs) -> list[tuple[str, object]]:
    """``(label, metrics dataset)`` of each run directory: :func:`symgrad.train.metrics.read_runs`."""
    from symgrad.train.metrics import read_runs

    return read_runs(run_dirs)
