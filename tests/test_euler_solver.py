"""Solver: symmetries, conservation, positivity, failure reporting, accuracy, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symgrad.errors import SymgradError
from symgrad.euler import (
    EulerConfig,
    conservative_to_primitive,
    describe_failures,
    max_stable_dt,
    primitive_to_conservative,
    tendency,
    sample_initial,
    solve,
    step,
)
from symgrad.groups import D4_ELEMENTS, act_d4, d4_inverse, translate

CONFIGS = [
    EulerConfig(),
    EulerConfig(limiter="minmod", reconstruction="characteristic", rk_stages=3),
]
SHIFTS = [(5, 11), (0, 1), (31, 0)]
TIMES = [0.0, 0.04, 0.08]


@pytest.fixture(scope="module")
def orbit_runs():
    """One float64 solve per config of a CE-CRP state and all its D4 images and shifts."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        q0 = sample_initial("CE-CRP", jax.random.key(3), 1, 32)[0].astype(jnp.float64)
        batch = jnp.stack([act_d4(g, q0) for g in D4_ELEMENTS] + [translate(q0, kx, ky) for kx, ky in SHIFTS])
        runs = {}
        for cfg in CONFIGS:
            r = solve(batch, jnp.asarray(TIMES), cfg)
            runs[cfg] = (np.asarray(r.states), np.asarray(r.ok))
        # NumPy results: x64 can be restored at once, other tests here run in float32.
        return np.asarray(q0), runs
    finally:
        jax.config.update("jax_enable_x64", previous)


def _random_state(key, n=16, dtype=jnp.float64):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    rho = jax.random.uniform(k1, (n, n), dtype, 0.2, 2.0)
    u = jax.random.uniform(k2, (n, n), dtype, -1.0, 1.0)
    v = jax.random.uniform(k3, (n, n), dtype, -1.0, 1.0)
    p = jax.random.uniform(k4, (n, n), dtype, 0.2, 2.0)
    return primitive_to_conservative(rho, u, v, p, 1.4)


@pytest.mark.parametrize("cfg", CONFIGS + [EulerConfig(reconstruction="characteristic"), EulerConfig(limiter="minmod")], ids=str)
def test_step_commutes_with_d4_and_translations(x64, cfg):
    q = _random_state(jax.random.key(0))  # rough data: every limiter branch is exercised
    dt = max_stable_dt(q, cfg)
    base = step(q, dt, cfg)
    for g in D4_ELEMENTS:
        # dt is a max over cells of an expression symmetric in u <-> v: unchanged by D4.
        assert max_stable_dt(act_d4(g, q), cfg) == dt
        moved = act_d4(d4_inverse(g), step(act_d4(g, q), dt, cfg))
        np.testing.assert_allclose(moved, base, rtol=0, atol=1e-13, err_msg=g)
    for kx, ky in [(1, 0), (0, 3), (7, 9)]:
        moved = translate(step(translate(q, kx, ky), dt, cfg), -kx, -ky)
        assert np.array_equal(np.asarray(moved), np.asarray(base))


def test_forgetting_the_vector_rotation_is_caught(x64):
    """The commutation test can fail: rotating only the grid (not momentum) breaks it."""
    q = _random_state(jax.random.key(1))
    cfg = EulerConfig()
    dt = max_stable_dt(q, cfg)
    wrong = lambda a: jnp.rot90(a, 1, axes=(-3, -2))  # noqa: E731
    err = np.abs(np.asarray(step(wrong(q), dt, cfg) - wrong(step(q, dt, cfg)))).max()
    assert err > 1e-3


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_solve_commutes_with_d4(orbit_runs, x64, cfg):
    _, runs = orbit_runs
    states, ok = runs[cfg]
    assert ok.all()
    assert np.isfinite(states).all()
    for k, g in enumerate(D4_ELEMENTS):
        back = np.asarray(act_d4(d4_inverse(g), jnp.asarray(states[k])))
        np.testing.assert_allclose(back, states[0], rtol=0, atol=1e-12, err_msg=g)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_solve_commutes_with_translations_exactly(orbit_runs, x64, cfg):
    _, runs = orbit_runs
    states, _ = runs[cfg]
    for k, (kx, ky) in enumerate(SHIFTS):
        back = np.asarray(translate(jnp.asarray(states[8 + k]), -kx, -ky))
        assert np.array_equal(back, states[0]), (kx, ky)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_conservation_to_round_off(orbit_runs, x64, cfg):
    q0, runs = orbit_runs
    states, _ = runs[cfg]
    np.testing.assert_array_equal(states[0, 0], np.asarray(q0))  # output time 0 is q0
    totals = states.sum(axis=(-3, -2))  # (batch, time, 4)
    scale = np.abs(states[:, :1]).sum(axis=(-3, -2))
    drift = np.abs(totals - totals[:, :1]) / scale
    assert drift.max() < 1e-13
    # ... and the states did evolve.
    assert np.abs(states[0, -1] - states[0, 0]).max() > 1e-2


def test_step_matches_unrolled_reference(x64):
    """The jitted stage loop equals the textbook Shu-Osher SSP-RK3, evaluated eagerly."""
    q = _random_state(jax.random.key(2))
    cfg = EulerConfig(rk_stages=3)
    dt = max_stable_dt(q, cfg)
    q1 = q + dt * tendency(q, cfg)
    q2 = 0.75 * q + 0.25 * (q1 + dt * tendency(q1, cfg))
    q3 = q / 3.0 + 2.0 / 3.0 * (q2 + dt * tendency(q2, cfg))
    np.testing.assert_allclose(step(q, dt, cfg), q3, rtol=0, atol=1e-14)
    cfg2 = EulerConfig()
    q1 = q + dt * tendency(q, cfg2)
    np.testing.assert_allclose(step(q, dt, cfg2), 0.5 * q + 0.5 * (q1 + dt * tendency(q1, cfg2)), rtol=0, atol=1e-14)


def test_step_accepts_a_batch_and_one_dt_per_trajectory(x64):
    q = jnp.stack([_random_state(jax.random.key(k)) for k in range(3)])
    cfg = EulerConfig()
    dt = max_stable_dt(q, cfg)
    assert dt.shape == (3,)
    together = step(q, dt, cfg)
    for b in range(3):
        np.testing.assert_allclose(together[b], step(q[b], dt[b], cfg), rtol=0, atol=1e-15)


def _strip(profiles, n, m=4):
    """A state constant along y from 1-D primitive profiles (rho, u, p) along x."""
    rho, u, p = (np.repeat(np.asarray(a, float)[:, None], m, axis=1) for a in profiles)
    return primitive_to_conservative(rho, u, np.zeros_like(rho), p, 1.4)


def _two_interface_profiles(n, inside, outside):
    x = (np.arange(n) + 0.5) / n
    mask = (x > 0.25) & (x < 0.75)
    return [np.where(mask, a, b) for a, b in zip(inside, outside)]


@pytest.mark.parametrize("cfg", [EulerConfig(), EulerConfig(reconstruction="characteristic")], ids=str)
def test_positivity_on_strong_shock_and_near_vacuum(x64, cfg):
    n = 64
    # Pressure ratio 1e5 (Toro's test 3, both directions).
    blast = _strip(_two_interface_profiles(n, (1.0, 0.0, 1000.0), (1.0, 0.0, 0.01)), n)
    # Toro's test 2 ("123"): two rarefactions leaving a near-vacuum at x = 1/2.
    x = (np.arange(n) + 0.5) / n
    u = np.where((x > 0.25) & (x < 0.75), np.where(x < 0.5, -2.0, 2.0), 0.0)
    vacuum = _strip((np.ones(n), u, 0.4 * np.ones(n)), n)
    batch = jnp.stack([blast, vacuum])
    r = solve(batch, jnp.asarray([0.0, 0.006, 0.012]), cfg)
    assert np.asarray(r.ok).all(), describe_failures(r)
    rho, _, _, p = conservative_to_primitive(r.states, 1.4)
    assert float(rho.min()) > 0 and float(p.min()) > 0
    assert float(rho[1, -1].min()) < 0.5  # the rarefactions did open up


def test_impossible_initial_state_is_reported(x64):
    good = _random_state(jax.random.key(4))
    bad = good.at[3, 5, 0].set(-0.1).at[7, 1, 0].set(-0.2)
    r = solve(jnp.stack([good, bad]), jnp.asarray([0.0, 0.01]), EulerConfig())
    assert np.asarray(r.ok).tolist() == [True, False]
    assert float(r.failure.time[1]) == 0.0
    assert np.asarray(r.failure.cell[1]).tolist() == [3, 5]  # first bad cell in row-major order
    assert int(r.failure.reason[1]) == 1 and int(r.failure.reason[0]) == 0
    assert np.asarray(r.failure.cell[0]).tolist() == [-1, -1] and np.isnan(float(r.failure.time[0]))
    # Never silently NaN: the failed trajectory keeps its last state.
    assert np.isfinite(np.asarray(r.states)).all()
    (line,) = describe_failures(r)
    assert "trajectory 1" in line and "i=3, j=5" in line and "t=0" in line


def test_failure_during_evolution_reports_time_and_cell(x64):
    """CFL 1 is beyond the positivity limit: the vacuum-generating problem breaks mid-run."""
    n = 64
    x = (np.arange(n) + 0.5) / n
    q = _strip((np.ones(n), np.where(x < 0.5, -20.0, 20.0), 0.4 * np.ones(n)), n)
    r = solve(q[None], jnp.asarray([0.0, 0.01, 0.02]), EulerConfig(cfl=1.0))
    assert not bool(r.ok[0])
    t_fail = float(r.failure.time[0])
    assert 0.0 < t_fail < 0.02
    i, j = np.asarray(r.failure.cell[0]).tolist()
    assert 29 <= i <= 34 and 0 <= j < 4  # where the two rarefactions separate
    assert np.isfinite(np.asarray(r.states)).all()
    rho, _, _, p = conservative_to_primitive(r.states, 1.4)
    assert float(rho.min()) > 0 and float(p.min()) > 0


def test_float32_by_default():
    q = sample_initial("CE-RP", jax.random.key(0), 2, 16)
    assert q.dtype == jnp.float32
    r = solve(q, [0.0, 0.05], EulerConfig())
    assert r.states.dtype == jnp.float32 and r.states.shape == (2, 2, 16, 16, 4)
    assert np.asarray(r.ok).all()
    np.testing.assert_array_equal(r.states[:, 0], q)


def test_conversions_round_trip(x64):
    q = _random_state(jax.random.key(5))
    rho, u, v, p = conservative_to_primitive(q, 1.4)
    np.testing.assert_allclose(primitive_to_conservative(rho, u, v, p, 1.4), q, rtol=1e-14)
    assert float(p.min()) > 0


@pytest.mark.parametrize(
    "kwargs",
    [{"limiter": "superbee"}, {"reconstruction": "conservative"}, {"rk_stages": 4}, {"cfl": 0.0}, {"cfl": 1.5}, {"gamma": 1.0}],
)
def test_config_validation(kwargs):
    with pytest.raises(SymgradError):
        EulerConfig(**kwargs)


def test_config_round_trip():
    cfg = EulerConfig(limiter="minmod", rk_stages=3)
    assert EulerConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["limiter"] == "minmod"


@pytest.mark.parametrize("times", [[0.1, 0.05], [-0.1, 0.2], [], [[0.0, 0.1]]])
def test_bad_output_times(times):
    q = sample_initial("CE-RP", jax.random.key(0), 1, 8)
    with pytest.raises(SymgradError):
        solve(q, times)


def test_bad_state_shape():
    with pytest.raises(SymgradError):
        solve(jnp.ones((8, 8, 4)), [0.0, 0.1])
