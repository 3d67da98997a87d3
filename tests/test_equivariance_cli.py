"""`symgrad equivariance` end to end on a tiny trained run, and its one-line user errors."""

import numpy as np
import pytest
import xarray as xr
from conftest import TINY_RUN_TIMES as N_TIMES

from symgrad.cli import main

RES = 8  # the shared tiny run's resolution (tests/conftest.py)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("symgrad equivariance: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_unknown_group(tmp_path, capsys):
    rc = main(["equivariance", "--run", str(tmp_path), "--group", "so2", "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    _one_line_error(capsys, "unknown group 'so2'", "choose one of", "d4")


def test_missing_run_directory(tmp_path, capsys):
    rc = main(["equivariance", "--run", str(tmp_path / "nope"), "--group", "d4", "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    _one_line_error(capsys, "does not exist", "symgrad train")


def test_run_directory_without_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "empty-run"
    run_dir.mkdir()
    rc = main(["equivariance", "--run", str(run_dir), "--group", "d4", "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    _one_line_error(capsys)
    assert not (tmp_path / "o.nc").exists()


@pytest.fixture(scope="module")
def tiny_run(tiny_trained_run, tmp_path_factory):
    """The shared tiny run, its data, and a data file at twice the model's resolution."""
    from conftest import random_euler_states
    from symgrad import data

    run_dir, data_file = tiny_trained_run
    other_res = data.write_dataset(
        tmp_path_factory.mktemp("equivariance-cli") / "data16.nc",
        random_euler_states(4, N_TIMES, 2 * RES, 1), np.linspace(0.0, 0.1, N_TIMES), gamma=1.4,
    )
    return run_dir, data_file, other_res


def test_end_to_end_d4(tiny_run, tmp_path, capsys):
    run_dir, data_file, _ = tiny_run
    from symgrad.train import load_run

    run = load_run(run_dir)
    test_split = list(run.info.split["test"])

    out = tmp_path / "d4.nc"
    assert main(["equivariance", "--run", str(run_dir), "--group", "d4", "--data", str(data_file),
                 "--eval-chunk", "5", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with xr.open_dataset(out) as ds:
        assert list(ds["element"].values) == ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
        assert list(ds["sample"].values) == test_split
        assert ds.attrs["time_index"] == "0" or ds.attrs["time_index"] == 0
        assert int(ds.attrs["checkpoint_step"]) == run.step
        assert "unet" in ds.attrs["config"] and ds.attrs["git_commit"] and ds.attrs["package_versions"]
        assert ds.attrs["sample_source"] == "test split of the run"
        assert str(data_file.resolve()) in ds.attrs["data_files"]
        assert float(ds["equivariance_error"].sel(element="e").max()) < 1e-10
        assert np.all(np.isfinite(ds["equivariance_error"].values))


@pytest.mark.slow
def test_end_to_end_translations_default_time_and_data(tiny_run, tmp_path):
    run_dir, _, _ = tiny_run
    from symgrad.train import load_run

    run = load_run(run_dir)
    out = tmp_path / "tx.nc"
    assert main(["equivariance", "--run", str(run_dir), "--group", "translate-x", "--stride", "2",
                 "--samples", "1", "--out", str(out)]) == 0  # --data defaults to the run's files
    with xr.open_dataset(out) as ds:
        assert list(ds["element"].values) == [0, 2, 4, 6]
        assert ds["equivariance_error"].shape == (4, 1)
        assert int(ds.attrs["time_index"]) == N_TIMES - 2  # last transition seen in training
        # the tiny UNet is exactly shift-equivariant for multiples of its down-sampling factor
        factor = run.model.downsampling_factor
        exact = [k for k in ds["element"].values if k % factor == 0]
        assert float(ds["equivariance_error"].sel(element=exact).max()) < 1e-9


def test_resolution_the_model_was_not_built_for(tiny_run, tmp_path, capsys):
    run_dir, _, other_res = tiny_run
    rc = main(["equivariance", "--run", str(run_dir), "--group", "d4", "--data", str(other_res),
               "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    _one_line_error(capsys, f"{RES}x{RES}", f"{2 * RES}x{2 * RES}", "pass --data at the model's resolution")


def test_time_out_of_range(tiny_run, tmp_path, capsys):
    run_dir, data_file, _ = tiny_run
    rc = main(["equivariance", "--run", str(run_dir), "--group", "d4", "--data", str(data_file),
               "--time", str(N_TIMES - 1), "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    _one_line_error(capsys, "--time", f"0..{N_TIMES - 2}")


def test_run_with_config_but_no_checkpoint(tiny_run, tmp_path, capsys):
    import shutil

    run_dir, data_file, _ = tiny_run
    stripped = tmp_path / "stripped-run"
    stripped.mkdir()
    for f in run_dir.iterdir():
        if f.is_file():
            shutil.copy(f, stripped / f.name)
    rc = main(["equivariance", "--run", str(stripped), "--group", "d4", "--data", str(data_file),
               "--out", str(tmp_path / "o.nc")])
    assert rc == 2
    _one_line_error(capsys, "checkpoint")
    assert not (tmp_path / "o.nc").exists()


def test_an_existing_result_is_kept_unless_overwrite(tiny_run, tmp_path, capsys):
    run_dir, data_file, _ = tiny_run
    out = tmp_path / "d4.nc"
    args = ["equivariance", "--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "2",
            "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert main(args[:-2] + ["--samples", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "exists", "--overwrite")
    assert out.read_bytes() == before
    assert main(args[:-2] + ["--samples", "1", "--out", str(out), "--overwrite"]) == 0
    with xr.open_dataset(out) as ds:
        assert ds.sizes["sample"] == 1


def test_unwritable_output_fails_before_the_work(tiny_run, tmp_path, capsys):
    run_dir, data_file, _ = tiny_run
    base = ["equivariance", "--run", str(run_dir), "--group", "d4", "--data", str(data_file), "--samples", "1"]
    assert main(base + ["--out", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(base + ["--out", str(blocker / "o.nc")]) == 2
    _one_line_error(capsys, "cannot write", "choose another --out")


def test_more_samples_than_available_and_a_file_as_run_are_refused(tiny_run, tmp_path, capsys):
    run_dir, data_file, _ = tiny_run
    base = ["equivariance", "--group", "d4", "--data", str(data_file), "--out", str(tmp_path / "o.nc")]
    assert main(base + ["--run", str(run_dir), "--samples", "100"]) == 2  # overlap refuses too: never a silent cap
    _one_line_error(capsys, "--samples 100 but only", "test trajectories")
    assert main(base + ["--run", str(data_file)]) == 2
    _one_line_error(capsys, "is a file", "run directory")
    assert not (tmp_path / "o.nc").exists()
