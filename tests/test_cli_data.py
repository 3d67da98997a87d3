"""``symgrad generate / solve / info`` from the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from symgrad import cli
from symgrad.data import open_dataset, schema, write_dataset
from symgrad.io import partial_dir
from symgrad.errors import SymgradError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--resolution", "16", "--times", "3", "--t-final", "0.02", "--chunk-size", "2", "--no-progress"]


@pytest.mark.parametrize("command", ["generate", "solve", "info"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: symgrad {command}" in out
    assert {"generate": "--family", "solve": "--t-final", "info": "--check"}[command] in out


def test_top_level_help_lists_data_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("generate", "solve", "info"):
        assert command in out


def synthetic_file(path, n=3, t=2, nx=8, gamma=1.4, **attrs):
    rng = np.random.default_rng(0)
    rho = rng.uniform(0.5, 1.5, (n, t, nx, nx))
    u, v = rng.uniform(-1, 1, (2, n, t, nx, nx))
    p = rng.uniform(0.2, 1.0, (n, t, nx, nx))
    q = schema.primitive_to_conservative(rho, u, v, p, gamma).astype(np.float32)
    return write_dataset(path, q, np.linspace(0, 0.5, t), gamma=gamma, attrs={"family": "CE-RP", "seed": 4, **attrs})


def test_info_describes_a_file(tmp_path, capsys):
    path = synthetic_file(tmp_path / "d.nc")
    assert cli.main(["info", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    for expected in ("(3, 2, 5, 8, 8)", "family:      CE-RP", "resolution:  8x8", "2 from 0 to 0.5",
                     "gamma:       1.4", "seed:        4", "rho  min", "E    min", "git_commit:", "check:       OK"):
        assert expected in out, expected


def test_info_check_finds_wrong_energy_channel(tmp_path, capsys):
    import netCDF4

    path = synthetic_file(tmp_path / "e.nc")
    with netCDF4.Dataset(path, "a") as nc:
        nc.variables["data"][1, 1, 4, 2, 3] = 50.0
    assert cli.main(["info", str(path)]) == 0  # plain info describes the file, and warns
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: 1 of the 3 trajectories") and "E inconsistent" in err
    assert "sample 1, time index 1, cell (2, 3)" in err and "info --check" in err and len(err.splitlines()) == 1
    assert cli.main(["info", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "1 trajectories have E inconsistent" in err and "sample 1, time index 1, cell (2, 3)" in err
    assert "not the total energy" in err
    assert len(err.strip().splitlines()) == 1


def _negative_density_file(path):
    import netCDF4

    path = synthetic_file(path, n=4, t=3)
    with netCDF4.Dataset(path, "a") as nc:
        nc.variables["data"][2, 0, 0, 5, 6] = -0.25  # rho < 0 at t = 0 of sample 2
    return path


def test_non_physical_data_is_refused_where_it_is_read(tmp_path, capsys):
    """Negative density: plain info warns, --check counts it, and every reader (the dataset,
    training, solve) refuses with the file, sample, time and cell instead of using it."""
    path = _negative_density_file(tmp_path / "neg.nc")
    assert cli.main(["info", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "density <= 0" in err and "sample 2, time index 0, cell (5, 6)" in err
    assert cli.main(["info", str(path), "--check"]) == 2
    assert "1 trajectories have density <= 0 (first at sample 2, time index 0, cell (5, 6))" in capsys.readouterr().err

    expected = f"{path} holds non-physical values: density <= 0 at sample 2 (dataset sample 2), time index 0, cell (5, 6)"
    with open_dataset(path) as ds:
        ds.states([0, 1, 3])  # the other trajectories are fine
        with pytest.raises(SymgradError, match="non-physical") as exc:
            ds.states([1, 2])
        assert str(exc.value).startswith(expected)
    assert cli.main(["train", "--model", "unet", "--preset", "tiny", "--data", str(path), "--epochs", "1",
                     "--batch-size", "2", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    # solve reads the initial states through the same check: no CFL advice for bad input.
    assert cli.main(["solve", str(path), "--t-final", "0.01", "--times", "2", "--out", str(tmp_path / "s.nc"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "smaller cfl" not in err, err
    assert not (tmp_path / "s.nc").exists()


def test_info_pdegym_without_metadata(tmp_path, capsys):
    import netCDF4

    c = np.ones((2, 21, 5, 4, 4), np.float32)
    c[:, :, 1:3] = 0.0
    c[:, :, 4] = 2.5  # p = 1, rho = 1, u = v = 0  ->  E = 2.5
    shards = tmp_path / "CE-RP"
    shards.mkdir()
    for k in range(2):
        with netCDF4.Dataset(shards / f"data_{k}.nc", "w") as nc:
            for d, s in enumerate(c.shape):
                nc.createDimension(f"phony_dim_{d}", s)
            nc.createVariable("data", "f4", tuple(f"phony_dim_{d}" for d in range(5)))[:] = c
    assert cli.main(["info", str(shards), "--check"]) == 0
    out = capsys.readouterr().out
    assert "files:       2" in out and "equispaced on [0, 1] assumed" in out and "(default" in out


def test_info_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.nc").write_bytes(b"not a netcdf file at all" * 20)
    assert cli.main(["info", str(tmp_path / "junk.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("symgrad info: error:") and "junk.nc" in err and len(err.splitlines()) == 1
    assert cli.main(["info", str(tmp_path / "missing.nc")]) == 2
    assert "missing.nc does not exist" in capsys.readouterr().err
    assert cli.main(["info"]) == 2


def test_info_model(capsys):
    from symgrad import models  # noqa: F401
    assert cli.main(["info", "--model", "unet", "--preset", "tiny", "--resolution", "32"]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "config:" in out
    count = int(out.split("parameters:")[1].split()[0].replace(",", ""))
    assert count > 0


def test_generate_solve_info(tmp_path, capsys):
    from symgrad import euler  # noqa: F401
    out = tmp_path / "g.nc"
    assert cli.main(["generate", "--family", "CE-RP", "--trajectories", "3", "--seed", "2", "--out", str(out), *TINY]) == 0
    ds = open_dataset(out)
    assert (ds.n_samples, ds.n_times, ds.resolution) == (3, 3, 16)
    # same command again: up to date; other arguments: one-line error
    assert cli.main(["generate", "--family", "CE-RP", "--trajectories", "3", "--seed", "2", "--out", str(out), *TINY]) == 0
    assert cli.main(["generate", "--family", "CE-RP", "--trajectories", "3", "--seed", "3", "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    solved = tmp_path / "s.nc"
    assert cli.main(["solve", str(out), "--t-final", "0.02", "--times", "3", "--out", str(solved),
                     "--chunk-size", "2", "--no-progress"]) == 0
    np.testing.assert_allclose(open_dataset(solved).states(slice(None)), ds.states(slice(None)), rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert cli.main(["info", str(solved)]) == 0
    assert "initial_states_from" not in capsys.readouterr().err


@pytest.mark.slow
def test_generate_killed_in_a_subprocess_resumes(tmp_path):
    """A real SIGKILL in the middle of a run, then the same command: equal to an uninterrupted run."""
    args = ["--family", "CE-RP", "--trajectories", "6", "--resolution", "16", "--times", "3",
            "--t-final", "0.05", "--seed", "5", "--chunk-size", "1", "--no-progress"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    full = tmp_path / "full.nc"
    subprocess.run([sys.executable, "-m", "symgrad", "generate", *args, "--out", str(full)], check=True, env=env, cwd=ROOT)
    out = tmp_path / "killed.nc"
    proc = subprocess.Popen([sys.executable, "-m", "symgrad", "generate", *args, "--out", str(out)], env=env, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not (partial_dir(out) / "chunk_00001.nc").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run([sys.executable, "-m", "symgrad", "generate", *args, "--out", str(out)], check=True, env=env, cwd=ROOT)
    np.testing.assert_array_equal(open_dataset(out).read_channels(slice(None)), open_dataset(full).read_channels(slice(None)))
