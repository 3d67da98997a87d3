"""`symgrad merge`: results of several runs stacked along `run`, drawn by `symgrad figures`."""

import json

import numpy as np
import pytest
import xarray as xr

from symgrad.cli import main
from symgrad.errors import SymgradError
from symgrad.results import merge_results, split_runs


@pytest.fixture(scope="module")
def results(tiny_trained_run, tmp_path_factory):
    """Real equivariance (d4, translate-x) and overlap (d4) results of the shared tiny run,
    plus a stand-in for the same run trained with seed 1: other test trajectories, other values."""
    run_dir, data_file = tiny_trained_run
    root = tmp_path_factory.mktemp("merge")
    common = ["--run", str(run_dir), "--data", str(data_file), "--samples", "2"]
    out = {}
    for name, group, extra in (("equivariance", "d4", []), ("equivariance", "translate-x", []),
                               ("overlap", "d4", ["--metric", "euclidean", "--no-progress"])):
        path = root / f"seed0-{name}-{group}.nc"
        assert main([name, *common, "--group", group, "--out", str(path), *extra]) == 0
        out[name, group, 0] = path
        with xr.open_dataset(path) as ds:
            other = ds.load()
        other = other.assign_coords(seed=1)
        for dim in ("sample", "sample_i", "sample_j"):
            if dim in other.dims:
                other = other.assign_coords({dim: other[dim].values + 100})
        for var in other.data_vars:
            if np.issubdtype(other[var].dtype, np.floating):
                other[var] = 2.0 * other[var]
        out[name, group, 1] = root / f"seed1-{name}-{group}.nc"
        other.to_netcdf(out[name, group, 1])
    return out


def test_merge_stacks_runs_with_their_coordinates_and_keeps_every_value(results, tmp_path, capsys):
    merged_path = tmp_path / "study.nc"
    sources = [results["equivariance", "d4", 0], results["equivariance", "d4", 1]]
    assert main(["merge", *map(str, sources), "--out", str(merged_path)]) == 0
    assert "2 runs (models unet)" in capsys.readouterr().out
    with xr.open_dataset(merged_path) as merged:
        merged = merged.load()
    assert merged["diagnostic"].item() == "equivariance" and merged["group"].item() == "d4"
    assert merged["seed"].values.tolist() == [0, 1] and merged["model"].values.tolist() == ["unet", "unet"]
    assert merged["preset"].values.tolist() == ["tiny", "tiny"] and merged["family"].dims == ("run",)
    assert merged["equivariance_error"].dims == ("run", "element", "sample")
    for i, path in enumerate(sources):
        with xr.open_dataset(path) as ds:
            np.testing.assert_array_equal(merged["equivariance_error"].isel(run=i).values,
                                          ds["equivariance_error"].values)
            np.testing.assert_array_equal(merged["sample_id"].isel(run=i).values, ds["sample"].values)
            assert int(merged["seed"].values[i]) == int(ds["seed"]) == i
            assert json.loads(str(merged["source_attrs"].values[i]))["created"] == ds.attrs["created"]
    # the per-run view is the source file again
    (label0, first), (label1, _) = split_runs(merged)
    assert (label0, label1) == ("unet-tiny-seed0", "unet-tiny-seed1")
    with xr.open_dataset(sources[0]) as ds:
        np.testing.assert_array_equal(first["test_error_stats"].values, ds["test_error_stats"].values)
        assert first.attrs["run_dir"] == ds.attrs["run_dir"]
    # xarray selects by run coordinates directly
    assert merged.where(merged.seed == 1, drop=True).sizes["run"] == 1

    assert main(["merge", *map(str, sources), "--out", str(merged_path)]) == 2  # kept unless --overwrite
    assert "--overwrite" in capsys.readouterr().err
    figures = tmp_path / "figures"
    assert main(["figures", str(merged_path), "--out", str(figures), "--format", "png"]) == 0
    assert sorted(p.name for p in figures.glob("*.png")) == ["fig1_d4.png"]
    # the merged file's two seeds are pooled into the one model they belong to
    with xr.open_dataset(figures / "statistics_equivariance_d4.nc") as stats:
        assert stats["model"].values.tolist() == ["unet"] and int(stats["n_runs"].sel(model="unet")) == 2
        pooled = np.concatenate([merged["equivariance_error"].isel(run=i).sel(element="r").values for i in (0, 1)])
        np.testing.assert_allclose(float(stats["equivariance_error_stats"].sel(model="unet", element="r", stat="median")),
                                   np.median(pooled), rtol=1e-12)


def test_merge_of_overlap_results(results, tmp_path):
    ds = merge_results([results["overlap", "d4", 0], results["overlap", "d4", 1]])
    assert ds["diagnostic"].item() == "overlap"
    assert ds["overlap_matrix_euclidean"].dims == ("run", "element", "sample_i", "sample_j")
    with xr.open_dataset(results["overlap", "d4", 1]) as one:
        np.testing.assert_array_equal(ds["overlap_cosine_euclidean"].isel(run=1).values,
                                      one["overlap_cosine_euclidean"].values)


def test_merge_refuses_what_does_not_stack(results, tmp_path):
    with pytest.raises(SymgradError, match="one diagnostic and group at a time"):
        merge_results([results["equivariance", "d4", 0], results["equivariance", "translate-x", 1]])
    with pytest.raises(SymgradError, match="one diagnostic and group at a time"):
        merge_results([results["equivariance", "d4", 0], results["overlap", "d4", 1]])
    with pytest.raises(SymgradError, match="same run"):
        merge_results([results["equivariance", "d4", 0], results["equivariance", "d4", 0]])
    with pytest.raises(SymgradError, match="does not exist"):
        merge_results([tmp_path / "missing.nc"])
