"""Every diagnostic's result file has the one schema of ``symgrad.results`` (docs/design.md
section 6): CF attributes, the identifying scalar coordinates, ``*_stats`` variables and the
real subcommand in the provenance."""

import numpy as np
import pytest
import xarray as xr

from symgrad.cli import main
from symgrad.results import RESULT_COORDS, TUKEY_STATS, check_result, tukey_statistics


@pytest.fixture(scope="module")
def results(tiny_trained_run, tmp_path_factory):
    """One file of each diagnostic, written by its subcommand on the tiny trained run."""
    run_dir, data_file = tiny_trained_run
    out = tmp_path_factory.mktemp("results")
    common = ["--run", str(run_dir), "--data", str(data_file), "--samples", "2"]
    argv = {
        "equivariance": ["equivariance", *common, "--group", "d4", "--out", str(out / "equivariance.nc")],
        "overlap": ["overlap", *common, "--group", "d4", "--rtol", "1e-4", "--damping", "1e-2",
                    "--probe-vectors", "2", "--no-progress", "--out", str(out / "overlap.nc")],
        "spectrum": ["spectrum", *common, "--probe-vectors", "2", "--lanczos-steps", "2",
                     "--out", str(out / "spectrum.nc")],
    }
    for args in argv.values():
        assert main(args) == 0
    return {name: (out / f"{name}.nc", args) for name, args in argv.items()}


@pytest.mark.parametrize("diagnostic", ["equivariance", "overlap", "spectrum"])
def test_every_diagnostic_writes_the_one_schema(results, diagnostic):
    path, argv = results[diagnostic]
    with xr.open_dataset(path) as ds:
        assert check_result(ds) == []
        assert ds["diagnostic"].item() == diagnostic
        assert (ds["model"].item(), ds["preset"].item(), int(ds["seed"])) == ("unet", "tiny", 0)
        assert ds.attrs["command"] == "symgrad " + " ".join(argv)  # the subcommand, not the process
        if diagnostic != "spectrum":
            assert ds["group"].item() == "d4"
            assert ds["sample"].attrs["long_name"] == "test trajectory index in the data file(s)"
            stats = [name for name in ds.data_vars if name.endswith("_stats")]
            assert stats, "the per-sample variables that figures draw carry their statistics"
            for name in stats:
                per_sample = ds[name[:-len("_stats")]]
                np.testing.assert_array_equal(ds[name].values, tukey_statistics(per_sample.values, axis=-1))
                assert list(ds["stat"].values) == list(TUKEY_STATS)


def test_results_of_several_models_concatenate_along_a_coordinate(results):
    path, _ = results["equivariance"]
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    other = ds.assign_coords(model="vit")
    both = xr.concat([ds, other], dim="model")
    assert both["model"].values.tolist() == ["unet", "vit"]
    assert both["equivariance_error"].dims == ("model", "element", "sample")
    assert both["group"].item() == "d4"  # shared coordinates stay scalar


def test_check_result_names_what_is_missing(results):
    path, _ = results["equivariance"]
    with xr.open_dataset(path) as ds:
        bad = ds.drop_vars("model")
        bad.attrs["Conventions"] = "none"
        problems = check_result(bad)
    assert any("'model'" in p for p in problems) and any("Conventions" in p for p in problems)
    assert set(RESULT_COORDS) == {"diagnostic", "group", "model", "preset", "seed", "family"}
