"""Splits by trajectory and the (state, next state) pairs that training and diagnostics consume."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from symgrad.errors import SymgradError

SPLITS = ("train", "val", "test")


def split_trajectories(n: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Seeded split of trajectory indices ``0 .. n-1`` into ``{"train", "val", "test"}``.

    Whole trajectories go to one split (no transition of a test trajectory is ever trained
    on). ``val`` and ``test`` get ``round(fraction * n)`` trajectories, ``train`` the rest;
    each index array is sorted. The permutation is numpy's PCG64 ``default_rng(seed)``, so
    the split depends only on ``(n, seed, fractions)``.
    """
    if not (isinstance(n, (int, np.integer)) and n >= 0):
        raise SymgradError(f"number of trajectories must be an integer >= 0, got {n!r}")
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0, atol=1e-6):
        raise SymgradError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1, got {tuple(fractions)}"
        )
    perm = np.random.default_rng(int(seed)).permutation(int(n))
    n_val = int(round(fr[1] * n))
    n_test = int(round(fr[2] * n))
    if n_val + n_test > n:  # only possible through rounding with train fraction ~ 0
        n_test = n - n_val
    n_train = n - n_val - n_test
    parts = np.split(perm, [n_train, n_train + n_val])
    return {name: np.sort(part).astype(np.int64) for name, part in zip(SPLITS, parts)}


def first_of_each(sample_counts, k: int) -> np.ndarray:
    """Dataset indices of the first ``k`` trajectories of each source (all where ``k`` is 0),
    for sources of ``sample_counts`` trajectories concatenated in order. A source is one
    ``--data`` entry: a file, or a directory or glob of shards (one PDEGym family)."""
    counts = np.asarray(sample_counts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = counts if not k else np.minimum(counts, k)
    return np.concatenate([o + np.arange(t) for o, t in zip(offsets, take)]).astype(np.int64)


class TransitionSource:
    """All transitions ``(state at t_a, state at t_b)`` of chosen trajectories of a dataset.

    By default the pairs are every one-step transition ``(t, t+1)``; ``time_pairs`` gives
    others, e.g. ``[(0, 5)]``. Transition ``k`` is trajectory ``trajectory_indices[k // P]``
    at pair ``time_pairs[k % P]`` with ``P = len(time_pairs)``. :meth:`get` reads any set of
    transitions, grouping the reads by trajectory (one read per trajectory touched), so
    random mini-batches are cheap; the caller owns the order (shuffling, epochs).
    """

    def __init__(self, dataset, trajectory_indices, time_pairs=None, cache=None):
        """``cache``: the dataset's states ``(sample, time, nx, ny, 4)`` as an array (the
        memory map of :func:`symgrad.data.cache.open_cache`); reads then copy from it."""
        self.dataset = dataset
        self.cache = cache
        traj = np.asarray(trajectory_indices, dtype=np.int64).reshape(-1)
        if traj.size and (traj.min() < 0 or traj.max() >= dataset.n_samples):
            raise SymgradError(
                f"trajectory indices must lie in 0..{dataset.n_samples - 1}, got {traj.min()}..{traj.max()}"
            )
        if time_pairs is None:
            time_pairs = [(t, t + 1) for t in range(dataset.n_times - 1)]
        pairs = np.asarray(time_pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= dataset.n_times):
            raise SymgradError(f"time pairs must index 0..{dataset.n_times - 1}, got {pairs.tolist()}")
        self.trajectory_indices = traj
        self.time_pairs = pairs

    def __len__(self) -> int:
        return int(self.trajectory_indices.size * len(self.time_pairs))

    def locate(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(trajectory, t_input, t_target)`` arrays of the transitions ``indices``."""
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise SymgradError(f"transition indices must lie in 0..{n - 1}, got {idx.min()}..{idx.max()}")
        idx = idx % max(n, 1)
        n_pairs = len(self.time_pairs)
        traj = self.trajectory_indices[idx // n_pairs]
        pair = self.time_pairs[idx % n_pairs]
        return traj, pair[:, 0], pair[:, 1]

    def get(self, indices) -> tuple[Float[np.ndarray, "n nx ny 4"], Float[np.ndarray, "n nx ny 4"]]:
        """Inputs and targets ``(len(indices), nx, ny, 4)`` float32, conservative."""
        traj, t_in, t_out = self.locate(indices)
        if self.cache is not None:
            return np.asarray(self.cache[traj, t_in]), np.asarray(self.cache[traj, t_out])
        nx, ny = self.dataset.shape
        x = np.empty((traj.size, nx, ny, 4), dtype=np.float32)
        y = np.empty_like(x)
        for trajectory in np.unique(traj):
            rows = np.flatnonzero(traj == trajectory)
            needed = np.unique(np.concatenate([t_in[rows], t_out[rows]]))
            states = self.dataset.states(int(trajectory), needed)[0]  # (len(needed), nx, ny, 4)
            x[rows] = states[np.searchsorted(needed, t_in[rows])]
            y[rows] = states[np.searchsorted(needed, t_out[rows])]
        return x, y


__all__ = ["SPLITS", "TransitionSource", "first_of_each", "split_trajectories"]
