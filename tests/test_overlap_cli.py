"""`symgrad overlap` end to end on a tiny trained run, resume through the CLI, user errors."""

import numpy as np
import pytest
import xarray as xr

from symgrad.cli import main

N_TIMES, N_TRAJ, RES = 3, 10, 8


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("symgrad overlap: error:") and "\n" not in err, err
    for n in needles:
        assert n in err


def test_unknown_group_and_missing_run(tmp_path, capsys):
    assert main(["overlap", "--run", str(tmp_path), "--group", "so2", "--out", str(tmp_path / "o.nc")]) == 2
    _one_line_error(capsys, "so2")
    assert main(["overlap", "--run", str(tmp_path / "nope"), "--group", "d4", "--out", str(tmp_path / "o.nc")]) == 2
    _one_line_error(capsys, "does not exist")


def _states(n, res, seed):
    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.5, 1.5, (n, N_TIMES, res, res, 1))
    m = rng.uniform(-0.3, 0.3, (n, N_TIMES, res, res, 2))
    p = rng.uniform(0.5, 1.5, (n, N_TIMES, res, res, 1))
    e = p / 0.4 + 0.5 * np.sum(m**2, axis=-1, keepdims=True) / rho
    return np.concatenate([rho, m, e], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = pytest.importorskip("symgrad.data")
    train = pytest.importorskip("symgrad.train")
    if not hasattr(data, "write_dataset"):
        pytest.skip("symgrad.data.write_dataset not available yet")
    root = tmp_path_factory.mktemp("overlap-cli")
    data_file = data.write_dataset(root / "data.nc", _states(N_TRAJ, RES, 0), np.linspace(0, 0.1, N_TIMES), gamma=1.4)
    config = train.TrainConfig(
        model="unet", preset="tiny", data=(str(data_file),), epochs=1, batch_size=4,
        eval_batch_size=4, rollout_trajectories=0, progress=False, split_fractions=(0.6, 0.2, 0.2),
    )
    train.train(config, root / "run", log=lambda *a, **k: None)
    return root / "run", data_file


@pytest.mark.slow  # ~2 min on 2 shared cores (training + a chi run)
def test_end_to_end_d4(x64, tiny_run, tmp_path, capsys):
    run_dir, data_file = tiny_run
    from symgrad.train import load_run

    run = load_run(run_dir)
    out = tmp_path / "ov.nc"
    args = ["overlap", "--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "2",
            "--damping", "1e-3", "--rtol", "1e-4", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert not (tmp_path / "ov.nc.partial").exists()  # partials removed after the atomic write
    with xr.open_dataset(out) as ds:
        assert list(ds.element.values) == ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
        assert list(ds.sample.values) == list(run.split["test"][:2])
        assert ds.overlap_matrix_chi.dims == ("element", "sample_i", "sample_j")
        np.testing.assert_allclose(ds.overlap_cosine_chi.sel(element="e").values, 1.0, rtol=1e-12)
        assert int(ds.attrs["checkpoint_step"]) == run.step and ds.attrs["damping"] == 1e-3
        assert ds.attrs["ggn_products"] > 0 and "config" in ds.attrs
        assert not ds.tolerance_not_met.values.any()

    # Damping defaults to the run's weight decay; a zero weight decay is a clear error.
    if not run.weight_decay > 0:
        assert main([a for a in args if a not in ("--damping", "1e-3")]) == 2
        _one_line_error(capsys, "--damping")
