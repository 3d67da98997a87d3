"""`symgrad figures` on small synthetic result files."""

import numpy as np
import xarray as xr

from symgrad import plots
from symgrad.cli import main
from symgrad.diagnostics.equivariance import to_dataset
from symgrad.groups import named_group
from symgrad.io import write_netcdf_atomic


def equivariance_file(path, group_name="d4"):
    rng = np.random.default_rng(0)
    group = named_group(group_name, 8, stride=1)
    equi = rng.lognormal(-10, 2, size=(len(group), 12))
    equi[0] = 0.0  # the identity is exact: must survive the log axis
    orbit = rng.lognormal(-4, 1, size=(len(group), 12))
    ds = to_dataset(equi, orbit, orbit[0], group, samples=np.arange(12), attrs={"model": "unet"})
    return write_netcdf_atomic(ds, path)


def overlap_file(path):
    rng = np.random.default_rng(1)
    elements = ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
    shape = (8, 10)
    ds = xr.Dataset(
        {
            "overlap_cosine_chi": (("element", "sample"), rng.uniform(-1, 1, shape), {"long_name": "cosine overlap, chi metric", "units": "1"}),
            "overlap_frobenius_chi": (("element", "sample"), rng.uniform(0, 1, shape)),
            "overlap_cosine_euclidean": (("element", "sample"), rng.uniform(-1, 1, shape)),
            "overlap_matrix_chi": (("element", "sample_i", "sample_j"), rng.normal(size=(8, 10, 10))),
            "converged": (("element", "sample"), np.ones(shape, dtype=bool)),
        },
        coords={"element": elements, "sample": np.arange(10)},
        attrs={"group": "d4"},
    )
    return write_netcdf_atomic(ds, path)


def test_per_sample_variables_and_scales(tmp_path):
    with xr.open_dataset(equivariance_file(tmp_path / "eq.nc")) as ds:
        assert plots.per_sample_variables(ds) == ["equivariance_error", "orbit_error", "test_error"]
        _, scale = plots.box_plot(ds, "equivariance_error")
        assert scale == "symlog"  # zeros at the identity
        _, scale = plots.box_plot(ds, "orbit_error")
        assert scale == "log"
    with xr.open_dataset(overlap_file(tmp_path / "ov.nc")) as ds:
        assert plots.per_sample_variables(ds) == ["overlap_cosine_chi", "overlap_frobenius_chi", "overlap_cosine_euclidean"]
        _, scale = plots.box_plot(ds, "overlap_cosine_chi")
        assert scale == "linear"


def test_figures_command_writes_png_and_pdf(tmp_path, capsys):
    eq = equivariance_file(tmp_path / "unet-equivariance-d4.nc")
    tx = equivariance_file(tmp_path / "unet-equivariance-translate-x.nc", "translate-x")
    ov = overlap_file(tmp_path / "unet-overlap-d4.nc")
    out = tmp_path / "figures"
    assert main(["figures", str(eq), str(tx), str(ov), "--out", str(out)]) == 0
    expected = [f"unet-equivariance-d4_{v}" for v in ("equivariance_error", "orbit_error", "test_error")]
    expected += [f"unet-equivariance-translate-x_{v}" for v in ("equivariance_error", "orbit_error")]
    expected += [f"unet-overlap-d4_{v}" for v in ("overlap_cosine_chi", "overlap_frobenius_chi", "overlap_cosine_euclidean")]
    for stem in expected:
        for fmt in ("png", "pdf"):
            f = out / f"{stem}.{fmt}"
            assert f.is_file() and f.stat().st_size > 1000, f
    assert (out / "unet-overlap-d4_overlap_cosine_chi.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "unet-overlap-d4_overlap_cosine_chi.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(out.glob("*overlap_matrix*")) and not list(out.glob("*converged*"))
    assert not list(out.glob(".*tmp*"))


def test_figures_command_bad_input(tmp_path, capsys):
    assert main(["figures", str(tmp_path / "missing.nc"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
    empty = write_netcdf_atomic(xr.Dataset({"a": (("x",), np.zeros(3))}), tmp_path / "empty.nc")
    assert main(["figures", str(empty), "--out", str(tmp_path)]) == 2
    assert "no per-sample variables" in capsys.readouterr().err
