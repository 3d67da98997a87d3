"""Helpers for the training tests (no tests here): a tiny PDEGym-layout dataset and the
command line of a ``symgrad`` subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

GAMMA = 1.4
CHANNELS = ["rho", "u", "v", "p", "E"]


def make_states(n_samples=8, n_times=6, n=16, seed=0):
    """Conservative trajectories ``(n, t, nx, ny, 4)``: smooth fields advected one cell per step.

    A one-cell periodic shift is what a 3x3 convolution learns quickly, so the loss of a
    tiny model must drop within a few hundred steps.
    """
    rng = np.random.default_rng(seed)
    i = np.arange(n) / n
    X, Y = np.meshgrid(i, i, indexing="ij")
    out = np.empty((n_samples, n_times, n, n, 4), np.float32)
    for s in range(n_samples):
        k = rng.integers(1, 3, size=(4, 2))
        ph = rng.uniform(0, 2 * np.pi, size=4)
        f = [np.sin(2 * np.pi * (k[c, 0] * X + k[c, 1] * Y) + ph[c]) for c in range(4)]
        rho = 1.5 + 0.4 * f[0]
        u, v = 0.3 * f[1], 0.3 * f[2]
        p = 1.5 + 0.4 * f[3]
        E = p / (GAMMA - 1) + 0.5 * rho * (u**2 + v**2)
        q = np.stack([rho, rho * u, rho * v, E], axis=-1)
        for t in range(n_times):
            out[s, t] = np.roll(q, t, axis=0)
    return out


def write_pdegym(path, states, gamma=GAMMA):
    """Write conservative ``states`` as a PDEGym file: ``data (sample, time, channel, x, y)``."""
    import netCDF4

    states = np.asarray(states, np.float64)
    rho, mx, my, E = np.moveaxis(states, -1, 0)
    u, v = mx / rho, my / rho
    p = (gamma - 1) * (E - 0.5 * rho * (u**2 + v**2))
    prim = np.stack([rho, u, v, p, E], axis=2).astype(np.float32)  # (s, t, c, x, y)
    ns, nt, _, nx, ny = prim.shape
    path = Path(path)
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in (("sample", ns), ("time", nt), ("channel", 5), ("x", nx), ("y", ny)):
            ds.createDimension(name, size)
        ds.createVariable("data", "f4", ("sample", "time", "channel", "x", "y"))[:] = prim
        ds.createVariable("time", "f8", ("time",))[:] = np.arange(nt) * 0.05
        ds.createVariable("x", "f8", ("x",))[:] = (np.arange(nx) + 0.5) / nx
        ds.createVariable("y", "f8", ("y",))[:] = (np.arange(ny) + 0.5) / ny
        ch = ds.createVariable("channel", str, ("channel",))
        for i, c in enumerate(CHANNELS):
            ch[i] = c
        ds.gamma = gamma
        ds.resolution = nx
    return path


def cli_command(*args):
    """``symgrad ARGS...`` run with this interpreter."""
    return [sys.executable, "-m", "symgrad", *map(str, args)]
