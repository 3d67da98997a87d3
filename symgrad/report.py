"""``symgrad report``: the study's results as ``report.md`` and a self-contained ``report.html``.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and
rendered twice: Markdown that links the figures, and HTML with the PNG figures embedded
(base64), so that the HTML file can be mailed on its own. Every number comes from the
statistics files of ``symgrad.study`` (pooled over seeds and samples, written beside the
figures) or, for the solvers' accuracy and the provenance, from the result files named in
them; nothing is recomputed here.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Sequence

import numpy as np

from symgrad.io import decode_attr
from symgrad.results import identity
from symgrad.study import DRAWN, model_label, ordered_models

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES_DIR = "figures"

HOW_TO_READ = [
    "**Equivariance error** `SMSE(f(g x), g f(x))`: 0 for a model that commutes with the "
    "symmetry `g`. Read it against the **test error** `SMSE(f(x), y)`: an equivariance error "
    "far below the test error means the symmetry is not what limits accuracy. Read the test "
    "error against the **persistence** baseline `SMSE(x, y)` (predicting no change): a model "
    "not clearly below it has learnt less than the identity map, whatever its symmetry.",
    "**Gradient overlap** of the losses on `x` and on `g x`: the cosine "
    "`<u, v> / (|u| |v|)` and the Frobenius-normalised `M_ii / ||M||_F` of the overlap matrix "
    "over samples, in the Euclidean metric and in the curvature metric `chi = (lambda I + G)^-1`. "
    "1 means training on `g x` moves the parameters exactly as training on `x` does; an "
    "equivariant architecture sits at 1 for every element of its group.",
    "**Candles** (Tukey): box from the lower to the upper quartile, line at the median, "
    "whiskers to the most extreme values within 1.5 IQR of the box, pooled over the seeds and "
    "samples of each model; outliers are not drawn. Translation and scaling figures show "
    "the median with a whisker from the lower to the upper quartile. Tables give `median [q1, q3]`.",
    "**Galilean boosts** `boost-x`, `boost-y`: the element is the velocity `c = k dx / dt` that moves the flow "
    "`k` whole cells per time step. The input is boosted (`u -> u + c`), the target and the model's output one "
    "step later are boosted *and* shifted by `c dt`: the equivariance error is `SMSE(f(B_c x), T_{c dt} B_c f(x))`. "
    "The data's finite-volume solver is not exactly Galilean invariant: its own error measured the same way, "
    "`SMSE(S(B_c x), T_{c dt} B_c S(x))`, is the **floor** (the data's own defect): the error of a model "
    "that reproduced the solver exactly, below which fitting the data and being symmetric start to "
    "conflict. Elements faster than the data's velocities (`|c| / max |u| > 1`) ask "
    "the model to extrapolate.",
    "**Solver accuracy**: every chi value carries a certified bound; `max bound` is the "
    "largest bound relative to its Cauchy-Schwarz scale, and `flagged` counts values whose "
    "bound exceeds `rtol` (not certified). The **null-space share** near 1 means `<u, u>_chi` "
    "is dominated by directions the curvature does not see (it grows like `1/lambda`), so chi "
    "cosines there scale like `sqrt(lambda)`.",
]


def _num(v) -> str:
    v = float(v)
    return "nan" if not np.isfinite(v) else f"{v:.4g}"


def _mq(stats, name: str, model: str, element=None) -> str:
    """``median [q1, q3]`` of a statistics variable."""
    var = stats[f"{name}_stats"].sel(model=model)
    if element is not None:
        var = var.sel(element=element)
    return f"{_num(var.sel(stat='median'))} [{_num(var.sel(stat='q1'))}, {_num(var.sel(stat='q3'))}]"


# --------------------------------------------------------------------------------------
# blocks


def _equivariance_blocks(stats) -> list:
    blocks = []
    models = [str(m) for m in stats["model"].values]
    rows = []
    for m in models:
        if "test_error_stats" not in stats:
            continue
        test = float(stats["test_error_stats"].sel(model=m, stat="median"))
        pers = (float(stats["persistence_error_stats"].sel(model=m, stat="median"))
                if "persistence_error_stats" in stats else float("nan"))
        rows.append([model_label(m), _mq(stats, "test_error", m),
                     _mq(stats, "persistence_error", m) if "persistence_error_stats" in stats else "n/a",
                     _num(test / pers) if np.isfinite(pers) and pers > 0 else "n/a",
                     str(int(stats["n_runs"].sel(model=m))), str(stats["seeds"].sel(model=m).item())])
    if rows:
        blocks.append(("table", ["model", "test error", "persistence SMSE(x, y)", "test / persistence",
                                 "runs", "seeds"], rows))
    boosts = "data_defect_stats" in stats
    header = ["element"]
    if boosts:
        header += ["shift [cells/step]", "|c| / max |u|", "the data's own defect (floor)"]
    header += [f"{model_label(m)} equivariance error" for m in models]
    header += [f"{model_label(m)} orbit error" for m in models if "orbit_error_stats" in stats]
    shifts = stats["element"].attrs.get("shift_cells")
    rows = []
    for i, e in enumerate(stats["element"].values):
        row = [_num(e) if boosts else str(e)]
        if boosts:
            ratio = (np.nanmax(stats["boost_speed_ratio"].sel(element=e).values) if "boost_speed_ratio" in stats
                     else np.nan)
            row += [str(int(np.atleast_1d(shifts)[i])) if shifts is not None else "n/a", _num(ratio),
                    _mq(stats, "data_defect", models[0], e)]
        row += [_mq(stats, "equivariance_error", m, e) for m in models]
        row += [_mq(stats, "orbit_error", m, e) for m in models if "orbit_error_stats" in stats]
        rows.append(row)
    blocks.append(("table", header, rows))
    return blocks


def _group_notes(datasets) -> list:
    """What the results of one group say about themselves: SMSE not invariant (scaling,
    boosts), the boosts' time step and the data's velocities."""
    blocks = []
    notes = {str(ds.attrs["smse_invariance_note"]) for ds in datasets if "smse_invariance_note" in ds.attrs}
    for note in sorted(notes):
        blocks.append(("p", note + "."))
    boosted = [ds for ds in datasets if "data_velocity_max" in ds.attrs and "element" in ds.coords]
    if boosted:
        ds = boosted[0]
        el = ds["element"].attrs
        v_max = max(float(d.attrs["data_velocity_max"]) for d in boosted)
        blocks.append(("p", f"Boosts exact on the {int(el.get('resolution', 0))}-cell grid over the data's time step "
                            f"dt = {_num(el.get('time_step', np.nan))}: one cell per step is c = "
                            f"{_num(1.0 / (float(el.get('resolution', np.nan)) * float(el.get('time_step', np.nan))))}; "
                            f"the largest |velocity| along the boost in the measured states is {_num(v_max)}. "
                            "The floor is the data solver's own equivariance error on the same transitions."))
    return blocks


def _overlap_blocks(stats, datasets) -> list:
    blocks = []
    models = [str(m) for m in stats["model"].values]
    drawn = [n for n in DRAWN["overlap"] if f"{n}_stats" in stats]
    for m in models:
        blocks.append(("h4", f"{model_label(m)}: gradient overlaps"))
        header = ["element"] + [n.replace("overlap_", "").replace("_", " ") for n in drawn]
        rows = [[str(e)] + [_mq(stats, n, m, e) for n in drawn] for e in stats["element"].values]
        blocks.append(("table", header, rows))
    rows = []
    for ds in datasets:
        if "overlap_cosine_chi" not in ds:
            continue
        share = ds["null_space_share_u"].values if "null_space_share_u" in ds else np.array([np.nan])
        rows.append([model_label(identity(ds, "model")), identity(ds, "seed"), _num(ds.attrs.get("damping", np.nan)),
                     _num(ds.attrs.get("rtol", np.nan)), str(ds.attrs.get("solver", "")),
                     _num(ds.attrs.get("max_relative_bound", np.nan)),
                     f"{int(ds.attrs.get('n_flagged', 0))} of {int(ds['overlap_cosine_chi'].size)}",
                     _num(np.nanmedian(share)) if np.any(np.isfinite(share)) else "n/a",
                     str(int(ds.attrs.get("ggn_products", 0)))])
    if rows:
        blocks.append(("p", "Solver accuracy per result (chi metric): damping lambda, requested rtol, the largest "
                            "certified relative bound, the values flagged as not certified, the median null-space "
                            "share of <u, u>_chi, and the Gauss-Newton products spent."))
        blocks.append(("table", ["model", "seed", "lambda", "rtol", "solver", "max bound", "flagged",
                                 "null-space share", "GN products"], rows))
    return blocks


def _training_blocks(runs) -> list:
    rows = []
    for label, ds in runs:
        last = ds.isel(epoch=-1)
        pers = float(ds["val_persistence_smse"]) if "val_persistence_smse" in ds else float("nan")
        rows.append([label, str(int(ds.sizes["epoch"])), _num(last["train_smse"]), _num(last["val_smse"]),
                     _num(pers), _num(float(last["val_smse"]) / pers) if np.isfinite(pers) and pers > 0 else "n/a"])
    return [("table", ["run", "epochs", "train SMSE", "val SMSE", "persistence", "val / persistence"], rows)]


def _provenance_blocks(datasets) -> list:
    rows = []
    for ds in datasets:
        data = decode_attr(ds.attrs.get("data_files"), "")
        data = ", ".join(Path(p).name for p in data) if isinstance(data, list) else data
        rows.append([Path(ds.attrs.get("source_file", "")).name, identity(ds, "diagnostic"), identity(ds, "group"),
                     f"{identity(ds, 'model')} {identity(ds, 'preset')} seed {identity(ds, 'seed')}",
                     str(ds.attrs.get("checkpoint_step", "")), str(data),
                     f"time {ds.attrs.get('time_index', '')}, {ds.sizes.get('sample', 0)} samples",
                     str(ds.attrs.get("command", "")), str(ds.attrs.get("git_commit", ""))[:10],
                     str(ds.attrs.get("created", ""))])
    return [("p", "Every number above comes from these result files (through the statistics files next to "
                  "the figures, which list them per model)."),
            ("table", ["file", "diagnostic", "group", "run", "checkpoint", "data", "transitions", "command",
                       "commit", "created"], rows)]


def build(stats: dict, datasets: Sequence, runs: Sequence = (), figures: dict | None = None) -> list:
    """The report's blocks from statistics ``{(diagnostic, group): ds}``, the per-run result
    datasets, ``(label, metrics)`` runs and ``{name: png path}`` figures."""
    figures = figures or {}
    groups = sorted({g for _, g in stats})
    models = [model_label(m) for m in ordered_models([str(m) for ds in stats.values() for m in ds["model"].values])]
    blocks: list = [("h1", "symgrad report"),
                    ("p", f"{len(datasets)} result files; models {', '.join(models)}; groups {', '.join(groups)}."),
                    ("h2", "How to read this"), ("ul", HOW_TO_READ)]
    if runs:
        blocks.append(("h2", "Training"))
        if "training" in figures:
            blocks.append(("img", figures["training"], "Training curves; dotted: persistence baseline"))
        blocks += _training_blocks(runs)
    for group in groups:
        blocks.append(("h2", f"Group {group}"))
        fig = figures.get(f"fig1_{group}") or figures.get(f"fig3_{group}")
        if fig is None and group in ("translate-x", "translate-y"):
            fig = figures.get("fig2_translations")
        if fig is None and group in ("boost-x", "boost-y"):
            fig = figures.get("fig4_boosts")
        if fig is not None:
            blocks.append(("img", fig, f"Group {group}: per element, per model"))
        blocks += _group_notes([d for d in datasets if identity(d, "group") == group])
        if ("equivariance", group) in stats:
            blocks.append(("h3", "Forward equivariance"))
            blocks += _equivariance_blocks(stats[("equivariance", group)])
        if ("overlap", group) in stats:
            blocks.append(("h3", "Gradient overlaps"))
            blocks += _overlap_blocks(stats[("overlap", group)],
                                      [d for d in datasets if identity(d, "group") == group
                                       and identity(d, "diagnostic") == "overlap"])
        for name in sorted(figures):
            if name.startswith(f"solver_{group}_"):
                blocks.append(("img", figures[name], f"Chi solves: {name.removeprefix('solver_')}"))
    blocks.append(("h2", "Provenance"))
    blocks += _provenance_blocks(datasets)
    return blocks


# --------------------------------------------------------------------------------------
# rendering


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks, base: Path) -> str:
    lines = []
    for kind, *rest in blocks:
        if kind.startswith("h"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in rest[0]] + [""]
        elif kind == "table":
            header, rows = rest
            lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            path, caption = rest
            lines += [f"![{caption}]({Path(path).relative_to(base).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    """``**bold**`` and ```code``` of the report's own sentences, as HTML."""
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def to_html(blocks) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>symgrad report</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45;color:#222}",
             "table{border-collapse:collapse;font-size:0.85em;margin:0.6em 0}",
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f2f2f2}",
             "td:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4}",
             "</style></head><body>"]
    for kind, *rest in blocks:
        if kind.startswith("h"):
            parts.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md(rest[0])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            header, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        elif kind == "img":
            path, caption = rest
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result_paths, out_dir, *, runs: Sequence = (), formats: Sequence[str] = ("png", "pdf")):
    """Figures, statistics and ``report.md``/``report.html`` for the result files, into
    ``out_dir``; returns the paths of the two reports."""
    from symgrad import plots, study
    from symgrad.io import atomic_write
    from symgrad.train.metrics import read_runs

    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    formats = ["png", *[f for f in formats if f != "png"]]  # the HTML embeds the PNGs
    datasets, curves = study.load_results(list(result_paths)), read_runs(runs)  # each read once
    written = plots.draw(datasets, fig_dir, runs=curves, formats=formats)
    stats = study.read_statistics([p for p in written if p.suffix == ".nc"])
    figures = {p.stem: p for p in written if p.suffix == ".png"}
    blocks = build(stats, datasets, curves, figures)
    md, page = out_dir / REPORT_MD, out_dir / REPORT_HTML
    with atomic_write(md) as tmp:
        tmp.write_text(to_markdown(blocks, out_dir))
    with atomic_write(page) as tmp:
        tmp.write_text(to_html(blocks))
    return md, page
