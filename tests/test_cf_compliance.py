"""Every kind of netCDF file symgrad writes passes the IOOS compliance checker's ``cf:1.8``
with no errors (issue 23): a data file, training's ``metrics.nc``, the result of each
diagnostic (equivariance, overlap, spectrum), a merged result and the pooled statistics.
Files written before (int64 integers, coordinates with a fill value) still read and merge."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from symgrad.cli import main
from symgrad.errors import SymgradError

if importlib.util.find_spec("compliance_checker") is None:
    pytest.skip("compliance-checker (a dev dependency: pip install -e '.[dev]') is not installed",
                allow_module_level=True)

CHECK = Path(__file__).with_name("cf_check.py")  # the checker, run in a subprocess of its own


def cf_findings_of(paths) -> dict[str, tuple[list[str], list[str]]]:
    """``(errors, warnings)`` of the checker's ``cf:1.8`` on each file, by path: one run of
    ``tests/cf_check.py`` in a subprocess (the checker's own C and C++ libraries stay out of
    pytest's process, where the suite compiles JAX programs)."""
    proc = subprocess.run([sys.executable, str(CHECK), *map(str, paths)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {path: tuple(pair) for path, pair in json.loads(proc.stdout).items()}


def cf_findings(path) -> tuple[list[str], list[str]]:
    return cf_findings_of([path])[str(path)]


def _as_written_before(ds):
    """``ds`` the way symgrad wrote it before issue 23: int64 integers, a fill value on the
    float coordinates, no history."""
    ds = ds.copy()
    for var in ds.variables.values():
        var.encoding.clear()
    for name in [n for n, v in ds.variables.items() if v.dtype.kind == "i"]:
        ds[name] = ds[name].astype(np.int64)
    ds.attrs.pop("history", None)
    return ds


@pytest.fixture(scope="module")
def files(tiny_trained_run, tmp_path_factory):
    """One file of each kind, written by symgrad on the shared tiny run, and an overlap result
    written the old way (:func:`_as_written_before`, another seed) merged with today's."""
    from symgrad import study

    run_dir, data_file = tiny_trained_run
    out = tmp_path_factory.mktemp("cf")
    common = ["--run", str(run_dir), "--data", str(data_file), "--samples", "2"]
    assert main(["equivariance", *common, "--group", "d4", "--out", str(out / "equivariance.nc")]) == 0
    assert main(["overlap", *common, "--group", "d4", "--rtol", "1e-2", "--damping", "1", "--probe-vectors", "2",
                 "--lanczos-steps", "2", "--no-progress", "--out", str(out / "overlap.nc")]) == 0
    assert main(["spectrum", *common, "--probe-vectors", "1", "--lanczos-steps", "1",
                 "--out", str(out / "spectrum.nc")]) == 0
    with xr.open_dataset(out / "overlap.nc") as ds:
        old = _as_written_before(ds.load()).assign_coords(seed=np.int64(1))
    old.to_netcdf(out / "overlap-old.nc", encoding={"damping_grid": {"_FillValue": np.nan}})
    assert main(["merge", str(out / "overlap.nc"), str(out / "overlap-old.nc"), "--out", str(out / "merged.nc")]) == 0
    (stats,) = study.write_statistics(study.study_statistics(study.load_results([out / "merged.nc"])), out)
    return {"data": data_file, "metrics": run_dir / "metrics.nc", "equivariance": out / "equivariance.nc",
            "overlap": out / "overlap.nc", "spectrum": out / "spectrum.nc", "merged": out / "merged.nc",
            "statistics": stats, "old overlap": out / "overlap-old.nc"}


@pytest.fixture(scope="module")
def findings(files):
    """The checker's findings on every file of :func:`files`, by kind (one checker process)."""
    by_path = cf_findings_of(files.values())
    return {kind: by_path[str(path)] for kind, path in files.items()}


@pytest.mark.parametrize("kind", ["data", "metrics", "equivariance", "overlap", "spectrum", "merged", "statistics"])
def test_every_kind_of_file_passes_cf_1_8(files, findings, kind):
    errors, _ = findings[kind]
    assert not errors, f"{files[kind].name}: {len(errors)} cf:1.8 errors:\n" + "\n".join(errors)
    with xr.open_dataset(files[kind], decode_times=False) as ds:
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["history"].endswith(ds.attrs.get("command", ""))
        assert not [n for n, v in ds.variables.items() if v.dtype.kind in "iu" and v.dtype.itemsize > 4]


def test_the_checker_finds_what_files_written_before_had(findings):
    errors, warnings = findings["old overlap"]
    assert any("sample failed because the datatype is int64" in e for e in errors), errors
    assert any("'damping_grid' must not have the _FillValue" in e for e in errors), errors
    assert any("history" in w for w in warnings), warnings


def test_files_written_before_still_read_and_merge(files):
    from symgrad.data import open_dataset
    from symgrad.results import read_result

    old, new = read_result(files["old overlap"]), read_result(files["overlap"])
    assert old["sample"].dtype == np.int64 and new["sample"].dtype == np.int32
    with xr.open_dataset(files["merged"]) as merged:
        assert merged["seed"].values.tolist() == [0, 1]
        for i, one in enumerate((new, old)):
            np.testing.assert_array_equal(merged["sample_id"].isel(run=i).values, one["sample"].values)
            np.testing.assert_array_equal(merged["iterations_u"].isel(run=i).values, one["iterations_u"].values)
            np.testing.assert_array_equal(merged["damping_grid"].values, one["damping_grid"].values)
    # a data file's times are read as stored, whatever the units of its time coordinate
    data = open_dataset(files["data"])
    with xr.open_dataset(files["data"], decode_times=False) as raw:
        np.testing.assert_array_equal(data.times, raw["time"].values)


def test_cf_dataset_writes_integers_as_int32_and_refuses_what_does_not_fit():
    from symgrad.io import cf_dataset

    ds = xr.Dataset({"count": ("grid", np.array([1, 2, 3], dtype=np.int64)),
                     "flag": ("grid", np.array([True, False, True]))},
                    coords={"grid": ("grid", np.array([0.5, 1.5, 2.5]), {"long_name": "cell"})})
    cf = cf_dataset(ds)
    assert cf["count"].encoding["dtype"] == np.int32 and cf["grid"].encoding["_FillValue"] is None
    assert "dtype" not in cf["flag"].encoding and "_FillValue" not in cf["count"].encoding
    assert cf.attrs["Conventions"] == "CF-1.8" and cf.attrs["history"]
    assert ds.attrs == {} and ds["count"].encoding == {} and ds["grid"].encoding == {}  # ds itself unchanged
    ds["count"] = ("grid", np.array([1, 2**31, 3], dtype=np.int64))
    with pytest.raises(SymgradError, match=r"out\.nc: variable 'count' holds 2147483648, outside the int32") as err:
        cf_dataset(ds, "out.nc")
    assert "\n" not in str(err.value)
