"""Splits by trajectory and one-step transition pairs."""

from __future__ import annotations

import numpy as np
import pytest

from symgrad.data import TransitionSource, open_dataset, split_trajectories, write_dataset
from symgrad.errors import SymgradError


def test_split_reproducible_disjoint_complete():
    a = split_trajectories(100, seed=3)
    b = split_trajectories(100, seed=3)
    c = split_trajectories(100, seed=4)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name], b[name])
        assert np.all(np.diff(a[name]) > 0)
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    union = np.concatenate([a["train"], a["val"], a["test"]])
    assert np.array_equal(np.sort(union), np.arange(100))  # disjoint and complete
    assert not np.array_equal(a["test"], c["test"])
    # the split is a shuffle, not a prefix
    assert not np.array_equal(a["train"], np.arange(80))


def test_split_fractions_and_small_n():
    s = split_trajectories(16, seed=0, fractions=(0.5, 0.25, 0.25))
    assert [len(s[k]) for k in ("train", "val", "test")] == [8, 4, 4]
    s = split_trajectories(3, seed=0)
    assert sum(len(v) for v in s.values()) == 3
    with pytest.raises(SymgradError, match="sum"):
        split_trajectories(10, 0, (0.5, 0.2, 0.2))


@pytest.fixture
def labelled_dataset(tmp_path):
    """States whose every value encodes (trajectory, time): rho = 1 + n, E = 10 + t."""
    n, t, nx = 5, 4, 4
    q = np.zeros((n, t, nx, nx, 4), np.float32)
    q[..., 0] = (1.0 + np.arange(n))[:, None, None, None]
    q[..., 3] = (10.0 + np.arange(t))[None, :, None, None]
    return open_dataset(write_dataset(tmp_path / "labelled.nc", q, np.linspace(0, 1, t)))


def test_transition_pairs_are_consecutive_times_of_one_trajectory(labelled_dataset):
    trajectories = np.array([4, 1, 3])
    source = TransitionSource(labelled_dataset, trajectories)
    assert len(source) == 3 * 3
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(source))[:7].tolist() + [0, 0]  # random, with repeats
    x, y = source.get(idx)
    assert x.shape == y.shape == (9, 4, 4, 4) and x.dtype == np.float32
    for k, i in enumerate(idx):
        traj, t_in, t_out = (int(a[0]) for a in source.locate([i]))
        assert traj == trajectories[i // 3] and t_in == i % 3 and t_out == t_in + 1
        assert np.all(x[k, ..., 0] == 1 + traj) and np.all(y[k, ..., 0] == 1 + traj)
        assert np.all(x[k, ..., 3] == 10 + t_in) and np.all(y[k, ..., 3] == 10 + t_in + 1)


def test_custom_time_pairs_and_bounds(labelled_dataset):
    source = TransitionSource(labelled_dataset, [0, 2], time_pairs=[(0, 3)])
    x, y = source.get([1])
    assert np.all(x[..., 0] == 3) and np.all(x[..., 3] == 10) and np.all(y[..., 3] == 13)
    with pytest.raises(SymgradError):
        TransitionSource(labelled_dataset, [5])
    with pytest.raises(SymgradError):
        source.get([2])


def test_transition_source_one_read_per_trajectory(labelled_dataset, monkeypatch):
    calls = []
    original = labelled_dataset.states

    def counting(samples, times=None):
        calls.append(samples)
        return original(samples, times)

    monkeypatch.setattr(labelled_dataset, "states", counting)
    source = TransitionSource(labelled_dataset, [0, 1, 2, 3, 4])
    source.get([0, 1, 2, 12, 13, 5])  # trajectories 0, 0, 0, 4, 4, 1
    assert sorted(calls) == [0, 1, 4]


def test_the_data_cache_returns_the_files_transitions_and_follows_its_sources(tmp_path):
    """The memory-mapped cache gives bit for bit what the netCDF reads give; a second open
    reuses it; a changed source file gets a new cache; bad data is refused when converting."""
    import os

    import netCDF4
    from conftest import random_euler_states

    from symgrad.data.cache import open_cache

    path = write_dataset(tmp_path / "d.nc", random_euler_states(11, 4, 8, 3), np.linspace(0, 1, 4), gamma=1.4)
    dataset = open_dataset(path)
    cache_dir = tmp_path / "cache"
    states = open_cache(dataset, cache_dir)
    assert states.shape == (11, 4, 8, 8, 4) and isinstance(states, np.memmap)
    np.testing.assert_array_equal(np.asarray(states), dataset.states(slice(None)))
    plain, cached = TransitionSource(dataset, [1, 4, 9]), TransitionSource(dataset, [1, 4, 9], cache=states)
    idx = np.array([8, 0, 3, 3, 5])
    for a, b in zip(plain.get(idx), cached.get(idx)):
        assert type(b) is np.ndarray and b.dtype == np.float32
        np.testing.assert_array_equal(a, b)

    (npy,) = cache_dir.glob("*.npy")
    mtime = npy.stat().st_mtime_ns
    with open_dataset(path) as again:
        open_cache(again, cache_dir)
    assert npy.stat().st_mtime_ns == mtime and len(list(cache_dir.iterdir())) == 1  # reused, no temporaries

    dataset.close()  # one handle per file at a time (netCDF-C)
    del states, cached
    with netCDF4.Dataset(path, "a") as nc:
        nc.variables["data"][7, 2, 0, 1, 1] = -1.0  # negative density
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    with open_dataset(path) as changed, pytest.raises(SymgradError, match="density <= 0 at sample 7"):
        open_cache(changed, cache_dir)
    assert sorted(cache_dir.iterdir()) == [npy]  # the stale cache is not used, nothing half-written
