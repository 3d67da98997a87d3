"""Chunked, resumable generation and ``solve_dataset`` (tiny grids; one compiled solver shape)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from symgrad import euler  # noqa: F401

from symgrad.data import generate_dataset, open_dataset, solve_dataset, write_dataset  # noqa: E402
from symgrad.io import partial_dir  # noqa: E402
from symgrad.data import generate as gen  # noqa: E402
from symgrad.data import schema  # noqa: E402
from symgrad.errors import SymgradError  # noqa: E402

import netCDF4

# Every test uses these, so the solver compiles once for the module.
ARGS = dict(n_times=3, t_final=0.02, chunk_size=2, progress=False)
N, RES = 5, 16


def raw(path):
    with netCDF4.Dataset(path) as nc:
        return np.asarray(nc.variables["data"][:]), {k: nc.getncattr(k) for k in nc.ncattrs()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.nc"
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, **ARGS) == out
    return out


def test_reference_file(reference):
    data, attrs = raw(reference)
    assert data.shape == (N, 3, 5, RES, RES) and data.dtype == np.float32 and np.isfinite(data).all()
    assert attrs["family"] == "CE-RP" and attrs["seed"] == 11 and attrs["resolution"] == RES
    assert json.loads(attrs["solver"])["limiter"] == "mc" and "git_commit" in attrs
    assert not partial_dir(reference).exists()
    ds = open_dataset(reference)
    np.testing.assert_allclose(ds.times, [0.0, 0.01, 0.02])
    assert schema.energy_mismatch(data, 1.4).max() < 1e-6


def test_resume_after_kill_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "resumed.nc"
    # "kill" after one chunk: the file does not exist, the finished chunk does
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, stop_after_chunks=1, **ARGS) is None
    assert not out.exists()
    chunks = sorted(p.name for p in partial_dir(out).glob("chunk_*.nc"))
    assert chunks == ["chunk_00000.nc"]
    first_chunk = raw(partial_dir(out) / "chunk_00000.nc")[0]
    # a second interrupted run continues where the first stopped (does not redo chunk 0)
    mtime = (partial_dir(out) / "chunk_00000.nc").stat().st_mtime_ns
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, stop_after_chunks=1, **ARGS) is None
    assert (partial_dir(out) / "chunk_00000.nc").stat().st_mtime_ns == mtime
    assert len(list(partial_dir(out).glob("chunk_*.nc"))) == 2
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, **ARGS) == out
    assert not partial_dir(out).exists()
    data, attrs = raw(out)
    ref, _ = raw(reference)
    np.testing.assert_array_equal(data, ref)  # same seed -> identical contents, no duplicates/losses
    np.testing.assert_array_equal(first_chunk, ref[:2])


def test_damaged_chunks_are_recomputed_not_trusted(reference, tmp_path, capsys):
    """A truncated chunk, a chunk with a flipped byte and a chunk without its checksum (killed
    between the two writes) are each said so and recomputed; intact chunks are reused; the
    result equals the uninterrupted reference."""
    out = tmp_path / "damaged.nc"
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, stop_after_chunks=2, **ARGS) is None
    first, second = (partial_dir(out) / f"chunk_{c:05d}.nc" for c in range(2))
    assert all(c.with_name(c.name + ".sha256").exists() for c in (first, second))
    with open(first, "r+b") as fh:  # truncated: the netCDF cannot even be opened
        fh.truncate(fh.seek(0, 2) // 2)
    second_mtime = second.stat().st_mtime_ns
    capsys.readouterr()
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, stop_after_chunks=1, **ARGS) is None
    err = capsys.readouterr().err
    assert f"{first} is damaged" in err and str(second) not in err
    assert second.stat().st_mtime_ns == second_mtime  # the intact chunk is reused as it is
    np.testing.assert_array_equal(raw(first)[0], raw(reference)[0][:2])

    damaged = bytearray(second.read_bytes())  # one flipped byte: maybe still a valid netCDF,
    damaged[-8] ^= 0xFF                       # with other values in it
    second.write_bytes(bytes(damaged))
    assert generate_dataset(out, "CE-RP", N, RES, seed=11, **ARGS) == out
    assert f"{second} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(raw(out)[0], raw(reference)[0])

    unverified = tmp_path / "unverified.nc"
    assert generate_dataset(unverified, "CE-RP", N, RES, seed=11, stop_after_chunks=1, **ARGS) is None
    (partial_dir(unverified) / "chunk_00000.nc.sha256").unlink()
    assert generate_dataset(unverified, "CE-RP", N, RES, seed=11, **ARGS) == unverified
    assert "chunk_00000.nc is damaged or was never verified" in capsys.readouterr().err
    np.testing.assert_array_equal(raw(unverified)[0], raw(reference)[0])


def test_resume_with_other_arguments_is_an_error(tmp_path):
    out = tmp_path / "x.nc"
    generate_dataset(out, "CE-RP", N, RES, seed=11, stop_after_chunks=0, **ARGS)
    assert (partial_dir(out) / "spec.json").exists()
    with pytest.raises(SymgradError, match=r"different arguments \(seed: 11 there, 12 now\)"):
        generate_dataset(out, "CE-RP", N, RES, seed=12, stop_after_chunks=0, **ARGS)


def test_existing_output(reference, tmp_path):
    mtime = reference.stat().st_mtime_ns
    assert generate_dataset(reference, "CE-RP", N, RES, seed=11, **ARGS) == reference  # up to date
    assert reference.stat().st_mtime_ns == mtime
    with pytest.raises(SymgradError, match="exists.*set overwrite"):
        generate_dataset(reference, "CE-RP", N, RES, seed=12, **ARGS)


def test_initial_states_depend_on_seed_and_index_only(reference):
    import jax

    from symgrad.euler import initial

    q = open_dataset(reference).states(slice(None), [0])[:, 0]
    root = jax.random.key(11)
    for i in (0, 3, 4):
        expected = initial.sample_initial("CE-RP", jax.random.fold_in(root, i), 1, RES)[0]
        np.testing.assert_allclose(q[i], np.asarray(expected), rtol=3e-7, atol=1e-7)


def test_solve_dataset_reproduces_generate(reference, tmp_path):
    out = solve_dataset(reference, tmp_path / "solved.nc", **ARGS)
    a, b = open_dataset(out), open_dataset(reference)
    assert a.n_samples == N and a.n_times == 3
    np.testing.assert_allclose(a.states(slice(None)), b.states(slice(None)), rtol=1e-4, atol=1e-5)
    assert a.attrs[0]["family"] == "CE-RP"


def test_failed_trajectory_is_reported_not_written(reference, tmp_path):
    q = open_dataset(reference).states(slice(None), [0])
    rho = q[..., 0]
    q[1, 0, 3, 5, 3] = 0.5 * rho[1, 0, 3, 5] * (q[1, 0, 3, 5, 1] ** 2 + q[1, 0, 3, 5, 2] ** 2) / rho[1, 0, 3, 5] ** 2 - 0.1
    init = write_dataset(tmp_path / "init.nc", q, [0.0])  # negative pressure at cell (3, 5)
    # The reader refuses it before the solver runs: no solver advice for bad input.
    with pytest.raises(SymgradError, match=r"pressure <= 0 at sample 1 .*time index 0, cell \(3, 5\)") as exc:
        solve_dataset(init, tmp_path / "bad.nc", **ARGS)
    assert "smaller cfl" not in str(exc.value)
    assert not (tmp_path / "bad.nc").exists()


def test_resample_policy_replaces_failed_initial_state(reference):
    """White-box: a job whose trajectory 1 starts non-physical gets it redrawn."""
    from symgrad.euler import EulerConfig

    good = open_dataset(reference).states([0, 2], [0])[:, 0]
    bad = good.copy()
    bad[1, ..., 3] = -1.0
    job = gen._Job(
        spec={}, n_trajectories=2, times=np.array([0.0, 0.01, 0.02]), resolution=(RES, RES), gamma=1.4,
        chunk_size=2, euler_config=EulerConfig(), float64=False,
        initial=lambda a, b: bad[a:b], resample=lambda traj, attempt: np.repeat(good[1:2], len(traj), 0), attrs={},
    )
    states, resampled = gen._solve_chunk(job, 0, 2)
    assert resampled == [[1, 1]]
    np.testing.assert_allclose(states[1, 0], good[1], rtol=1e-6)
    assert np.isfinite(states).all()
    job = gen._Job(**{**job.__dict__, "resample": None})
    with pytest.raises(SymgradError, match="trajectory 1: non-physical.*t=0") as exc:
        gen._solve_chunk(job, 0, 2)
    assert "initial states are not physical" in str(exc.value) and "smaller cfl" not in str(exc.value)
