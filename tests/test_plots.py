"""The study's statistics, figures and report on synthetic result files of several models.

The references are the synthetic values themselves: the pooled statistics must equal
numpy's quantiles of the concatenated seeds, the drawn candles and markers must sit at the
stored statistics, and the report's tables must print the same numbers.
"""

import json
import re

import numpy as np
import pytest
import xarray as xr

from symgrad import plots, study
from symgrad.cli import main
from symgrad.diagnostics.equivariance import to_dataset
from symgrad.groups import named_group
from symgrad.io import write_netcdf_atomic
from symgrad.results import finish_result

N = 8  # resolution of the synthetic groups
RUNS = [("unet", 0), ("unet", 1), ("vit", 0), ("gcnn", 0)]


def _attrs(model, seed):
    return {"model": model, "preset": "tiny", "seed": seed, "family": "CE-RP", "checkpoint_step": 10,
            "data_files": json.dumps(["/data/ce-rp.nc"]), "time_index": 0, "command": "equivariance",
            "git_commit": "abc", "created": "2026-12-02T00:00:00+00:00", "package_versions": "{}"}


def equivariance_file(path, model, seed, group_name="d4", n=6):
    rng = np.random.default_rng([seed, len(model), len(group_name)])
    group = named_group(group_name, N, stride=1)
    equi = rng.lognormal(-10 if model != "gcnn" else -30, 2, size=(len(group), n))
    equi[0] = 0.0  # the identity is exact: must survive the log axis
    orbit = rng.lognormal(-4, 1, size=(len(group), n))
    test, persistence = rng.lognormal(-4, 0.3, size=n), rng.lognormal(-3, 0.3, size=n)
    ds = to_dataset(equi, orbit, test, persistence, group, samples=np.arange(n) + 10 * seed,
                    attrs=_attrs(model, seed))
    return write_netcdf_atomic(ds, path)


def overlap_file(path, model, seed, group_name="d4", n=5):
    rng = np.random.default_rng([seed, len(model), 7, len(group_name)])
    group = named_group(group_name, N, stride=2)
    shape = (len(group), n)
    ee = ("element", "sample")
    cos = np.ones(shape) - (0 if model == "gcnn" else rng.uniform(0, 1, shape))
    var = lambda v, name: (ee, v, {"long_name": name, "units": "1"})  # noqa: E731
    ds = xr.Dataset(
        {
            "overlap_cosine_chi": var(cos, "chi cosine"),
            "overlap_frobenius_chi": var(rng.uniform(0, 1, shape), "chi frobenius"),
            "overlap_cosine_euclidean": var(rng.uniform(-1, 1, shape), "euclidean cosine"),
            "overlap_frobenius_euclidean": var(rng.uniform(0, 1, shape), "euclidean frobenius"),
            "overlap_cosine_chi_bound": var(rng.lognormal(-16, 1, shape), "bound"),
            "overlap_frobenius_chi_bound": var(rng.lognormal(-16, 1, shape), "bound"),
            "iterations_u": var(rng.integers(10, 50, shape).astype(float), "iterations"),
            "residual_norm_u": var(rng.lognormal(-20, 1, shape), "residual"),
            "null_space_share_u": var(rng.uniform(0, 1, shape), "null-space share"),
            "overlap_matrix_chi": (("element", "sample_i", "sample_j"), rng.normal(size=(len(group), n, n)),
                                   {"long_name": "matrix"}),
        },
        coords={"element": (("element",), np.asarray([str(g) for g in group.elements]) if group_name == "d4"
                            else np.asarray(group.elements), {"long_name": group.element_long_name}),
                "sample": np.arange(n) + 10 * seed},
    )
    attrs = {**_attrs(model, seed), "command": "overlap", "damping": 1e-6, "rtol": 1e-6, "solver": "block",
             "max_relative_bound": 3e-7, "n_flagged": 1 if model == "vit" else 0, "ggn_products": 1234}
    ds = finish_result(ds, diagnostic="overlap", group=group_name, title="synthetic overlaps", attrs=attrs,
                       stats_of=["overlap_cosine_chi", "overlap_frobenius_chi"])
    return write_netcdf_atomic(ds, path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    paths = []
    for model, seed in RUNS:
        for g in ("d4", "translate-x", "translate-y", "scale"):
            paths.append(equivariance_file(d / f"{model}{seed}-eq-{g}.nc", model, seed, g))
        for g in ("d4", "translate-x"):
            paths.append(overlap_file(d / f"{model}{seed}-ov-{g}.nc", model, seed, g))
    return paths


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Run directories holding only what the figures read: metrics.nc."""
    out = []
    for model in ("unet", "vit", "gcnn"):
        d = tmp_path_factory.mktemp(model)
        ds = xr.Dataset({"train_smse": ("epoch", [0.3, 0.1, 0.05]), "val_smse": ("epoch", [0.2, 0.08, 0.04]),
                         "val_rollout_smse": (("epoch", "lead_time"), np.full((3, 4), 0.1)),
                         "val_persistence_smse": ((), 0.06),
                         "val_rollout_persistence_smse": ("lead_time", [0.06, 0.1, 0.14, 0.2])},
                        coords={"epoch": [0, 1, 2], "lead_time": [1, 2, 3, 4]},
                        attrs={"config": json.dumps({"model": model, "preset": "tiny"})})
        write_netcdf_atomic(ds, d / "metrics.nc")
        out.append(d)
    return out


def _pooled(paths, model, name, element=None):
    """The reference: every value of ``name`` of ``model``'s files, seeds concatenated."""
    values = []
    for p in paths:
        with xr.open_dataset(p) as ds:
            if str(ds["model"].item()) != model or name not in ds:
                continue
            v = ds[name] if element is None else ds[name].sel(element=element)
            values.append(np.asarray(v.values, np.float64).ravel())
    return np.concatenate(values)


def test_statistics_pool_seeds_per_model(results):
    d4 = [p for p in results if p.name.endswith("-d4.nc")]
    stats = study.study_statistics(study.load_results(d4))
    eq, ov = stats[("equivariance", "d4")], stats[("overlap", "d4")]
    assert list(eq["model"].values) == ["unet", "vit", "gcnn"]  # the study's order
    assert int(eq["n_runs"].sel(model="unet")) == 2 and eq["seeds"].sel(model="unet").item() == "0,1"
    eq_files = [p for p in d4 if "-eq-" in p.name]
    for model in ("unet", "vit", "gcnn"):
        ref = _pooled(eq_files, model, "equivariance_error", "r")
        assert ref.size == (12 if model == "unet" else 6)
        got = eq["equivariance_error_stats"].sel(model=model, element="r")
        np.testing.assert_allclose(got.sel(stat=["q1", "median", "q3"]).values, np.percentile(ref, [25, 50, 75]),
                                   rtol=1e-12)
        ref = _pooled(eq_files, model, "persistence_error")
        np.testing.assert_allclose(float(eq["persistence_error_stats"].sel(model=model, stat="median")),
                                   np.median(ref), rtol=1e-12)
    ref = _pooled([p for p in d4 if "-ov-" in p.name], "unet", "overlap_cosine_euclidean", "s")
    np.testing.assert_allclose(float(ov["overlap_cosine_euclidean_stats"].sel(model="unet", element="s", stat="median")),
                               np.median(ref), rtol=1e-12)


def test_drawn_candles_and_markers_are_the_stored_statistics(results, tmp_path):
    stats = study.study_statistics(study.load_results(results))
    files = study.write_statistics(stats, tmp_path)
    back = study.read_statistics(files)  # drawn from the file, as `symgrad figures` does
    plt = plots._pyplot()
    eq = back[("equivariance", "d4")]
    fig, ax = plt.subplots()
    artists = plots.candles(ax, eq, "equivariance_error")
    assert ax.get_yscale() == "symlog"  # exact zeros at the identity stay visible
    for model, art in artists.items():
        s = eq["equivariance_error_stats"].sel(model=model)
        np.testing.assert_allclose([m.get_ydata()[0] for m in art["medians"]], s.sel(stat="median").values)
        for e, box in enumerate(art["boxes"]):
            ys = box.get_path().vertices[:, 1]
            np.testing.assert_allclose([ys.min(), ys.max()], s.sel(stat=["q1", "q3"]).values[e])
        low = [w.get_ydata()[1] for w in art["whiskers"][::2]]
        high = [w.get_ydata()[1] for w in art["whiskers"][1::2]]
        np.testing.assert_allclose(low, s.sel(stat="whisker_low").values)
        np.testing.assert_allclose(high, s.sel(stat="whisker_high").values)
    plt.close(fig)

    tx = back[("overlap", "translate-x")]
    fig, ax = plt.subplots()
    bars = plots.profile(ax, tx, "overlap_cosine_chi")
    for model, container in bars.items():
        s = tx["overlap_cosine_chi_stats"].sel(model=model)
        line, _, (segments,) = container.lines
        np.testing.assert_allclose(line.get_ydata(), s.sel(stat="median").values)
        ends = np.array([seg[:, 1] for seg in segments.get_segments()])
        np.testing.assert_allclose(ends.min(axis=1), s.sel(stat="q1").values)
        np.testing.assert_allclose(ends.max(axis=1), s.sel(stat="q3").values)
    assert ax.get_yscale() == "linear"
    plt.close(fig)


def test_colours_are_fixed_per_model_and_colour_blind_safe():
    a = plots.model_colours(["unet", "vit", "gcnn"])
    b = plots.model_colours(["gcnn", "mine", "unet"])
    assert a["unet"] == b["unet"] and a["gcnn"] == b["gcnn"]
    assert len(set(a.values()) | {b["mine"]}) == 4 and set(a.values()) <= set(plots.OKABE_ITO)


def test_plain_ticks_near_one(results, tmp_path):
    """An equivariant model's overlaps of exactly 1 must not give an offset axis ("1e-7+1")."""
    stats = study.study_statistics(study.load_results([p for p in results if "gcnn" in p.name and "-ov-d4" in p.name]))
    fig = plots.group_figure({"overlap": stats[("overlap", "d4")]})
    fig.canvas.draw()
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.yaxis.get_offset_text().get_text() == ""
            labels = [t.get_text() for t in ax.get_yticklabels()]
            assert all("e" not in t for t in labels), labels
    plots._pyplot().close(fig)


def test_figures_command_writes_the_study_figures(results, run_dirs, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["figures", *map(str, results), "--runs", *map(str, run_dirs), "--out", str(out)]) == 0
    for stem in ("fig1_d4", "fig2_translations", "fig3_scale", "training", "solver_d4_unet-tiny-seed0",
                 "solver_translate-x_vit-tiny-seed0"):
        for fmt in ("png", "pdf"):
            f = out / f"{stem}.{fmt}"
            assert f.is_file() and f.stat().st_size > 1000, f
    assert (out / "fig1_d4.png").read_bytes()[:4] == b"\x89PNG" and (out / "fig1_d4.pdf").read_bytes()[:4] == b"%PDF"
    assert {p.name for p in out.glob("statistics_*.nc")} == {
        f"statistics_{d}_{g}.nc" for g in ("d4", "translate-x", "translate-y", "scale") for d in ("equivariance",)
    } | {"statistics_overlap_d4.nc", "statistics_overlap_translate-x.nc"}
    assert len(list(out.glob("*.png"))) == 4 + len(RUNS) * 2  # no figure per variable
    assert not list(out.glob(".*tmp*"))


def _table_rows(md: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() == first_cell]


def test_report_numbers_match_the_datasets(results, run_dirs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", *map(str, results), "--runs", *map(str, run_dirs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "How to read this" in md and "## Provenance" in md
    # test error and persistence per model (group d4 comes first among the groups' tables? no: by name)
    eq_d4 = [p for p in results if "-eq-d4" in p.name]
    rows = _table_rows(md, "UNet")
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    test, pers = _pooled(eq_d4, "unet", "test_error"), _pooled(eq_d4, "unet", "persistence_error")
    expected = [f"{fmt(np.median(test))} [{fmt(np.percentile(test, 25))}, {fmt(np.percentile(test, 75))}]",
                f"{fmt(np.median(pers))} [{fmt(np.percentile(pers, 25))}, {fmt(np.percentile(pers, 75))}]"]
    assert any(r[1:3] == expected for r in rows), rows
    # the equivariance error of every model at element r2 (the d4 table)
    r2 = _table_rows(md, "r2")
    for m, model in enumerate(("unet", "vit", "gcnn")):
        ref = _pooled(eq_d4, model, "equivariance_error", "r2")
        cell = f"{fmt(np.median(ref))} [{fmt(np.percentile(ref, 25))}, {fmt(np.percentile(ref, 75))}]"
        assert any(len(r) > m + 1 and r[m + 1] == cell for r in r2), (model, cell)
    # the chi cosine of the ViT at r3s, and its solver accuracy
    ov_d4 = [p for p in results if "-ov-d4" in p.name]
    ref = _pooled(ov_d4, "vit", "overlap_cosine_chi", "r3s")
    assert f"{fmt(np.median(ref))} [{fmt(np.percentile(ref, 25))}, {fmt(np.percentile(ref, 75))}]" in md
    solver_rows = [r for r in _table_rows(md, "ViT") if "block" in r]
    assert solver_rows and solver_rows[0][6].startswith("1 of ")
    # training: the val SMSE beside the persistence baseline
    assert any(r[3:6] == ["0.04", "0.06", "0.6667"] for r in _table_rows(md, "vit tiny (" + run_dirs[1].name + ")"))
    # provenance: every result file is listed
    for p in results:
        assert f"| {p.name} |" in md
    page = (out / "report.html").read_text()
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)  # self-contained
    assert (out / "figures" / "fig1_d4.png").is_file()


def test_figures_and_report_bad_input(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "missing.nc"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    empty = write_netcdf_atomic(xr.Dataset({"a": (("x",), np.zeros(3))}), tmp_path / "empty.nc")
    assert main(["report", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "not an equivariance or overlap result" in capsys.readouterr().err
    assert main(["figures", str(empty), "--runs", str(tmp_path), "--out", str(tmp_path)]) == 2
