"""The Well's HDF5 layout (issue 24): files written here with raw h5py from the published
specification (PolymathicAI/the_well docs/data_format.md, the layout of
euler_multi_quadrants_periodicBC) are read unchanged; export round-trips bit for bit; the
coarsening is exact, conservative and commutes with D4; a tiny UNet trains on The Well's
split directories and the diagnostics run on it. The slow test hands an exported file to
The Well's own reader (extra 'well')."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from symgrad.cli import main
from symgrad.errors import SymgradError

GASES = {"Dry_air_20": 1.4, "Ar_-180": 1.76}  # two of the published gases, as in their file names
N_TIMES = 3


def gas_states(rng, n, n_times, nx, ny, gamma):
    """Physical conservative states ``(n, t, nx, ny, 4)`` float32 and their pressure."""
    rho = rng.uniform(0.5, 1.5, (n, n_times, nx, ny))
    m = rng.uniform(-0.3, 0.3, (n, n_times, nx, ny, 2))
    p = rng.uniform(0.5, 1.5, (n, n_times, nx, ny))
    e = p / (gamma - 1) + 0.5 * np.sum(m**2, axis=-1) / rho
    q = np.concatenate([rho[..., None], m, e[..., None]], axis=-1).astype(np.float32)
    return q, p.astype(np.float32)


def spec_file(path, q, p, times, gamma, *, bc_type="periodic", grid_type="cartesian", n_dims=2,
              spatial_dims=("x", "y"), drop_field=None, gamma_attr=True):
    """A file as The Well's data-format specification lays it out, with raw h5py: every
    group and attribute, fields (B, T, W, H) with W = len(x), momentum (..., 2)."""
    n, t, nx, ny, _ = q.shape
    strings = h5py.string_dtype()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["simulation_parameters"] = np.array(["gamma"], dtype=strings)
        if gamma_attr:
            f.attrs["gamma"] = gamma
        f.attrs["dataset_name"] = "euler_multi_quadrants_periodicBC"
        f.attrs["grid_type"] = grid_type
        f.attrs["n_spatial_dims"] = n_dims
        f.attrs["n_trajectories"] = n
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = np.array(list(spatial_dims), dtype=strings)
        dims["time"] = np.asarray(times, dtype=np.float32)
        dims["time"].attrs["sample_varying"] = False
        for name, size in (("x", nx), ("y", ny)):
            dims[name] = ((np.arange(size) + 0.5) / size).astype(np.float32)
            dims[name].attrs["sample_varying"] = False
            dims[name].attrs["time_varying"] = False
        bcs = f.create_group("boundary_conditions")
        for name, size in (("x", nx), ("y", ny)):
            bc = bcs.create_group(f"{name}_boundary")
            bc.attrs["associated_dims"] = np.array([name], dtype=strings)
            bc.attrs["associated_fields"] = np.array([], dtype=strings)
            bc.attrs["bc_type"] = bc_type if name == "x" else "periodic"
            bc.attrs["sample_varying"] = False
            bc.attrs["time_varying"] = False
            mask = np.zeros(size, dtype=bool)
            mask[[0, -1]] = True
            bc["mask"] = mask
            bc["values"] = np.zeros(int(mask.sum()), dtype=np.float32)
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = np.array(["gamma"], dtype=strings)
        scalars["gamma"] = np.array([gamma], dtype=np.float32)
        scalars["gamma"].attrs["sample_varying"] = False
        scalars["gamma"].attrs["time_varying"] = False
        fields = {"energy": q[..., 3], "density": q[..., 0], "pressure": p}
        for group_name, values in (("t0_fields", fields), ("t1_fields", {"momentum": q[..., 1:3]})):
            group = f.create_group(group_name)
            kept = {k: v for k, v in values.items() if k != drop_field}
            group.attrs["field_names"] = np.array(list(kept), dtype=strings)
            for name, value in kept.items():
                group[name] = value
                group[name].attrs["dim_varying"] = np.array([True, True])
                group[name].attrs["sample_varying"] = True
                group[name].attrs["time_varying"] = True
        f.create_group("t2_fields").attrs["field_names"] = np.array([], dtype=strings)
    return path


def well_root(root, counts, res, seed=0, times=None):
    """The Well's ``data/{train,valid,test}`` with one file per gas: ``counts[split]`` trajectories
    each. Returns the root and ``{file: (states, pressure, gamma)}``."""
    rng = np.random.default_rng(seed)
    times = np.linspace(0.0, 0.03, N_TIMES) if times is None else times
    written = {}
    for split, n in counts.items():
        for gas, gamma in GASES.items():
            q, p = gas_states(rng, n, len(times), res, res, gamma)
            path = spec_file(root / "data" / split / f"euler_multi_quadrants_periodicBC_gamma_{gamma}_{gas}.hdf5",
                             q, p, times, gamma)
            written[path] = (q, p, gamma)
    return root, written


def _one_line_error(capsys, command, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"symgrad {command}: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


# --------------------------------------------------------------------------------------
# reading the published layout


def test_a_file_of_the_published_layout_reads_unchanged(tmp_path, capsys, monkeypatch):
    from symgrad.data import open_dataset

    times = np.linspace(0.0, 0.03, N_TIMES)
    root, written = well_root(tmp_path / "euler_multi_quadrants_periodicBC", {"train": 3, "valid": 1, "test": 2},
                              res=6, times=times)
    ds = open_dataset(root)
    # The split root gives train, valid, test files in this order; each split's files by name.
    splits = [p.parent.name for p in ds.paths]
    assert splits == ["train", "train", "valid", "valid", "test", "test"]
    assert ds.sample_counts == [3, 3, 1, 1, 2, 2] and ds.n_samples == 12
    assert ds.gammas == [written[p][2] for p in ds.paths]
    assert sorted(set(ds.gammas)) == [1.4, 1.76]
    with pytest.raises(SymgradError, match="several gases"):
        ds.gamma  # noqa: B018 - one gamma is asked for where there are two
    np.testing.assert_array_equal(ds.times, times.astype(np.float32).astype(np.float64))
    assert ds.resolution == 6 and ds.n_times == N_TIMES and ds.family == "euler_multi_quadrants_periodicBC"
    # Values: the state is density, momentum (x, y) and energy, bit for bit, in every file.
    offset = 0
    for path in ds.paths:
        q, p, gamma = written[path]
        got = ds.states(np.arange(offset, offset + len(q)))
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), q.view(np.uint32)), path
        channels = ds.read_channels(np.arange(offset, offset + len(q)))
        np.testing.assert_array_equal(channels[:, :, 3], p)  # the file's pressure
        np.testing.assert_array_equal(channels[:, :, 4], q[..., 3])
        offset += len(q)
    # A split directory and a glob read the same files; a single file too.
    train = open_dataset(root / "data" / "train")
    assert train.paths == ds.paths[:2]
    assert open_dataset(str(root / "data" / "*" / "*Ar*.hdf5")).n_samples == 6
    # symgrad info describes it: the layout and each file's gamma.
    assert main(["info", str(root / "data" / "train"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "The Well" in out and "1.4 (" in out and "1.76 (" in out and "check:       OK" in out
    # info reads The Well's large states in blocks cut in time too: one state at a time, the same report.
    from symgrad.commands import info

    monkeypatch.setattr(info, "_BLOCK_BYTES", 5 * 6 * 6 * 4)
    assert main(["info", str(root / "data" / "train"), "--check"]) == 0
    assert capsys.readouterr().out == out


def test_the_x_y_axes_are_checked_against_the_dimensions_group(tmp_path):
    from symgrad.data import open_dataset

    rng = np.random.default_rng(1)
    q, p = gas_states(rng, 1, N_TIMES, 4, 6, 1.4)  # a non-square grid: x has 4 cells, y 6
    ok = spec_file(tmp_path / "ok.hdf5", q, p, np.arange(N_TIMES), 1.4)
    assert open_dataset(ok).shape == (4, 6)
    swapped = spec_file(tmp_path / "yx.hdf5", q, p, np.arange(N_TIMES), 1.4, spatial_dims=("y", "x"))
    with pytest.raises(SymgradError, match=r"spatial_dims is \['y', 'x'\]"):
        open_dataset(swapped)


@pytest.mark.parametrize("kind, needle", [
    ("open", "bc_type 'open', not periodic"),
    ("3d", "n_spatial_dims is 3"),
    ("spherical", "grid_type is 'spherical'"),
    ("no-pressure", "lacks the field t0_fields/pressure"),
    ("no-momentum", "lacks the field t1_fields/momentum"),
    ("no-gamma", "no parameter 'gamma'"),
])
def test_a_file_that_symgrad_cannot_use_is_refused_in_one_line(tmp_path, capsys, kind, needle):
    rng = np.random.default_rng(2)
    q, p = gas_states(rng, 1, N_TIMES, 4, 4, 1.4)
    options = {"open": dict(bc_type="open"), "3d": dict(n_dims=3), "spherical": dict(grid_type="spherical"),
               "no-pressure": dict(drop_field="pressure"), "no-momentum": dict(drop_field="momentum"),
               "no-gamma": dict(gamma_attr=False)}[kind]
    path = spec_file(tmp_path / "f.hdf5", q, p, np.arange(N_TIMES), 1.4, **options)
    if kind == "no-gamma":
        with h5py.File(path, "a") as f:
            del f["scalars"]["gamma"]
    assert main(["info", str(path)]) == 2
    _one_line_error(capsys, "info", str(path), needle)


def test_non_physical_values_name_the_file_and_the_gas(tmp_path):
    from symgrad.data import open_dataset

    rng = np.random.default_rng(3)
    q, p = gas_states(rng, 2, N_TIMES, 4, 4, 1.76)
    path = spec_file(tmp_path / "argon.hdf5", q, p, np.arange(N_TIMES), 1.4)  # gamma does not match the energy
    with pytest.raises(SymgradError, match=r"E inconsistent .*gamma 1\.4"):
        open_dataset(path).states([0])


# --------------------------------------------------------------------------------------
# export and round trip


def test_export_then_read_gives_the_same_states_bit_for_bit(tmp_path, capsys):
    from symgrad.data import open_dataset, write_dataset

    rng = np.random.default_rng(4)
    q, _ = gas_states(rng, 3, N_TIMES, 8, 8, 5 / 3)
    nc = write_dataset(tmp_path / "gen.nc", q, np.linspace(0, 0.1, N_TIMES), gamma=5 / 3, attrs={"family": "CE-RP"})
    out = tmp_path / "train" / "gen.hdf5"
    assert main(["export", str(nc), "--format", "well", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["gen.hdf5"]  # no temporary file left
    source, exported = open_dataset(nc), open_dataset(out)
    a, b = source.states(slice(None)), exported.states(slice(None))
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert exported.gamma == pytest.approx(5 / 3) and exported.family == "symgrad_CE-RP"
    np.testing.assert_allclose(exported.times, source.times, rtol=1e-7)
    # The layout, read with raw h5py against the specification.
    with h5py.File(out, "r") as f:
        assert {k: f.attrs[k] for k in ("grid_type", "n_spatial_dims", "n_trajectories")} == {
            "grid_type": "cartesian", "n_spatial_dims": 2, "n_trajectories": 3}
        assert list(f.attrs["simulation_parameters"]) == ["gamma"] and f.attrs["gamma"] == pytest.approx(5 / 3)
        assert set(f) == {"dimensions", "boundary_conditions", "scalars", "t0_fields", "t1_fields", "t2_fields"}
        assert list(f["dimensions"].attrs["spatial_dims"]) == ["x", "y"]
        assert f["dimensions/time"].shape == (N_TIMES,) and f["dimensions/x"].shape == (8,)
        assert {f["boundary_conditions"][g].attrs["bc_type"].lower() for g in f["boundary_conditions"]} == {"periodic"}
        assert sorted(f["t0_fields"].attrs["field_names"]) == ["density", "energy", "pressure"]
        assert f["t0_fields/density"].shape == (3, N_TIMES, 8, 8) and f["t1_fields/momentum"].shape == (3, N_TIMES, 8, 8, 2)
        for name in ("density", "energy", "pressure"):
            field = f["t0_fields"][name]
            assert field.dtype == np.float32 and field.attrs["sample_varying"] and field.attrs["time_varying"]
            assert list(field.attrs["dim_varying"]) == [True, True]
        np.testing.assert_array_equal(f["t0_fields/density"][:], q[..., 0])
        np.testing.assert_array_equal(f["t1_fields/momentum"][:], a[..., 1:3])  # the netCDF file's momenta
    # An existing file is kept without --overwrite; the name must be The Well's.
    assert main(["export", str(nc), "--format", "well", "--out", str(out)]) == 2
    _one_line_error(capsys, "export", "--overwrite")
    assert main(["export", str(nc), "--format", "well", "--out", str(tmp_path / "x.nc")]) == 2
    _one_line_error(capsys, "export", "*.hdf5")


# --------------------------------------------------------------------------------------
# coarsening


def test_coarsening_is_exact_conservative_and_commutes_with_d4_and_block_translations(tmp_path):
    import jax.numpy as jnp

    from symgrad import groups
    from symgrad.data import open_dataset
    from symgrad.data.coarsen import coarsen

    f = 4
    constant = np.broadcast_to(np.float32([1.3, -0.2, 0.7, 3.1]), (2, 16, 16, 4))
    coarse = coarsen(constant, f)
    assert coarse.shape == (2, 4, 4, 4) and np.array_equal(coarse, constant[:, :4, :4])
    rng = np.random.default_rng(5)
    q, _ = gas_states(rng, 2, 1, 16, 16, 1.4)
    q = q[:, 0]
    coarse = coarsen(q, f)
    # Mass, momentum and energy: the sums over cells times the cell area agree.
    fine_total = q.astype(np.float64).sum(axis=(1, 2)) / 16**2
    coarse_total = coarse.astype(np.float64).sum(axis=(1, 2)) / 4**2
    np.testing.assert_allclose(coarse_total, fine_total, rtol=1e-6)
    # A block (i, j) is the mean of cells 4i..4i+3, 4j..4j+3 (an independent loop).
    reference = np.array([[q[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].astype(np.float64).mean(axis=(1, 2))
                           for j in range(4)] for i in range(4)]).transpose(2, 0, 1, 3)
    np.testing.assert_allclose(coarse, reference, rtol=1e-6)
    for name in groups.D4_ELEMENTS:
        acted_then_coarsened = coarsen(np.asarray(groups.act_d4(name, jnp.asarray(q))), f)
        coarsened_then_acted = np.asarray(groups.act_d4(name, jnp.asarray(coarse)))
        np.testing.assert_allclose(acted_then_coarsened, coarsened_then_acted, rtol=1e-6, atol=1e-7, err_msg=name)
    for k in (4, 8):  # multiples of the factor commute; a shift by one cell does not
        np.testing.assert_allclose(coarsen(np.asarray(groups.translate(jnp.asarray(q), k, 2 * k)), f),
                                   np.asarray(groups.translate(jnp.asarray(coarse), k // f, 2 * k // f)), rtol=1e-6)
    assert not np.allclose(coarsen(np.asarray(groups.translate(jnp.asarray(q), 1, 0)), f),
                           np.asarray(groups.translate(jnp.asarray(coarse), 1, 0)), rtol=1e-3)
    # Through the reader: --coarsen reads the coarsened states; a factor that does not divide is refused.
    root, written = well_root(tmp_path / "w", {"train": 1}, res=8)
    ds = open_dataset(root, coarsen=2)
    assert ds.shape == (4, 4) and ds.stored_shape == (8, 8)
    first = next(iter(written))
    np.testing.assert_array_equal(ds.states([0]), coarsen(written[first][0], 2))
    channels = ds.read_channels([0])
    assert (channels[:, :, 3] > 0).all()  # the pressure of the coarsened (physical) state
    with pytest.raises(SymgradError, match="cannot coarsen .* by 3"):
        open_dataset(root, coarsen=3)


def test_the_data_cache_of_coarsened_well_data_is_written_in_blocks_cut_in_time(tmp_path, monkeypatch):
    from symgrad.data import cache, open_dataset

    root, _ = well_root(tmp_path / "w", {"train": 2}, res=8)
    dataset = open_dataset(root, coarsen=2)
    monkeypatch.setattr(cache, "_BLOCK_BYTES", 8 * 8 * 16)  # one stored state per block
    states = cache.open_cache(dataset, tmp_path / "cache")
    assert states.shape == (4, N_TIMES, 4, 4, 4)
    np.testing.assert_array_equal(states, dataset.states(slice(None)))


# --------------------------------------------------------------------------------------
# splits, time selection, training and the diagnostics


def _config(tmp_path, **fields):
    from symgrad.train import TrainConfig

    return TrainConfig(model="unet", preset="tiny", progress=False, **fields)


def test_the_wells_directories_are_the_split_with_first_trajectories_and_time_indices(tmp_path):
    from symgrad.train.setup import _resolve_paths, select_data

    root, _ = well_root(tmp_path / "w", {"train": 3, "valid": 2, "test": 2}, res=4,
                        times=np.linspace(0, 0.06, 5))
    # files: train air (0-2), train argon (3-5), valid air (6-7), valid argon (8-9), test (10-13)
    data = select_data(_resolve_paths(_config(tmp_path, data=(str(root),))), None)
    assert data.split_source == "the-well-directories"
    assert {k: v.tolist() for k, v in data.split.items()} == {
        "train": [0, 1, 2, 3, 4, 5], "val": [6, 7, 8, 9], "test": [10, 11, 12, 13]}
    data = select_data(_resolve_paths(_config(tmp_path, data=(str(root / "data"),), first_trajectories=1,
                                              time_indices=(0, 2, 4))), None)
    assert {k: v.tolist() for k, v in data.split.items()} == {"train": [0], "val": [6], "test": [10]}
    assert data.times.tolist() == [0, 2, 4] and len(data.train) == 2  # one trajectory, two transitions
    # A split root beside plain files is refused; without train/ there is nothing to train on.
    from symgrad.errors import SettingError

    with pytest.raises(SettingError, match="mixes The Well's split root"):
        select_data(_resolve_paths(_config(tmp_path, data=(str(root), str(next((root / "data" / "test").iterdir()))))),
                    None)
    only_test = tmp_path / "only-test"
    (only_test / "test").mkdir(parents=True)
    for f in (root / "data" / "test").iterdir():
        (only_test / "test" / f.name).symlink_to(f)
    with pytest.raises(SettingError, match="no train/ directory"):
        select_data(_resolve_paths(_config(tmp_path, data=(str(only_test),))), None)
    # A split directory alone is split at random, like any set of files.
    data = select_data(_resolve_paths(_config(tmp_path, data=(str(root / "data" / "train"),), seed=3)), None)
    assert data.split_source == "random" and sum(len(v) for v in data.split.values()) == 6


@pytest.fixture(scope="module")
def well_run(tmp_path_factory):
    """A tiny UNet (one level) trained for one epoch on a Well split root of 16x16 files
    coarsened to 8x8."""
    tmp = tmp_path_factory.mktemp("well-run")
    root, _ = well_root(tmp / "euler", {"train": 4, "valid": 1, "test": 1}, res=16)
    settings = tmp / "tiny.toml"
    # one level of the tiny UNet: the same code paths, fewer and smaller programs to compile
    settings.write_text("rollout_trajectories = 0\neval_batch_size = 4\nmodel_overrides = {multipliers = [1]}\n")
    run_dir = tmp / "run"
    args = ["train", "--data", str(root), "--coarsen", "2", "--out", str(run_dir), "--model", "unet",
            "--preset", "tiny", "--batch-size", "4", "--epochs", "1", "--no-progress", "--config", str(settings)]
    assert main(args) == 0
    return run_dir, root


def test_a_tiny_unet_trains_on_the_wells_split_and_records_it(well_run):
    run_dir, root = well_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["split_source"] == "the-well-directories" and info["resolution"] == 8
    assert info["split"] == {"train": list(range(8)), "val": [8, 9], "test": [10, 11]}
    assert json.loads((run_dir / "config.json").read_text())["coarsen"] == 2
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_equivariance_and_overlap_run_on_the_well_run(well_run, tmp_path, capsys):
    import xarray as xr

    run_dir, root = well_run
    eq = tmp_path / "eq.nc"
    assert main(["equivariance", "--run", str(run_dir), "--group", "d4", "--samples", "2", "--out", str(eq)]) == 0
    with xr.open_dataset(eq) as ds:
        assert list(ds.element.values) == ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
        assert list(ds.sample.values) == [10, 11] and ds["family"].item() == "euler_multi_quadrants_periodicBC"
    ov = tmp_path / "ov.nc"
    # The Well's test directory as --data: the run's test split mapped into its files.
    # (no spectrum probe: it forecasts the cost, the certified values do not depend on it)
    assert main(["overlap", "--run", str(run_dir), "--group", "d4", "--samples", "2", "--rtol", "1e-6",
                 "--probe-vectors", "0", "--data", str(root / "data" / "test"), "--out", str(ov), "--no-progress"]) == 0
    with xr.open_dataset(ov) as ds:
        assert list(ds.sample.values) == [0, 1] and "restricted to these files" in ds.attrs["sample_source"]
        assert ds.overlap_matrix_chi.shape == (8, 2, 2) and np.isfinite(ds.overlap_matrix_chi.values).all()
        assert not ds.tolerance_not_met.values.any() and ds.attrs["max_relative_bound"] <= 1e-6
    capsys.readouterr()


# --------------------------------------------------------------------------------------
# The Well's own reader (extra 'well': the_well, which needs PyTorch)


@pytest.mark.slow
def test_the_wells_own_dataset_class_reads_what_export_writes(tmp_path):
    pytest.importorskip("the_well")
    from the_well.data import WellDataset

    from symgrad.data import open_dataset, write_dataset

    rng = np.random.default_rng(6)
    q, _ = gas_states(rng, 2, 4, 8, 8, 1.4)
    nc = write_dataset(tmp_path / "gen.nc", q, np.linspace(0, 0.3, 4), gamma=1.4)
    out = tmp_path / "data" / "train" / "gen.hdf5"
    assert main(["export", str(nc), "--format", "well", "--out", str(out)]) == 0
    dataset = WellDataset(path=str(tmp_path), well_split_name="train", n_steps_input=1, n_steps_output=1,
                          use_normalization=False)
    assert dataset.metadata.n_spatial_dims == 2 and dataset.metadata.spatial_resolution == (8, 8)
    names = [n for order in (0, 1) for n in dataset.metadata.field_names[order]]
    assert names == ["energy", "density", "pressure", "momentum_x", "momentum_y"]
    assert dataset.metadata.constant_scalar_names == ["gamma"]
    assert len(dataset) == 2 * 3  # two trajectories, three one-step windows each
    states = open_dataset(out).states(slice(None))
    channels = open_dataset(out).read_channels(slice(None))
    for index in range(len(dataset)):
        sample = dataset[index]
        traj, t = divmod(index, 3)
        fields = sample["input_fields"][0].numpy()  # (x, y, field) in the order of names
        expected = np.stack([states[traj, t, ..., 3], states[traj, t, ..., 0], channels[traj, t, 3],
                             states[traj, t, ..., 1], states[traj, t, ..., 2]], axis=-1)
        assert np.array_equal(fields, expected), index
        np.testing.assert_array_equal(sample["output_fields"][0].numpy()[..., 1], states[traj, t + 1, ..., 0])
        assert float(sample["constant_scalars"].reshape(-1)[0]) == pytest.approx(1.4)
        assert sample["boundary_conditions"].tolist() == [[2, 2], [2, 2]]  # PERIODIC on both sides of x and y
