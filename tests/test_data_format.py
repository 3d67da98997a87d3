"""Data files: schema conversion, writer/reader round trip, PDEGym layout, shards, errors."""

from __future__ import annotations

import numpy as np
import pytest

from symgrad.data import TrajectoryDataset, open_dataset, schema, write_dataset
from symgrad.data.schema import CHANNELS, conservative_to_file_channels, file_channels_to_conservative
from symgrad.errors import SymgradError

import netCDF4

GAMMA = 1.4


def random_states(rng, n, t, nx, ny, gamma=GAMMA):
    """Physical conservative states (n, t, nx, ny, 4) in float32."""
    rho = rng.uniform(0.1, 2.0, (n, t, nx, ny))
    u = rng.uniform(-1, 1, (n, t, nx, ny))
    v = rng.uniform(-1, 1, (n, t, nx, ny))
    p = rng.uniform(0.1, 2.0, (n, t, nx, ny))
    return schema.primitive_to_conservative(rho, u, v, p, gamma).astype(np.float32)


def write_pdegym_like(path, channels, *, dims=None, fill_value=None, extra_vars=None):
    """A file in PDEGym's published layout: only the variable ``data`` (sample, time, channel, x, y),
    float32, no coordinates, no attributes (the way h5py-written files look through netCDF4)."""
    channels = np.asarray(channels, dtype=np.float32)
    dims = dims or tuple(f"phony_dim_{k}" for k in range(channels.ndim))
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        for name, size in zip(dims, channels.shape):
            if name not in nc.dimensions:
                nc.createDimension(name, size)
        var = nc.createVariable("data", "f4", dims, fill_value=fill_value)
        var[:] = channels
        for name, value in (extra_vars or {}).items():
            v = nc.createVariable(name, "f4", ("phony_dim_0",))
            v[:] = value


def pdegym_channels(q, gamma=GAMMA):
    return conservative_to_file_channels(q, gamma)


# -- conversion ------------------------------------------------------------------------
def test_conversion_roundtrip_float64_exact():
    rng = np.random.default_rng(0)
    rho = rng.uniform(0.1, 2.0, (3, 8, 8))
    u, v = rng.uniform(-1, 1, (2, 3, 8, 8))
    p = rng.uniform(0.1, 2.0, (3, 8, 8))
    q = schema.primitive_to_conservative(rho, u, v, p, GAMMA)
    np.testing.assert_allclose(q[..., 1], rho * u, rtol=0, atol=0)
    np.testing.assert_allclose(q[..., 3], p / (GAMMA - 1) + 0.5 * rho * (u**2 + v**2), rtol=1e-15)
    # back to primitive, in float64 (before the float32 rounding of the file)
    q64 = q
    c = np.stack([q64[..., 0], q64[..., 1] / q64[..., 0], q64[..., 2] / q64[..., 0],
                  (GAMMA - 1) * (q64[..., 3] - 0.5 * (q64[..., 1] ** 2 + q64[..., 2] ** 2) / q64[..., 0]),
                  q64[..., 3]], axis=-3)
    np.testing.assert_allclose(c[:, 1], u, rtol=1e-14)
    np.testing.assert_allclose(c[:, 3], p, rtol=1e-12)
    assert schema.energy_mismatch(c, GAMMA).max() < 1e-14


def test_conversion_matches_solver_conversions(x64):
    from symgrad import euler
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    q = random_states(rng, 2, 1, 6, 5).astype(np.float64)[:, 0]
    c = conservative_to_file_channels(q, GAMMA)
    rho, u, v, p = euler.conservative_to_primitive(jnp.asarray(q), GAMMA)
    for k, ref in enumerate((rho, u, v, p, q[..., 3])):
        np.testing.assert_allclose(c[:, k], np.asarray(ref, dtype=np.float32), rtol=1e-6, atol=1e-7)
    back = np.asarray(euler.primitive_to_conservative(rho, u, v, p, GAMMA))
    np.testing.assert_allclose(back, q, rtol=1e-13)


def test_file_channels_to_conservative_layout():
    rng = np.random.default_rng(2)
    q = random_states(rng, 2, 3, 4, 5)
    c = conservative_to_file_channels(q, GAMMA)
    assert c.shape == (2, 3, 5, 4, 5) and c.dtype == np.float32
    back = file_channels_to_conservative(c)
    assert back.shape == q.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back[..., 0], q[..., 0])  # density and energy are stored as given
    np.testing.assert_array_equal(back[..., 3], q[..., 3])
    np.testing.assert_allclose(back, q, rtol=3e-7, atol=1e-7)


# -- symgrad files ---------------------------------------------------------------------
def test_write_read_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    q = random_states(rng, 4, 3, 8, 6, gamma=5 / 3)
    times = np.array([0.0, 0.1, 0.25])
    path = write_dataset(tmp_path / "d.nc", q, times, gamma=5 / 3, attrs={"family": "test", "seed": 7, "solver": {"cfl": 0.4}})
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file is gone
    ds = open_dataset(path)
    assert (ds.n_samples, ds.n_times, ds.resolution, ds.shape) == (4, 3, (8, 6), (8, 6))
    assert ds.gamma == pytest.approx(5 / 3) and ds.family == "test" and not ds.times_assumed
    np.testing.assert_array_equal(ds.times, times)
    np.testing.assert_allclose(ds.states(slice(None)), q, rtol=3e-7, atol=1e-7)
    # arbitrary order, repeats and negative indices follow numpy semantics
    np.testing.assert_allclose(ds.states([3, 0, 3, -1], [2, 0]), q[[3, 0, 3, -1]][:, [2, 0]], rtol=3e-7, atol=1e-7)
    assert ds.states(1).shape == (1, 3, 8, 6, 4)
    with netCDF4.Dataset(path) as nc:
        var = nc.variables["data"]
        assert var.dimensions == schema.DIMS and var.dtype == np.float32
        assert list(nc.variables["channel"][:]) == list(CHANNELS)
        np.testing.assert_allclose(nc.variables["x"][:], (np.arange(8) + 0.5) / 8)
        assert nc.getncattr("seed") == 7 and nc.getncattr("family") == "test"
    import xarray as xr
    with xr.open_dataset(path) as xds:
        assert list(xds["channel"].values) == list(CHANNELS)
        assert xds["data"].dims == schema.DIMS


def test_writer_refuses_nan(tmp_path):
    q = random_states(np.random.default_rng(4), 2, 2, 4, 4)
    q[1, 1, 2, 3, 0] = np.nan
    with pytest.raises(SymgradError, match="sample 1, time index 1"):
        write_dataset(tmp_path / "bad.nc", q, [0.0, 1.0])
    assert not (tmp_path / "bad.nc").exists()
    assert not list(tmp_path.iterdir())


# -- PDEGym files ----------------------------------------------------------------------
def test_reads_pdegym_layout_unchanged(tmp_path):
    rng = np.random.default_rng(5)
    q = random_states(rng, 3, 21, 8, 8)
    write_pdegym_like(tmp_path / "CE-RP.nc", pdegym_channels(q))
    ds = open_dataset(tmp_path / "CE-RP.nc")
    assert (ds.n_samples, ds.n_times, ds.resolution, ds.gamma) == (3, 21, 8, 1.4)
    assert ds.times_assumed
    np.testing.assert_allclose(ds.times, np.linspace(0, 1, 21))
    np.testing.assert_allclose(ds.states([2, 0], [0, 20]), q[[2, 0]][:, [0, 20]], rtol=3e-7, atol=1e-7)
    assert ds.family == "unknown"


def test_pdegym_shards_in_numeric_order(tmp_path):
    rng = np.random.default_rng(6)
    shard_dir = tmp_path / "CE-RP"
    shard_dir.mkdir()
    sizes = [2, 1, 2, 1, 1, 2, 1, 1, 1, 2, 1]  # data_0 ... data_10
    q = random_states(rng, sum(sizes), 3, 4, 4)
    start = 0
    for k, size in enumerate(sizes):
        write_pdegym_like(shard_dir / f"data_{k}.nc", pdegym_channels(q[start:start + size]))
        start += size
    for spec in (shard_dir, str(shard_dir / "data_*.nc")):
        ds = open_dataset(spec)
        assert [p.name for p in ds.paths] == [f"data_{k}.nc" for k in range(11)]
        assert ds.n_samples == sum(sizes) and ds.sample_counts == sizes
        np.testing.assert_allclose(ds.states(slice(None)), q, rtol=3e-7, atol=1e-7)
        # a read spanning shards, out of order
        idx = [14, 0, 2, 13, 3]
        np.testing.assert_allclose(ds.states(idx, [1]), q[idx][:, [1]], rtol=3e-7, atol=1e-7)
        assert ds.locate(14) == (shard_dir / "data_10.nc", 0)
        assert ds.locate(13) == (shard_dir / "data_9.nc", 1)


def test_channel_coordinate_in_other_order_is_reordered(tmp_path):
    q = random_states(np.random.default_rng(7), 2, 2, 4, 4)
    c = pdegym_channels(q)
    order = [4, 3, 0, 2, 1]  # E, p, rho, v, u
    with netCDF4.Dataset(tmp_path / "perm.nc", "w") as nc:
        for name, size in zip(schema.DIMS, c.shape):
            nc.createDimension(name, size)
        ch = nc.createVariable("channel", str, ("channel",))
        ch[:] = np.array([CHANNELS[k] for k in order], dtype=object)
        nc.createVariable("data", "f4", schema.DIMS)[:] = c[:, :, order]
    np.testing.assert_allclose(open_dataset(tmp_path / "perm.nc").states(slice(None)), q, rtol=3e-7, atol=1e-7)


def test_combining_families(tmp_path):
    rng = np.random.default_rng(8)
    parts = {}
    for fam, n in (("CE-RP", 2), ("CE-RPUI", 3), ("CE-CRP", 1)):
        parts[fam] = random_states(rng, n, 3, 4, 4)
        write_dataset(tmp_path / f"{fam}.nc", parts[fam], [0, 0.5, 1], attrs={"family": fam})
    ds = open_dataset([tmp_path / "CE-RP.nc", tmp_path / "CE-RPUI.nc", tmp_path / "CE-CRP.nc"])
    assert ds.n_samples == 6 and ds.family == "CE-RP+CE-RPUI+CE-CRP"
    np.testing.assert_allclose(ds.states(slice(None)), np.concatenate(list(parts.values())), rtol=3e-7, atol=1e-7)


# -- errors ----------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(SymgradError, match=r"nope\.nc does not exist"):
        open_dataset(tmp_path / "nope.nc")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.nc"
    path.write_bytes(np.random.default_rng(9).bytes(4096))
    with pytest.raises(SymgradError, match=r"corrupt\.nc.*(corrupt|not netCDF)"):
        open_dataset(path)


def test_truncated_file(tmp_path):
    q = random_states(np.random.default_rng(10), 4, 3, 16, 16)
    path = write_dataset(tmp_path / "full.nc", q, [0, 1, 2])
    data = path.read_bytes()
    (tmp_path / "cut.nc").write_bytes(data[: len(data) // 2])
    with pytest.raises(SymgradError, match="cut.nc"):
        open_dataset(tmp_path / "cut.nc").states(slice(None))


def test_missing_variable(tmp_path):
    with netCDF4.Dataset(tmp_path / "novar.nc", "w") as nc:
        nc.createDimension("n", 3)
        nc.createVariable("solution", "f4", ("n",))[:] = 1.0
    with pytest.raises(SymgradError, match=r"novar\.nc has no variable 'data' \(variables: solution\)"):
        open_dataset(tmp_path / "novar.nc")


def test_wrong_number_of_dims(tmp_path):
    with netCDF4.Dataset(tmp_path / "dims.nc", "w") as nc:
        for name, size in (("sample", 2), ("channel", 5), ("x", 4), ("y", 4)):
            nc.createDimension(name, size)
        nc.createVariable("data", "f4", ("sample", "channel", "x", "y"))[:] = 1.0
    with pytest.raises(SymgradError, match=r"dims\.nc has 4 dims"):
        open_dataset(tmp_path / "dims.nc")


def test_wrong_channel_count(tmp_path):
    write_pdegym_like(tmp_path / "four.nc", np.ones((2, 3, 4, 4, 4)))
    with pytest.raises(SymgradError, match=r"four\.nc has 4 channels.*expected 5"):
        open_dataset(tmp_path / "four.nc")


def test_channels_last_layout_rejected(tmp_path):
    dims = ("sample", "time", "x", "y", "channel")
    write_pdegym_like(tmp_path / "last.nc", np.ones((2, 3, 5, 4, 5)), dims=dims)
    with pytest.raises(SymgradError, match=r"last\.nc.*channel dim must be the third"):
        open_dataset(tmp_path / "last.nc")


def test_nan_in_served_slice(tmp_path):
    q = random_states(np.random.default_rng(11), 3, 3, 4, 4)
    c = pdegym_channels(q)
    c[2, 1, 3, 0, 2] = np.nan
    write_pdegym_like(tmp_path / "nan.nc", c)
    ds = open_dataset(tmp_path / "nan.nc")  # opening does not read data
    ds.states([0, 1])  # clean slices are served
    ds.states(2, [0, 2])
    with pytest.raises(SymgradError, match=r"nan\.nc holds non-finite.*sample 2.*time index 1, channel p, cell \(0, 2\)"):
        ds.states([0, 2])


def test_fill_value_nan_variable_is_reported(tmp_path):
    """xarray writes float variables with _FillValue = NaN: the NaN arrives masked, still an error."""
    c = pdegym_channels(random_states(np.random.default_rng(12), 2, 2, 4, 4))
    c[1, 0, 0, 1, 1] = np.nan
    write_pdegym_like(tmp_path / "fill.nc", c, fill_value=np.float32(np.nan))
    with pytest.raises(SymgradError, match=r"fill\.nc holds non-finite.*sample 1"):
        open_dataset(tmp_path / "fill.nc").states(1)


def test_mismatched_shards(tmp_path):
    rng = np.random.default_rng(13)
    write_pdegym_like(tmp_path / "data_0.nc", pdegym_channels(random_states(rng, 2, 3, 4, 4)))
    write_pdegym_like(tmp_path / "data_1.nc", pdegym_channels(random_states(rng, 2, 3, 8, 8)))
    with pytest.raises(SymgradError, match=r"data_1\.nc and .*data_0\.nc differ"):
        open_dataset(tmp_path)
    write_dataset(tmp_path / "g.nc", random_states(rng, 1, 3, 4, 4), [0, 0.5, 1], gamma=5 / 3)
    with pytest.raises(SymgradError, match="gamma"):
        open_dataset([tmp_path / "data_0.nc", tmp_path / "g.nc"])


def test_empty_directory_and_glob(tmp_path):
    with pytest.raises(SymgradError, match="holds no"):
        open_dataset(tmp_path)
    with pytest.raises(SymgradError, match="no data files match"):
        open_dataset(str(tmp_path / "data_*.nc"))


def test_reads_are_lazy(tmp_path, monkeypatch):
    """Only the requested (sample, time) slices are read from the variable."""
    q = random_states(np.random.default_rng(14), 6, 4, 4, 4)
    write_pdegym_like(tmp_path / "lazy.nc", pdegym_channels(q))
    ds = open_dataset(tmp_path / "lazy.nc")
    seen = []
    original = netCDF4.Variable.__getitem__

    def spy(self, key):
        out = original(self, key)
        if self.name == "data":
            seen.append(np.asarray(out).shape)
        return out

    monkeypatch.setattr(netCDF4.Variable, "__getitem__", spy)
    ds.states([4, 1], [3])
    assert seen and all(shape[0] == 1 and shape[1] == 1 for shape in seen)


def test_dataset_is_picklable(tmp_path):
    import pickle

    q = random_states(np.random.default_rng(15), 2, 2, 4, 4)
    ds = open_dataset(write_dataset(tmp_path / "p.nc", q, [0, 1]))
    ds.states(0)
    clone = pickle.loads(pickle.dumps(ds))
    assert isinstance(clone, TrajectoryDataset)
    np.testing.assert_array_equal(clone.states(1), ds.states(1))


def _write_vlen_channel_file(path, seed):
    """A PDEGym-layout file whose channel names are variable-length strings (what triggers
    netCDF-C's double-open crash)."""
    c = pdegym_channels(random_states(np.random.default_rng(seed), 3, 2, 4, 4))
    with netCDF4.Dataset(path, "w") as nc:
        for name, size in zip(schema.DIMS, c.shape):
            nc.createDimension(name, size)
        ch = nc.createVariable("channel", str, ("channel",))  # variable-length strings
        for k, name in enumerate(CHANNELS):
            ch[k] = name
        nc.createVariable("data", "f4", schema.DIMS)[:] = c
    return path


def test_same_file_in_two_datasets_with_vlen_channel_names(tmp_path):
    """Regression: a second handle that reads vlen strings and closes made netCDF-C segfault
    on the next open; datasets now share one handle per file (run in a subprocess so that a
    crash fails this test instead of killing pytest)."""
    import subprocess
    import sys
    import textwrap

    path = _write_vlen_channel_file(tmp_path / "vlen.nc", seed=16)
    script = textwrap.dedent(f"""
        from symgrad.data import open_dataset
        a = open_dataset({str(path)!r}); a.states(0)
        b = open_dataset({str(path)!r}); b.states(1)
        b.close(); c = open_dataset({str(path)!r}); c.states(2); a.states(2)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_forked_child_opens_the_file_again(tmp_path):
    """Regression: a forked worker inherits the parent's handle, so its own open was the
    double open that crashes netCDF-C (vlen channel names). Run in a subprocess so a crash
    fails this test instead of killing pytest."""
    import subprocess
    import sys
    import textwrap

    path = _write_vlen_channel_file(tmp_path / "vlen_fork.nc", seed=18)
    script = textwrap.dedent(f"""
        import os
        from symgrad.data import open_dataset
        a = open_dataset({str(path)!r}); parent = a.states(0)
        pid = os.fork()
        if pid == 0:
            b = open_dataset({str(path)!r}); b.states(1); b.close()
            c = open_dataset({str(path)!r}); c.states(2)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert (a.states(0) == parent).all()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_regenerated_file_is_not_served_from_a_stale_handle(tmp_path):
    rng = np.random.default_rng(17)
    q1, q2 = random_states(rng, 2, 2, 4, 4), random_states(rng, 3, 2, 4, 4)
    path = write_dataset(tmp_path / "r.nc", q1, [0, 1])
    first = open_dataset(path)
    first.states(0)  # holds a handle
    write_dataset(path, q2, [0, 1])  # replaced by rename
    second = open_dataset(path)
    assert second.n_samples == 3
    np.testing.assert_allclose(second.states(2), q2[2:3], rtol=3e-7, atol=1e-7)
