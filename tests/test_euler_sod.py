"""Sod shock tube along x and along y against the exact Riemann solution; convergence rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symgrad.euler import EulerConfig, primitive_to_conservative, solve
from symgrad.euler import exact_riemann as er

GAMMA = 1.4
HIGH = er.PrimitiveState(1.0, 0.0, 1.0)
LOW = er.PrimitiveState(0.125, 0.0, 0.1)
# Periodic unit interval: the high state fills (1/4, 3/4), so there are two Sod problems
# (a mirrored one at 1/4, the standard one at 3/4). Up to T the fastest waves (shock 1.75,
# rarefaction head 1.18) stay inside their half: nothing interacts or wraps.
T_FINAL = 0.12
RESOLUTIONS = (64, 128, 256)
CROSS = 4  # cells in the passive direction


def _exact_density(n):
    edges = np.linspace(0.0, 1.0, n + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    left_half, _, _ = er.cell_averages(edges, 0.25, T_FINAL, LOW, HIGH, GAMMA)
    right_half, _, _ = er.cell_averages(edges, 0.75, T_FINAL, HIGH, LOW, GAMMA)
    return np.where(centres < 0.5, left_half, right_half)


def _sod_strip(n):
    x = (np.arange(n) + 0.5) / n
    high = (x > 0.25) & (x < 0.75)
    rho = np.repeat(np.where(high, HIGH.rho, LOW.rho)[:, None], CROSS, axis=1)
    p = np.repeat(np.where(high, HIGH.p, LOW.p)[:, None], CROSS, axis=1)
    return primitive_to_conservative(rho, np.zeros_like(rho), np.zeros_like(rho), p, GAMMA)


def _to_y(q):
    """The same problem along y: transpose the grid and swap the momentum components."""
    return np.swapaxes(np.asarray(q), -3, -2)[..., [0, 2, 1, 3]]


def _rates(errors):
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


@pytest.fixture(scope="module")
def sod_runs():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        out = {}
        for n in RESOLUTIONS:
            q = np.asarray(_sod_strip(n))[None]
            times = jnp.asarray([0.0, T_FINAL])
            rx = solve(q, times, EulerConfig())
            ry = solve(jnp.asarray(_to_y(q)), times, EulerConfig())
            out[n] = (np.asarray(rx.states[0, -1]), np.asarray(ry.states[0, -1]), bool(rx.ok[0] & ry.ok[0]))
        return out
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_exact_solver_matches_sodshock():
    import sodshock
    _, _, values = sodshock.solve(
        left_state=(HIGH.p, HIGH.rho, HIGH.u), right_state=(LOW.p, LOW.rho, LOW.u),
        geometry=(0.0, 1.0, 0.5), t=0.2, gamma=GAMMA, npts=1001,
    )
    rho, u, p = er.sample((values["x"] - 0.5) / 0.2, HIGH, LOW, GAMMA)
    # Away from the discontinuities (where a point may fall on either side).
    np.testing.assert_allclose(rho, values["rho"], atol=1e-10)
    np.testing.assert_allclose(u, values["u"], atol=1e-10)
    np.testing.assert_allclose(p, values["p"], atol=1e-10)


def test_exact_solver_star_state_and_mirror():
    p_star, u_star = er.star_state(HIGH, LOW, GAMMA)
    # Toro, Table 4.2 (test 1): p* = 0.30313, u* = 0.92745.
    assert abs(p_star - 0.30313) < 1e-5 and abs(u_star - 0.92745) < 1e-5
    xi = np.linspace(-2, 2, 401)
    rho, u, p = er.sample(xi, HIGH, LOW, GAMMA)
    rho_m, u_m, p_m = er.sample(-xi, LOW, HIGH, GAMMA)
    np.testing.assert_allclose(rho_m, rho, atol=1e-12)
    np.testing.assert_allclose(u_m, -u, atol=1e-12)


@pytest.mark.parametrize("direction", ["x", "y"])
def test_sod_converges_to_exact_solution(sod_runs, direction):
    # sod_runs holds float64 NumPy arrays; no JAX here, so no x64 needed.
    errors = []
    for n in RESOLUTIONS:
        qx, qy, ok = sod_runs[n]
        assert ok
        q = qx if direction == "x" else _to_y(qy)
        rho = q[..., 0]
        # Constant across the passive direction.
        assert np.abs(rho - rho[:, :1]).max() < 1e-12
        errors.append(np.abs(rho[:, 0] - _exact_density(n)).mean())
    rates = _rates(errors)
    # Discontinuities limit MUSCL to first order in L1 (contacts smear like dx^(1/2..2/3)).
    assert errors[-1] < 5e-3, errors
    assert np.all(rates > 0.6) and np.all(rates < 1.4), (errors, rates)


def test_sod_x_and_y_agree(sod_runs):
    # Same code for both directions, nx != ny here (the non-batched path of tendency).
    for n in RESOLUTIONS:
        qx, qy, _ = sod_runs[n]
        np.testing.assert_allclose(_to_y(qy), qx, rtol=0, atol=1e-13)


def test_smooth_advection_is_second_order_and_lands_on_output_times(x64):
    """A density wave in uniform flow; a wrong final time would stall the error at O(dt).

    Same grid shapes and number of output times as the Sod runs, so no new compilation.
    """
    errors = []
    for n in RESOLUTIONS[:2]:
        x = (np.arange(n) + 0.5) / n
        rho0 = np.repeat((1.0 + 0.2 * np.sin(2 * np.pi * x))[:, None], CROSS, axis=1)
        q = primitive_to_conservative(rho0, np.ones_like(rho0), np.zeros_like(rho0), np.ones_like(rho0), GAMMA)
        r = solve(q[None], jnp.asarray([0.0, 0.1234]), EulerConfig())
        exact = 1.0 + 0.2 * np.sin(2 * np.pi * (x - 0.1234))
        errors.append(np.abs(np.asarray(r.states[0, -1, :, 0, 0]) - exact).mean())
    assert _rates(errors)[0] > 1.6, errors


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [EulerConfig(limiter="minmod"), EulerConfig(reconstruction="characteristic", rk_stages=3)],
    ids=str,
)
def test_sod_converges_other_schemes(x64, cfg):
    errors = []
    for n in RESOLUTIONS:
        r = solve(_sod_strip(n)[None], jnp.asarray([0.0, T_FINAL]), cfg)
        errors.append(np.abs(np.asarray(r.states[0, -1, :, 0, 0]) - _exact_density(n)).mean())
    rates = _rates(errors)
    assert np.all(rates > 0.6) and np.all(rates < 1.4), (errors, rates)
