"""The solver's own Galilean defect: how far one solve commutes with a boost.

The Euler equations are Galilean invariant: if ``q(x, t)`` solves them, so does
``B_c q(x - c t, t)`` (:func:`symgrad.groups.boost`). Over a time ``dt`` with ``c dt`` a whole
number ``k`` of cells, the exact solution operator ``S`` therefore satisfies
``S(B_c q0) = T_k B_c S(q0)``. The finite-volume scheme does not, exactly: its upwinding and
limiters see the velocity relative to the grid, so its numerical dissipation changes under a
boost, and its adaptive time steps shrink with ``|u| + c_s``. The difference is a
discretisation error and falls with resolution at the scheme's order (docs/groups.md,
"The data's own defect").
"""

from __future__ import annotations

import numpy as np

from symgrad.errors import SymgradError
from symgrad.euler._config import EulerConfig
from symgrad.euler._solver import describe_failures, solve
from symgrad.groups import boost, translate


def _checked(q0, shift, time_step, axis):
    q0 = np.asarray(q0)
    if q0.ndim != 4 or q0.shape[-1] != 4:
        raise SymgradError(f"the boost defect needs states (batch, nx, ny, 4), got shape {q0.shape}")
    if axis not in ("x", "y"):
        raise SymgradError(f"boost axis must be 'x' or 'y', got {axis!r}")
    if int(shift) != shift:
        raise SymgradError(f"a boost exact on the grid shifts whole cells per step, got {shift!r}")
    if not (np.isfinite(time_step) and time_step > 0):
        raise SymgradError(f"the time step must be > 0, got {time_step!r}")
    return q0


def boosted_solves(q0, shift: int, time_step: float, config: EulerConfig = EulerConfig(), axis: str = "x"):
    """``(S(B_c q0), T_k B_c S(q0), S(q0))`` for one solve ``S`` over ``time_step``, with
    ``c = k dx / dt`` the boost that moves the flow ``k = shift`` cells per step along ``axis``.

    Computed in ``q0``'s dtype (float64 under ``jax.enable_x64``); a failed solve is an error."""
    import jax.numpy as jnp

    q0 = _checked(q0, shift, time_step, axis)
    n = q0.shape[-3] if axis == "x" else q0.shape[-2]
    c = float(shift) / (n * float(time_step))
    cx, cy = (c, 0.0) if axis == "x" else (0.0, c)
    kx, ky = (int(shift), 0) if axis == "x" else (0, int(shift))
    q0 = jnp.asarray(q0)
    both = solve(jnp.concatenate([q0, boost(q0, cx, cy)]), [float(time_step)], config)
    if not bool(np.all(np.asarray(both.ok))):
        raise SymgradError("the solver failed on a boosted state: " + "; ".join(describe_failures(both)[:3]))
    plain, boosted = both.states[: q0.shape[0], -1], both.states[q0.shape[0]:, -1]
    return boosted, translate(boost(plain, cx, cy), kx, ky), plain


def boost_defect(q0, shift: int, time_step: float, config: EulerConfig = EulerConfig(), axis: str = "x") -> np.ndarray:
    """The solver's relative commutation error with a boost, one value per trajectory:

    ``||S(B_c q0) - T_k B_c S(q0)||_1 / ||S(q0) - q0||_1``

    (sums over cells and the four conservative channels), i.e. the defect in units of what
    one solve changes. ``k = shift`` cells per step, ``c = k dx / dt``."""
    boosted, moved, plain = boosted_solves(q0, shift, time_step, config, axis)
    num = np.abs(np.asarray(boosted) - np.asarray(moved)).sum(axis=(-3, -2, -1))
    den = np.abs(np.asarray(plain) - np.asarray(q0)).sum(axis=(-3, -2, -1))
    return num / den


def observed_order(resolutions, errors) -> np.ndarray:
    """``log2``-style observed orders ``log(e_i / e_{i+1}) / log(n_{i+1} / n_i)`` between
    successive resolutions."""
    n = np.asarray(resolutions, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    return np.log(e[:-1] / e[1:]) / np.log(n[1:] / n[:-1])
